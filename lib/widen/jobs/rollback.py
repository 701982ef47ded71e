"""``rollback``: undo a ship's migration, whole or for one time range, in one transaction.

Whole ship: drop its wide (part) tables and delete its catalog, ledger and reject rows. With
``--start``/``--end``: delete the wide rows in that range and the ledger chunks inside it, so a
later backfill redoes exactly that range. ``--dry-run`` prints the statements and changes nothing.
With a Delta target the ship's Delta tables are dropped (or the range deleted from them) first,
then the catalog rows go in one transaction.
"""
from __future__ import annotations

import logging

from psycopg2 import sql

from widen import catalog, db, errors
from widen.config import BadInput, Config
from widen.jobs import EXIT_OK, EXIT_PROBLEM, Result, exclusive
from widen.delta_sink import DeltaTarget
from widen.session import get_spark, resolve_connections

log = logging.getLogger(__name__)


def plan_statements(config: Config, layout: catalog.ShipLayout, start=None, end=None) -> list:
    tgt = config.target
    cat = tgt.catalog_schema
    ship = layout.ship_id
    statements: list[tuple[sql.Composable, tuple]] = []
    delta = tgt.is_delta          # Delta tables are dropped or trimmed by ``delta_actions``
    if start is None and end is None:
        for part in layout.parts if not delta else []:
            statements.append((sql.SQL("DROP TABLE IF EXISTS {}").format(
                sql.Identifier(tgt.schema, layout.tables[part])), ()))
        for table in ("channel_columns", "wide_tables", "backfill_chunks", "rejects"):
            statements.append((sql.SQL("DELETE FROM {} WHERE ship_id = %s").format(
                sql.Identifier(cat, table)), (ship,)))
        return statements
    lo = start or "-infinity"
    hi = end or "infinity"
    for part in layout.parts if not delta else []:
        statements.append((sql.SQL("DELETE FROM {} WHERE created_time >= %s AND created_time < %s").format(
            sql.Identifier(tgt.schema, layout.tables[part])), (lo, hi)))
    # A chunk that overlaps the range is no longer complete: forget it so backfill redoes it.
    statements.append((sql.SQL("DELETE FROM {} WHERE ship_id = %s AND range_start < %s AND range_end > %s")
                       .format(sql.Identifier(cat, "backfill_chunks")), (ship, hi, lo)))
    statements.append((sql.SQL("DELETE FROM {} WHERE ship_id = %s AND created_time >= %s AND "
                               "created_time < %s").format(sql.Identifier(cat, "rejects")), (ship, lo, hi)))
    return statements


def delta_actions(target, layout: catalog.ShipLayout, start=None, end=None) -> list[tuple[str, object]]:
    """(description, action) pairs for a Delta target: drop the ship's tables, or delete its rows
    in [start, end) from each of them."""
    from pyspark.sql import functions as F

    if start is None and end is None:
        return [(f"drop Delta tables {', '.join(target.qualified(t) for t in layout.tables.values())}",
                 lambda: target.drop(layout))]
    when = F.col("created_time")
    condition = F.lit(True)
    if start is not None:
        condition = condition & (when >= F.lit(start))
    if end is not None:
        condition = condition & (when < F.lit(end))
    return [(f"delete rows in [{start or '-infinity'}, {end or 'infinity'}) from {target.qualified(t)}",
             lambda t=t: target.delete(t, condition) if target.exists(t) else None)
            for t in layout.tables.values()]


@exclusive("rollback", reads_narrow_table=False, ships_from="catalog")
def run(config: Config, spark=None, ships: list[str] | None = None, start=None, end=None,
        dry_run: bool = False, **_ignored) -> Result:
    """Each ship in its own transaction: one that fails is reported (exit 1), the others go on."""
    if not ships:
        raise BadInput("rollback needs --ships (it never rolls back every ship by default)")
    config = resolve_connections(config)
    tgt_cfg = config.target
    lines, counts, failed = [], {}, {}
    with db.connection(tgt_cfg.connection) as conn:
        catalog.ensure_catalog(conn, tgt_cfg.catalog_schema)
    for ship in ships:
        try:
            counts[ship] = _rollback_ship(config, spark, ship, start, end, dry_run, lines)
        except Exception as err:  # noqa: BLE001 - one ship's failure is reported, the rest go on
            failed[ship] = errors.describe(err)
            log.warning("ship %r not rolled back: %s", ship, failed[ship])
    summary = {"ships": len(counts), "dry_run": dry_run, "range": [start, end] if start or end else None,
               "rows_affected": counts, "failed": failed}
    lines += [f"FAILED {ship!r}: {why}" for ship, why in failed.items()]
    return Result("rollback", EXIT_PROBLEM if failed else EXIT_OK, summary, "\n".join(lines))


def _rollback_ship(config: Config, spark, ship: str, start, end, dry_run: bool, lines: list[str]) -> int:
    """One ship, in one transaction that holds the ship's lock exclusively: it waits for the
    writers' transactions on the ship (the backfill's chunks, the stream's batch), each try at
    most ``target.lock_timeout_seconds``, and keeps new ones out until it commits. A whole ship is
    then marked rolled back, so writers leave it alone until ``resume``."""
    tgt_cfg = config.target
    whole = start is None and end is None
    with db.connection(tgt_cfg.connection) as conn:
        layout = catalog.load_layout(conn, tgt_cfg.catalog_schema, ship)
        conn.rollback()
        if not layout.tables:
            raise BadInput(f"ship {ship!r} has no wide tables in the catalog: nothing to roll back")
        statements = plan_statements(config, layout, start, end)
        if dry_run:
            with conn.cursor() as cur:
                if tgt_cfg.is_delta:
                    spark = get_spark(config, spark)
                    lines += ["would " + text for text, _ in delta_actions(DeltaTarget(spark, tgt_cfg), layout,
                                                                          start, end)]
                lines += ["would run: " + cur.mogrify(statement, params).decode() for statement, params in statements]
            conn.rollback()
            return 0

        def roll_back(cur) -> int:
            catalog.lock_ship_exclusive(cur, ship)
            done: list[str] = []
            affected = 0
            if tgt_cfg.is_delta:
                # Delta first: a rollback cut short after it leaves the catalog, and runs again.
                for text, action in delta_actions(DeltaTarget(get_spark(config, spark), tgt_cfg), layout, start, end):
                    action()
                    done.append("did: " + text)
            for statement, params in statements:
                done.append("ran: " + cur.mogrify(statement, params).decode())
                cur.execute(statement, params)
                affected += max(cur.rowcount, 0)
            if whole:
                catalog.set_ship_state(cur, tgt_cfg.catalog_schema, ship, catalog.ROLLED_BACK,
                                       "rolled back; resume --ships to migrate it again")
            lines.extend(done)
            return affected

        tables = [] if tgt_cfg.is_delta else [(tgt_cfg.schema, t) for t in layout.tables.values()]
        return db.run_ddl(conn, tgt_cfg, roll_back, tables, f"rollback of ship {ship!r}",
                          holders=lambda: db.advisory_holders(conn, "widen.ship", ship, "the ship's write lock"))
