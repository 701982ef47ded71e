"""The catalog's reader views (``reader_views``, ``reader_view_columns``): one view per ship, its
name, what it reads now (the narrow table or the wide tables) and its columns in a fixed order.

A view's columns are only ever appended (``CREATE OR REPLACE VIEW`` keeps the ones it has, in
place), so the order is recorded once per column and never changes: a reader's ``SELECT *`` and
positional code keep working. Names follow the tables' rules (``naming.TableNamer``): the natural
name unless another ship's view, a wide table or any other relation of the view schema has it.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from psycopg2 import sql

from widen.catalog.layouts import lock_table_names
from widen.core import naming

if TYPE_CHECKING:
    from collections.abc import Iterable

    from psycopg2.extensions import cursor

NARROW = "narrow"
WIDE = "wide"
#: a name some relation other than a reader view holds (the namer's owner for it)
_TAKEN = ("", 0)


def _t(catalog_schema: str, name: str) -> sql.Identifier:
    return sql.Identifier(catalog_schema, name)


def recorded(cur: cursor, catalog_schema: str, ship: str) -> tuple[str, str, str] | None:
    """(view schema, view name, what it reads) of the ship's view, None before it has one."""
    cur.execute(sql.SQL("SELECT view_schema, view_name, reads FROM {} WHERE ship_id = %s").format(
        _t(catalog_schema, "reader_views")), (ship,))
    row = cur.fetchone()
    return tuple(row) if row else None


def name_view(cur: cursor, catalog_schema: str, view_schema: str, template: str, ship: str,
              reserved_ships: Iterable[str] = ()) -> tuple[str, str | None]:
    """A name for the ship's new view, unique across the fleet and free in ``view_schema`` (under
    the fleet's names lock, to the end of the transaction); (name, why it is not the natural one)."""
    lock_table_names(cur)
    cur.execute(sql.SQL("SELECT view_name, ship_id FROM {} WHERE view_schema = %s").format(
        _t(catalog_schema, "reader_views")), (view_schema,))
    owners = {name: (owner, 1) for name, owner in cur.fetchall()}
    cur.execute("SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = %s", (view_schema,))
    for (name,) in cur.fetchall():
        owners.setdefault(name, _TAKEN)
    cur.execute(sql.SQL("SELECT table_name FROM {} WHERE table_schema = %s").format(
        _t(catalog_schema, "wide_tables")), (view_schema,))
    for (name,) in cur.fetchall():        # tables the catalog has named but not made yet
        owners.setdefault(name, _TAKEN)
    name = naming.TableNamer(template, owners, reserved_ships)(ship, 1)
    natural = naming.table_name(template, ship, 1)
    if name == natural:
        return name, None
    owner = owners.get(natural)
    why = ("taken by another relation" if owner == _TAKEN else f"the view of ship {owner[0]!r}" if owner
           else "another ship's view name")
    return name, f"{natural!r} is {why}"


def record(cur: cursor, catalog_schema: str, ship: str, view_schema: str, view_name: str, note: str | None,
           reads: str) -> None:
    cur.execute(sql.SQL("INSERT INTO {} (ship_id, view_schema, view_name, name_note, reads) VALUES (%s, %s, %s, %s, %s) "
                        "ON CONFLICT (ship_id) DO UPDATE SET reads = excluded.reads, changed_at = now()").format(
        _t(catalog_schema, "reader_views")), (ship, view_schema, view_name, note, reads))


def columns(cur: cursor, catalog_schema: str, ship: str) -> list[tuple[str, str]]:
    """The view's (column, channel) pairs in their fixed order."""
    cur.execute(sql.SQL("SELECT column_name, data_channel_id FROM {} WHERE ship_id = %s ORDER BY position").format(
        _t(catalog_schema, "reader_view_columns")), (ship,))
    return [tuple(r) for r in cur.fetchall()]


def append_columns(cur: cursor, catalog_schema: str, ship: str, start: int, new: list[tuple[str, str]]) -> None:
    """Record ``new`` (column, channel) pairs after the ``start`` columns the view has."""
    for position, (column, channel) in enumerate(new, start=start + 1):
        cur.execute(sql.SQL("INSERT INTO {} (ship_id, position, column_name, data_channel_id) "
                            "VALUES (%s, %s, %s, %s)").format(_t(catalog_schema, "reader_view_columns")),
                    (ship, position, column, channel))


def view_names(cur: cursor, catalog_schema: str, view_schema: str) -> set[str]:
    """Names of the reader views in ``view_schema`` (a wide table must not take one)."""
    cur.execute(sql.SQL("SELECT view_name FROM {} WHERE view_schema = %s").format(
        _t(catalog_schema, "reader_views")), (view_schema,))
    return {r[0] for r in cur.fetchall()}


def drop_all(cur: cursor, catalog_schema: str) -> int:
    """Drop every reader view the catalog records (before the catalog itself goes)."""
    cur.execute(sql.SQL("SELECT view_schema, view_name FROM {}").format(_t(catalog_schema, "reader_views")))
    views = cur.fetchall()
    for schema, name in views:
        cur.execute(sql.SQL("DROP VIEW IF EXISTS {}").format(sql.Identifier(schema, name)))
    return len(views)
