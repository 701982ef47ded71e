"""Reader views: one stable relation per ship that readers query whatever widen does underneath.

Until the ship is switched the view is an exact pivot of its narrow rows (the narrow table as the
target database sees it: the source table itself when source and target are one database, else
``cutover.narrow_schema.narrow_table``); after ``cutover`` it reads the ship's wide tables, parts
joined. A channel the layout gains becomes a column of the view in the DDL transaction that adds
it to the tables; columns are only appended, in an order recorded once (``catalog.views``).
Every change of a view runs in a DDL transaction (``db.run_ddl``: short lock timeout, retried), so
no reader waits behind it for longer than ``target.lock_timeout_seconds``.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from psycopg2 import sql

from widen.catalog import views as catalog
from widen.catalog.layouts import lock_layout

if TYPE_CHECKING:
    from collections.abc import Iterable

    from psycopg2.extensions import connection, cursor

    from widen.config import Config, Connection
    from widen.core.layout import ShipLayout
    from widen.targets.base import WideTarget

log = logging.getLogger(__name__)

#: (target connection, ship, [(column, channel)]) -> the exact narrow pivot of the ship
NarrowSelect = Callable[["connection", str, list[tuple[str, str]]], sql.Composable]


class ReaderViews:
    def __init__(self, target: WideTarget, view_schema: str, template: str, narrow_select: NarrowSelect):
        self.target, self.view_schema, self.template = target, view_schema, template
        self.catalog_schema = target.cfg.catalog_schema
        self.narrow_select = narrow_select
        #: ship -> channels its view has (a layout only grows, so a cached view never shrinks)
        self._known: dict[str, set[str]] = {}

    def relation(self, cur: cursor, ship: str) -> tuple[str, str, str] | None:
        """(schema, name, reads) of the ship's view."""
        return catalog.recorded(cur, self.catalog_schema, ship)

    def refresh(self, conn: connection, layout: ShipLayout) -> int:
        """Make the ship's view, or append the channels of ``layout`` it lacks (in the caller's DDL
        transaction, which holds the ship's write lock). Returns the DDL statements run.

        The view never makes the caller's work fail: its statements run under a savepoint, and
        if a reader holds the view past the lock timeout (or anything else goes wrong) they are
        undone, logged, and tried again at the ship's next layout change, cutover or plan."""
        import psycopg2

        ship = layout.ship_id
        known = self._known.get(ship)
        if known is not None and known.issuperset(layout.channels):
            return 0
        with conn.cursor() as cur:
            cur.execute("SAVEPOINT widen_view")
            try:
                statements = self._refresh(conn, cur, layout)
            except psycopg2.Error as err:
                cur.execute("ROLLBACK TO SAVEPOINT widen_view")
                log.warning("ship %r: its reader view is not brought up to date now (%s); the next layout "
                            "change, cutover or plan does it", ship, str(err).strip().splitlines()[0])
                return 0
            cur.execute("RELEASE SAVEPOINT widen_view")
        return statements

    def _refresh(self, conn: connection, cur: cursor, layout: ShipLayout) -> int:
        ship = layout.ship_id
        lock_layout(cur, ship)           # one writer at a time appends the ship's view columns
        recorded = catalog.recorded(cur, self.catalog_schema, ship)
        columns = catalog.columns(cur, self.catalog_schema, ship)
        have = {channel for _, channel in columns}
        new = sorted((c.column_name, c.data_channel_id) for c in layout.channels.values()
                     if c.data_channel_id not in have)
        if recorded is not None and not new and _exists(cur, recorded[0], recorded[1]):
            self._known[ship] = have
            return 0
        if recorded is None:
            name, note = catalog.name_view(cur, self.catalog_schema, self.view_schema, self.template, ship)
            catalog.record(cur, self.catalog_schema, ship, self.view_schema, name, note, catalog.NARROW)
            if note:
                log.info("ship %r: reader view %s (%s)", ship, name, note)
            recorded = (self.view_schema, name, catalog.NARROW)
        catalog.append_columns(cur, self.catalog_schema, ship, len(columns), new)
        # cached only once committed: the next call finds nothing to do and caches it
        return self._define(conn, cur, recorded, ship, columns + new, layout, new)

    def make(self, conn: connection, layouts: Iterable[ShipLayout]) -> dict[str, str]:
        """Each layout's view made or brought up to date, one DDL transaction per ship (under its
        write lock; a rolled-back ship keeps the view it has). Returns why a ship's view could not be."""
        from widen import errors
        from widen.catalog import ships as ship_states
        from widen.pg import db

        problems = {}
        for layout in layouts:
            def ddl(cur: cursor, layout: ShipLayout = layout) -> None:
                if ship_states.lock_ship_for_write(cur, self.catalog_schema, layout.ship_id):
                    self.refresh(conn, layout)
            try:
                db.run_ddl(conn, self.target.cfg, ddl, [], f"ship {layout.ship_id!r}: reader view")
            except Exception as err:  # noqa: BLE001 - one ship's view does not stop the others
                conn.rollback()
                problems[layout.ship_id] = f"reader view: {errors.describe(err)}"
        return problems

    def switch(self, conn: connection, layout: ShipLayout, reads: str) -> tuple[str, str]:
        """Point the ship's view at ``reads`` (``catalog.WIDE`` or ``catalog.NARROW``) in the
        caller's DDL transaction; returns the view's (schema, name)."""
        self.refresh(conn, layout)
        ship = layout.ship_id
        with conn.cursor() as cur:
            schema, name, _ = catalog.recorded(cur, self.catalog_schema, ship)
            catalog.record(cur, self.catalog_schema, ship, schema, name, None, reads)
            self._define(conn, cur, (schema, name, reads), ship, catalog.columns(cur, self.catalog_schema, ship),
                         layout, [])
        return schema, name

    def redefine(self, conn: connection, layout: ShipLayout) -> None:
        """Define the ship's view again as it is recorded, over ``layout`` (a channel it lacks
        reads NULL), in the caller's DDL transaction."""
        with conn.cursor() as cur:
            recorded = catalog.recorded(cur, self.catalog_schema, layout.ship_id)
            if recorded is not None:
                self._define(conn, cur, recorded, layout.ship_id,
                             catalog.columns(cur, self.catalog_schema, layout.ship_id), layout, [])

    def _define(self, conn: connection, cur: cursor, view: tuple[str, str, str], ship: str,
                columns: list[tuple[str, str]], layout: ShipLayout, new: list[tuple[str, str]]) -> int:
        schema, name, reads = view
        ident = sql.Identifier(schema, name)
        select = (self.target.reader_select(layout, columns) if reads == catalog.WIDE
                  else self.narrow_select(conn, ship, columns))
        cur.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
        cur.execute(sql.SQL("CREATE OR REPLACE VIEW {} AS {}").format(ident, select))
        # literals, not parameters: a name may hold a '%'
        cur.execute(sql.SQL("COMMENT ON VIEW {} IS {}").format(
            ident, sql.Literal(f"widen: reader view of ship_id={ship}, reads the {reads} table(s)")))
        for column, channel in new:
            cur.execute(sql.SQL("COMMENT ON COLUMN {}.{} IS {}").format(
                ident, sql.Identifier(column), sql.Literal(f"data_channel_id={channel}")))
        return 3 + len(new)


