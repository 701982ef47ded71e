"""The checksum algebra of ``widen.core.checksum`` in PostgreSQL SQL, shared by the narrow source
(``widen.sources.postgres``) and the PostgreSQL wide target (``widen.targets.postgres``).

A side supplies a per-timestamp query (created_time, cells, s, valid_rows, rejected); ``aggregates``
groups it by bucket, range or timestamp and runs it. Both sessions use UTC and ISO dates
(``prepare_session``), so ``created_time::text`` is the same text on both servers.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from psycopg2 import sql

from widen.core.checksum import HASH_MD5, HASH_PG, Aggregate
from widen.pg.server import Server

if TYPE_CHECKING:
    from psycopg2.extensions import cursor

US = sql.SQL("chr(31)")


@dataclass(frozen=True)
class Hashes:
    """The two hash functions of the checksum, as SQL around an expression (``core.checksum``)."""
    flavour: str = HASH_PG

    def cell(self, text: sql.Composable) -> sql.Composable:
        if self.flavour == HASH_MD5:
            return sql.SQL("('x' || substr(md5({}), 1, 12))::bit(48)::bigint").format(text)
        return sql.SQL("(hashtextextended({}, 0) >> 16)").format(text)

    def mix(self, text: sql.Composable) -> sql.Composable:
        if self.flavour == HASH_MD5:
            return sql.SQL("('x' || substr(md5({}), 1, 16))::bit(64)::bigint").format(text)
        return sql.SQL("hashtextextended({}, 0)").format(text)


def prepare_session(cur: cursor) -> None:
    """The same text for a timestamp on both servers; no JIT for wide expressions.

    The queries read one ship's range and group it by created_time: the (ship_id, created_time)
    index gives them in that order, so the group-by streams with no sort. The planner, which
    misjudges the validity predicate, would rather scan the whole table for every ship (measured on
    10M rows, 8 ships: 9.6 s against 3.6 s), so plain and bitmap scans are discouraged here.
    """
    cur.execute("SET TIME ZONE 'UTC'; SET DateStyle = 'ISO, MDY'; SET work_mem = '64MB'; "
                "SET enable_seqscan = off; SET enable_bitmapscan = off")
    cur.execute(Server.of(cur.connection).no_jit())


def per_time_to_groups(per_time: sql.Composable, group: sql.Composable, hashes: Hashes) -> sql.Composable:
    """(created_time, cells, s, valid_rows, rejected) rows -> (group, times, cells, checksum, rejected).

    A timestamp counts when it has a valid row; rejected rows are counted on the way (the fast
    narrow form reads every row of the range once, valid or not)."""
    return sql.SQL(
        "SELECT {g} AS grp, count(CASE WHEN valid_rows > 0 THEN 1 END), sum(CASE WHEN valid_rows > 0 THEN cells END), "
        "sum(CASE WHEN valid_rows > 0 THEN {mix}::numeric END), "
        "sum(rejected) FROM ({p}) per_time GROUP BY 1").format(
        g=group, p=per_time, mix=hashes.mix(sql.SQL("created_time::text || ':' || s::text")))


def aggregates(cur: cursor, per_time: sql.Composable, group: sql.Composable, params: dict,
               rejected: dict | None = None, hashes: Hashes = Hashes()) -> dict:
    """group value -> Aggregate (groups with only rejected rows left out; their counts go to
    ``rejected`` when given)."""
    cur.execute(per_time_to_groups(per_time, group, hashes), params)
    out = {}
    for grp, times, cells, checksum, rejects in cur.fetchall():
        if rejected is not None and rejects:
            rejected[grp] = int(rejects)
        if times:
            out[grp] = Aggregate.of((times, cells, checksum))
    return out
