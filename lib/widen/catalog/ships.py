"""Ships in the catalog beyond their layouts: the write lock every writer takes, and the state
that keeps writers away from a rolled-back ship (``ship_states``)."""
from __future__ import annotations

from typing import TYPE_CHECKING

from psycopg2 import sql

if TYPE_CHECKING:
    import datetime as dt

    from psycopg2.extensions import connection, cursor

ROLLED_BACK = "rolled_back"


def lock_ship_for_write(cur: cursor, catalog_schema: str, ship_id: str) -> bool:
    """Take the ship's write lock (shared: writers do not exclude each other) to the end of the
    transaction; False when the ship is rolled back, so the writer must leave it alone."""
    cur.execute("SELECT pg_advisory_xact_lock_shared(hashtext('widen.ship'), hashtext(%s))", (ship_id,))
    cur.execute(sql.SQL("SELECT state FROM {} WHERE ship_id = %s").format(
        sql.Identifier(catalog_schema, "ship_states")), (ship_id,))
    row = cur.fetchone()
    return not (row and row[0] == ROLLED_BACK)


def lock_ship_in_order(cur: cursor, ship_id: str) -> None:
    """With ``source.order_column``: the ship's writers take turns (exclusive, to the end of the
    transaction). A value written replaces the cell, so which write commits last decides it: the
    stream writes newer rows than any a writer that holds this lock has read, and a backfill chunk
    or a repair checks under it that its source rows have not changed since its read (docs/design.md,
    "One rule for every writer"). Taken after ``lock_ship_for_write``, before any table lock."""
    cur.execute("SELECT pg_advisory_xact_lock(hashtext('widen.ship.order'), hashtext(%s))", (ship_id,))


def lock_ship_exclusive(cur: cursor, ship_id: str) -> None:
    """Wait until no writer is inside a transaction on the ship, and keep new ones out until this
    transaction ends (rollback)."""
    cur.execute("SELECT pg_advisory_xact_lock(hashtext('widen.ship'), hashtext(%s))", (ship_id,))


def set_ship_state(cur: cursor, catalog_schema: str, ship_id: str, state: str | None, detail: str | None = None) -> None:
    """Record the ship's state (None: forget it, the ship is back to normal)."""
    table = sql.Identifier(catalog_schema, "ship_states")
    if state is None:
        cur.execute(sql.SQL("DELETE FROM {} WHERE ship_id = %s").format(table), (ship_id,))
        return
    cur.execute(sql.SQL("INSERT INTO {} (ship_id, state, detail) VALUES (%s, %s, %s) ON CONFLICT (ship_id) "
                        "DO UPDATE SET state = EXCLUDED.state, since = now(), detail = EXCLUDED.detail").format(table),
                (ship_id, state, detail))


def ships_in_state(conn: connection, catalog_schema: str, state: str) -> set[str]:
    with conn.cursor() as cur:
        cur.execute(sql.SQL("SELECT ship_id FROM {} WHERE state = %s").format(
            sql.Identifier(catalog_schema, "ship_states")), (state,))
        return {r[0] for r in cur.fetchall()}




def forget_statements(catalog_schema: str, ship: str, start: dt.datetime | None = None,
                      end: dt.datetime | None = None) -> list[tuple[sql.Composable, tuple]]:
    """What a rollback deletes from the catalog: the whole ship (its layout, chunks and rejects),
    or for a range the chunks that overlap it (so a later backfill redoes them) and its rejects."""
    def table(name: str) -> sql.Composable:
        return sql.Identifier(catalog_schema, name)

    if start is None and end is None:
        return [(sql.SQL("DELETE FROM {} WHERE ship_id = %s").format(table(name)), (ship,))
                for name in ("channel_columns", "wide_tables", "backfill_chunks", "rejects")]
    lo, hi = start or "-infinity", end or "infinity"
    return [(sql.SQL("DELETE FROM {} WHERE ship_id = %s AND range_start < %s AND range_end > %s")
             .format(table("backfill_chunks")), (ship, hi, lo)),
            (sql.SQL("DELETE FROM {} WHERE ship_id = %s AND created_time >= %s AND created_time < %s")
             .format(table("rejects")), (ship, lo, hi))]
