"""The catalog's layouts: which table and column hold each channel of each ship (``wide_tables``,
``channel_columns``), how they grow, and table names unique across the fleet.

A layout only grows: a channel, once placed, never moves. Changes to one ship's layout are
serialised by an advisory lock per ship; new table names by one lock for the fleet.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from psycopg2 import sql

from widen.core import naming, typed
from widen.core.layout import DEFAULT_VALUE_BYTES, ChannelColumn, LayoutError, LayoutRules, NewChannels, ShipLayout
from widen.pg import db

if TYPE_CHECKING:
    from collections.abc import Iterable

    from psycopg2.extensions import connection, cursor


def lock_layout(cur: cursor, ship_id: str) -> None:
    """Serialise changes to one ship's layout across processes, until the transaction ends."""
    cur.execute("SELECT pg_advisory_xact_lock(hashtext('widen.layout'), hashtext(%s))", (ship_id,))


def laid_out_ships(conn: connection, catalog_schema: str) -> set[str]:
    """Ships the catalog has tables for (none when there is no catalog yet)."""
    import psycopg2

    with conn.cursor() as cur:
        try:
            cur.execute(sql.SQL("SELECT DISTINCT ship_id FROM {}").format(
                sql.Identifier(catalog_schema, "wide_tables")))
        except psycopg2.errors.UndefinedTable:
            conn.rollback()
            return set()
        return {r[0] for r in cur.fetchall()}


def load_layout(conn: connection, catalog_schema: str, ship_id: str) -> ShipLayout:
    s = sql.Identifier(catalog_schema)
    layout = ShipLayout(ship_id)
    with conn.cursor() as cur:
        cur.execute(sql.SQL("SELECT part, table_name FROM {s}.wide_tables WHERE ship_id = %s")
                    .format(s=s), (ship_id,))
        for part, table in cur.fetchall():
            layout.tables[part] = table
        part_of_table = {t: p for p, t in layout.tables.items()}
        cur.execute(sql.SQL("SELECT data_channel_id, column_name, table_name, value_format, avg_bytes, "
                            "column_type FROM {s}.channel_columns WHERE ship_id = %s").format(s=s), (ship_id,))
        for channel, column, table, fmt, avg, column_type in cur.fetchall():
            layout.channels[channel] = ChannelColumn(channel, column, part_of_table[table], fmt,
                                                     DEFAULT_VALUE_BYTES if avg is None else avg,
                                                     _column_type(column_type))
    return layout


def _column_type(recorded: str | None) -> str:
    if recorded is None:
        return typed.TEXT
    if recorded not in typed.COLUMN_TYPES:
        raise ValueError(f"channel_columns.column_type {recorded!r} is not one of {', '.join(typed.COLUMN_TYPES)}")
    return recorded


def save_layout(conn: connection, catalog_schema: str, target_schema: str, layout: ShipLayout) -> None:
    """Record the layout's tables and channels (existing rows are kept as they are)."""
    s = sql.Identifier(catalog_schema)
    with conn.cursor() as cur:
        for part, table in layout.tables.items():
            cur.execute(sql.SQL("INSERT INTO {s}.wide_tables (ship_id, part, table_schema, table_name, "
                                "name_note) VALUES (%s, %s, %s, %s, %s) ON CONFLICT (ship_id, part) DO NOTHING")
                        .format(s=s), (layout.ship_id, part, target_schema, table, layout.notes.get(part)))
        rows = [(layout.ship_id, c.data_channel_id, layout.tables[c.part], c.column_name,
                 c.value_format, c.avg_bytes, c.column_type) for c in layout.channels.values()]
        if rows:
            db.execute_values(cur, sql.SQL(
                "INSERT INTO {s}.channel_columns (ship_id, data_channel_id, table_name, column_name, "
                "value_format, avg_bytes, column_type) VALUES %s ON CONFLICT (ship_id, data_channel_id) DO NOTHING")
                .format(s=s), rows)


def record_text_columns(cur: cursor, catalog_schema: str, ship_id: str, channels: list[str]) -> None:
    """Record that the channels' columns are text now (``core.typed``: a value did not fit)."""
    cur.execute(sql.SQL("UPDATE {}.channel_columns SET column_type = 'text' WHERE ship_id = %s "
                        "AND data_channel_id = ANY(%s)").format(sql.Identifier(catalog_schema)),
                (ship_id, list(channels)))


