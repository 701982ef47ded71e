"""Each ship's lifecycle in the catalog (``ship_lifecycle``, ``ship_transitions``).

Jobs record facts about a ship in the transaction of the work that justifies them; the ship's
state follows from the facts (``widen.core.lifecycle.state_of``), and every change of state is a
row in ``ship_transitions`` with the job and the figures that caused it.
"""
from __future__ import annotations

import datetime as dt
import json
from typing import TYPE_CHECKING, Any

from psycopg2 import sql

from widen.core import lifecycle

if TYPE_CHECKING:
    from collections.abc import Iterable

    from psycopg2.extensions import cursor

#: a fact's value: "now" is the transaction's time on the server
NOW = object()


def _table(catalog_schema: str, name: str = "ship_lifecycle") -> sql.Identifier:
    return sql.Identifier(catalog_schema, name)


def _figures(figures: dict[str, Any] | None) -> str:
    return json.dumps(figures or {}, default=lambda v: v.isoformat() if isinstance(v, dt.datetime) else str(v),
                      sort_keys=True)


def _transition(cur: cursor, catalog_schema: str, ship: str, old: str | None, new: str, job: str,
                figures: dict[str, Any] | None) -> None:
    cur.execute(sql.SQL("INSERT INTO {} (ship_id, from_state, to_state, job, figures) "
                        "VALUES (%s, %s, %s, %s, %s::jsonb)").format(_table(catalog_schema, "ship_transitions")),
                (ship, old, new, job, _figures(figures)))


def record(cur: cursor, catalog_schema: str, ship: str, job: str, figures: dict[str, Any] | None = None,
           **facts: Any) -> str:
    """Record ``facts`` about ``ship`` (None clears one, ``NOW`` is the transaction's time) in
    ``cur``'s transaction, holding the ship's lifecycle row to its end; return the ship's state."""
    unknown = set(facts) - set(lifecycle.FACTS)
    if unknown:
        raise ValueError(f"not lifecycle facts: {sorted(unknown)}")
    table = _table(catalog_schema)
    cur.execute(sql.SQL("INSERT INTO {} (ship_id, state) VALUES (%s, %s) ON CONFLICT (ship_id) DO NOTHING "
                        "RETURNING ship_id").format(table), (ship, lifecycle.PLANNED))
    if cur.fetchone():
        _transition(cur, catalog_schema, ship, None, lifecycle.PLANNED, job, figures)
    columns = sql.SQL(", ").join(map(sql.Identifier, lifecycle.FACTS))
    cur.execute(sql.SQL("SELECT state, now(), {} FROM {} WHERE ship_id = %s FOR UPDATE").format(columns, table),
                (ship,))
    old, now, *values = cur.fetchone()
    given = {name: now if value is NOW else value for name, value in facts.items()}
    new = lifecycle.state_of({**dict(zip(lifecycle.FACTS, values, strict=True)), **given})
    assignments = [sql.SQL("{} = %s").format(sql.Identifier(name)) for name in given]
    params: list[Any] = list(given.values())
    if new != old:
        assignments += [sql.SQL("state = %s"), sql.SQL("since = now()")]
        params.append(new)
    if assignments:
        cur.execute(sql.SQL("UPDATE {} SET {} WHERE ship_id = %s").format(table, sql.SQL(", ").join(assignments)),
                    (*params, ship))
    if new != old:
        _transition(cur, catalog_schema, ship, old, new, job, figures)
    return new


def record_streamed(cur: cursor, catalog_schema: str, ships: Iterable[str], query_name: str, batch_id: int) -> None:
    """The stream wrote ``ships`` in this batch: one statement for the fleet; a ship's first
    batch also records ``live_since`` (and may make it live)."""
    ships = sorted(set(ships))
    if not ships:
        return
    table = _table(catalog_schema)
    # in ship order, so two writers never wait for each other's rows in a cycle
    cur.execute(sql.SQL("SELECT ship_id, live_since IS NOT NULL FROM {} WHERE ship_id = ANY(%s) "
                        "ORDER BY ship_id FOR UPDATE").format(table), (ships,))
    live = dict(cur.fetchall())
    cur.execute(sql.SQL("UPDATE {} SET last_streamed_at = now() WHERE ship_id = ANY(%s)").format(table), (ships,))
    for ship in ships:
        if not live.get(ship):
            record(cur, catalog_schema, ship, "stream", {"query_name": query_name, "batch_id": batch_id},
                   live_since=NOW, last_streamed_at=NOW)