def _exists(cur: cursor, schema: str, name: str) -> bool:
    cur.execute("SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = %s AND c.relname = %s AND c.relkind = 'v'", (schema, name))
    return cur.fetchone() is not None


def ddl_relations(views: ReaderViews | None, cur: cursor, ship: str) -> list[tuple[str, str]]:
    """The ship's view as a (schema, name) pair for ``db.lock_holders`` (none before it has one)."""
    recorded = views.relation(cur, ship) if views else None
    return [recorded[:2]] if recorded else []


def configure(target: WideTarget, config: Config, source: Any) -> ReaderViews | None:
    """The reader views of ``config`` attached to ``target`` (which then keeps them in step with its
    tables), or None where there are none: ``cutover.views: off``, a target that is not
    PostgreSQL, or a narrow table the target database cannot read (source and target are different
    databases and no ``cutover.narrow_schema``/``narrow_table`` names it there)."""
    cut = config.cutover
    if cut.views == "off" or target.kind != "postgres" or not hasattr(source, "pivot_select"):
        return None
    relation = (cut.narrow_schema, cut.narrow_table) if cut.narrow_table else None
    if relation is None and not _same_database(config.source.connection, config.target.connection):
        log.info("no reader views: the narrow table is in another database than the wide tables "
                 "(set cutover.narrow_schema and cutover.narrow_table to it as the target database sees it)")
        return None
    views = ReaderViews(target, cut.view_schema or config.target.schema, cut.view_template,
                        lambda conn, ship, columns: source.pivot_select(conn, ship, columns, relation))
    target.views = views
    return views


def _same_database(a: Connection, b: Connection) -> bool:
    return (a.host or "", a.port, a.database) == (b.host or "", b.port, b.database)