def lock_table_names(cur: cursor, session: bool = False) -> None:
    """Serialise the choice of new table names across processes (to the transaction's end, or
    with ``session`` until ``unlock_table_names``)."""
    cur.execute(f"SELECT {'pg_advisory_lock' if session else 'pg_advisory_xact_lock'}"
                "(hashtext('widen.table_names'))")


def unlock_table_names(cur: cursor) -> None:
    cur.execute("SELECT pg_advisory_unlock(hashtext('widen.table_names'))")


def fleet_namer(conn: connection, catalog_schema: str, rules: LayoutRules,
                reserved_ships: Iterable[str] = ()) -> naming.TableNamer:
    """A ``TableNamer`` that knows every table the catalog has given out (call it holding
    ``lock_table_names``)."""
    with conn.cursor() as cur:
        cur.execute(sql.SQL("SELECT ship_id, part, table_name FROM {}").format(
            sql.Identifier(catalog_schema, "wide_tables")))
        rows = cur.fetchall()
        # a reader view's name is never a table's (they may share a schema)
        cur.execute(sql.SQL("SELECT view_name FROM {}").format(sql.Identifier(catalog_schema, "reader_views")))
        views = {rules.storage_key(v): ("", 0) for (v,) in cur.fetchall()}
    return rules.namer({**views, **{rules.storage_key(t): (s, p) for s, p, t in rows}}, reserved_ships)


class LazyFleetNamer:
    """A ``fleet_namer`` made on first use, under the transaction-level names lock: a layout that
    needs no new table costs nothing."""

    def __init__(self, conn: connection, catalog_schema: str, rules: LayoutRules):
        self.conn, self.catalog_schema, self.rules = conn, catalog_schema, rules
        self._namer: naming.TableNamer | None = None

    @property
    def notes(self) -> dict:
        return self._namer.notes if self._namer else {}

    def __call__(self, ship_id: str, part: int) -> str:
        if self._namer is None:
            with self.conn.cursor() as cur:
                lock_table_names(cur)
            self._namer = fleet_namer(self.conn, self.catalog_schema, self.rules)
        return self._namer(ship_id, part)




class Layouts:
    """The layouts of one target: its catalog schema, its rules (``LayoutRules``) and what
    ``wide_tables.table_schema`` records for it (the schema, or the Delta root / database)."""

    def __init__(self, catalog_schema: str, rules: LayoutRules, location: str):
        self.catalog_schema, self.rules, self.location = catalog_schema, rules, location

    def load(self, conn: connection, ship_id: str) -> ShipLayout:
        return load_layout(conn, self.catalog_schema, ship_id)

    def record(self, conn: connection, layout: ShipLayout) -> None:
        save_layout(conn, self.catalog_schema, self.location, layout)

    def extend(self, conn: connection, ship_id: str, new: NewChannels) -> ShipLayout:
        """Under the ship's layout lock (held to the end of the caller's transaction): its recorded
        layout with the channels of ``new`` placed, new tables named unique across the fleet, and
        recorded."""
        with conn.cursor() as cur:
            lock_layout(cur, ship_id)
        layout = self.load(conn, ship_id)
        self.rules.grow(layout, new, LazyFleetNamer(conn, self.catalog_schema, self.rules))
        self.record(conn, layout)
        return layout

    def plan(self, conn: connection, new_by_ship: dict[str, NewChannels]) -> tuple[dict[str, ShipLayout], dict[str, str]]:
        """Load each ship's layout, place its new channels, record (commits per ship).

        New tables are named under the fleet-wide names lock, held for the whole call, so every name
        is unique across the fleet; the natural main-table names of all ships in ``new_by_ship`` are
        reserved for them. Returns the layouts and, per ship that cannot be laid out, why: one
        impossible ship does not stop the others.
        """
        import psycopg2

        from widen import errors

        layouts, problems = {}, {}
        with conn.cursor() as cur:
            lock_table_names(cur, session=True)
        try:
            namer = fleet_namer(conn, self.catalog_schema, self.rules, reserved_ships=sorted(new_by_ship))
            conn.commit()
            for ship in sorted(new_by_ship):
                try:
                    with conn.cursor() as cur:
                        lock_layout(cur, ship)
                    layout = self.load(conn, ship)
                    self.rules.grow(layout, new_by_ship[ship], namer)
                    self.record(conn, layout)
                    conn.commit()
                except (LayoutError, ValueError, psycopg2.Error) as err:
                    conn.rollback()
                    problems[ship] = errors.describe(err)
                    continue
                layouts[ship] = layout
        finally:
            with conn.cursor() as cur:
                unlock_table_names(cur)
            conn.commit()
        return layouts, problems

