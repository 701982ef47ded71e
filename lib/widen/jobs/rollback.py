"""``rollback``: undo a ship's migration, whole or for one time range, one transaction per ship.

Whole ship: drop its wide (part) tables and delete its catalog, ledger and reject rows, and mark it
rolled back (writers leave it alone until ``resume``). With ``--start``/``--end``: delete the wide
rows in that range and the ledger chunks that overlap it, so a later backfill redoes exactly that
range. The transaction holds the ship's write lock exclusively (it waits, each try bounded by
``target.lock_timeout_seconds``, for the writers' transactions on the ship). A ship whose reader
view reads its wide tables (switched by ``cutover``) has the view pointed back at the narrow table
first, in the same transaction: readers never see a missing table or a hole. ``--dry-run`` prints
what would be done and changes nothing. A ship already rolled back is left as it is, said so, and
is no failure (exit 0): it is in the state asked for, so a retried or repeated rollback (a
scheduler's, a runbook's) is a no-op, not an alert.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from widen import errors, metrics
from widen.catalog import lifecycle, schema, ships as ship_states, views as catalog_views
from widen.catalog.layouts import load_layout
from widen.config import BadInput, Config
from widen.jobs import EXIT_OK, EXIT_PROBLEM, Result, check_selection, job
from widen.pg import db
from widen.session import get_spark
from widen.sources import open_source
from widen.targets import needs_spark, open_target
from widen.targets.views import configure as reader_views

if TYPE_CHECKING:
    from psycopg2.extensions import cursor
    from pyspark.sql import SparkSession

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RollbackOptions:
    ships: list[str] | None = None
    start: object = None
    end: object = None
    dry_run: bool = False


@job("rollback", RollbackOptions, reads_narrow_table=False, ships_from=None)
def run(config: Config, spark: SparkSession, options: RollbackOptions) -> Result:
    """Each ship in its own transaction: one that fails is reported (exit 1), the others go on."""
    if not options.ships:
        raise BadInput("rollback needs --ships (it never rolls back every ship by default)")
    lines: list[str] = []
    counts, failed = {}, {}
    with db.connection(config.target.connection) as conn:
        if not options.dry_run:
            schema.migrate(conn, config.target.catalog_schema)
        elif not schema.open_existing(conn, config.target.catalog_schema):
            raise BadInput(f"--ships: {schema.NO_CATALOG}")
        rolled_back = ship_states.ships_in_state(conn, config.target.catalog_schema, ship_states.ROLLED_BACK)
        conn.rollback()
    already = [s for s in options.ships if s in rolled_back]
    # the others must be in the catalog (bad input otherwise, before anything changes)
    check_selection(config, dataclasses.replace(options, ships=[s for s in options.ships if s not in rolled_back]),
                    "catalog")
    for ship in already:
        lines.append(f"{ship!r} is already rolled back: nothing to do (resume --ships to migrate it again)")
        log.info("ship %r is already rolled back: nothing to do", ship)
    for ship in (s for s in options.ships if s not in rolled_back):
        def record(err: BaseException, ship: str = ship) -> None:
            failed[ship] = errors.describe(err)
            log.warning("ship %r not rolled back: %s", ship, failed[ship])

        with errors.one_ship(record, errors.any_failure):
            counts[ship] = _rollback_ship(config, spark, ship, options, lines)
    if not options.dry_run:
        events = metrics.current("rollback").counter("events", "ships rolled back or not, by ship", ["ship", "event"])
        for ship in counts:
            events.labels(ship, "rolled_back").inc()
        for ship in failed:
            events.labels(ship, "failed").inc()
        for ship in already:
            events.labels(ship, "already_rolled_back").inc()
    summary = {"ships": len(counts), "dry_run": options.dry_run,
               "range": [options.start, options.end] if options.start or options.end else None,
               "rows_affected": counts, "already_rolled_back": already, "failed": failed}
    lines += [f"FAILED {ship!r}: {why}" for ship, why in failed.items()]
    return Result("rollback", EXIT_PROBLEM if failed else EXIT_OK, summary, "\n".join(lines))


def _rollback_ship(config: Config, spark: SparkSession, ship: str, options: RollbackOptions, lines: list[str]) -> int:
    tgt_cfg = config.target
    start, end = options.start, options.end
    with db.connection(tgt_cfg.connection) as conn:
        layout = load_layout(conn, tgt_cfg.catalog_schema, ship)
        conn.rollback()
        if not layout.tables:
            raise BadInput(f"ship {ship!r} has no wide tables in the catalog: nothing to roll back")
        target = open_target(tgt_cfg, get_spark(config, spark) if needs_spark(tgt_cfg) else spark)
        views = reader_views(target, config, open_source(config.source))
        with conn.cursor() as cur:
            view = catalog_views.recorded(cur, tgt_cfg.catalog_schema, ship)
        conn.rollback()
        reads_wide = view is not None and view[2] == catalog_views.WIDE
        if reads_wide and views is None:
            raise BadInput(f"ship {ship!r}: its reader view {'.'.join(view[:2])} reads its wide tables, and reader "
                           "views are off in this config: cutover --undo it with views on first")
        steps = target.rollback_actions(layout, start, end)
        forget = ship_states.forget_statements(tgt_cfg.catalog_schema, ship, start, end)
        if options.dry_run:
            with conn.cursor() as cur:
                if reads_wide:
                    lines.append(f"would switch the reader view {'.'.join(view[:2])} back to the narrow table")
                lines += ["would run: " + step.text(cur) for step in steps]
                lines += ["would run: " + cur.mogrify(statement, params).decode() for statement, params in forget]
            conn.rollback()
            return 0

        def roll_back(cur: cursor) -> int:
            ship_states.lock_ship_exclusive(cur, ship)
            done: list[str] = []
            affected = 0
            now = catalog_views.recorded(cur, tgt_cfg.catalog_schema, ship)   # under the lock
            if views is not None and now is not None and now[2] == catalog_views.WIDE:
                # readers go back to the narrow table before the tables go
                switched = views.switch(conn, layout, catalog_views.NARROW)
                done.append(f"switched the reader view {'.'.join(switched)} back to the narrow table")
            for step in steps:             # the wide tables first (Delta: a rollback cut short reruns)
                done.append("ran: " + step.text(cur))
                affected += step(cur)
            for statement, params in forget:
                done.append("ran: " + cur.mogrify(statement, params).decode())
                cur.execute(statement, params)
                affected += max(cur.rowcount, 0)
            figures = {"start": start, "end": end, "rows_and_tables_affected": affected}
            if start is None and end is None:
                ship_states.set_ship_state(cur, tgt_cfg.catalog_schema, ship, ship_states.ROLLED_BACK,
                                           "rolled back; resume --ships to migrate it again")
                lifecycle.record(cur, tgt_cfg.catalog_schema, ship, "rollback", figures,
                                 rolled_back_at=lifecycle.NOW, switched_at=None)
            else:                          # a range is gone: neither backfilled nor verified any more
                lifecycle.record(cur, tgt_cfg.catalog_schema, ship, "rollback", figures, backfilled_at=None,
                                 verified_at=None, verified_from=None, verified_through=None, switched_at=None)
            lines.extend(done)
            return affected

        return db.run_ddl(conn, tgt_cfg, roll_back, target.ddl_tables(layout), f"rollback of ship {ship!r}",
                          holders=lambda: db.advisory_holders(conn, "widen.ship", ship, "the ship's write lock"))
