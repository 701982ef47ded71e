"""What a PostgreSQL server can do, by version: the one place that knows (docs/design.md: sources 9.3+,
targets 11+). Statements ask a ``Server`` instead of comparing versions themselves.

| feature | from | before it |
|---|---|---|
| ``agg(...) FILTER (WHERE ...)`` | 9.4 | ``CASE`` inside the aggregate; the chunk read groups valid and rejected rows apart |
| ``hashtextextended`` | 11 | reconcile hashes both sides with ``md5`` |
| ``SET jit`` | 11 | nothing to turn off |
| shortest round-trip ``float8``/``float4`` text | 12 | ``widen.pg.render`` finds the same text in SQL |
| ``pg_current_snapshot()`` | 13 | ``txid_current_snapshot()`` (same values, the older name) |
| ``date_bin`` | 14 | epoch arithmetic (exact on every version) |
| ``MERGE`` | 15 | ``INSERT … ON CONFLICT`` (9.5+; targets need 11 anyway) |
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from psycopg2 import sql

from widen.config import ConfigError

if TYPE_CHECKING:
    from psycopg2.extensions import connection

#: the oldest server widen reads a narrow table from, and the oldest it writes wide tables to
OLDEST_SOURCE = 90300
OLDEST_TARGET = 110000


def version_text(version: int) -> str:
    """``server_version_num`` as people write it: 90305 -> 9.3.5, 110022 -> 11.22."""
    if version >= 100000:
        return f"{version // 10000}" + (f".{version % 10000}" if version % 10000 else "")
    return f"{version // 10000}.{version // 100 % 100}" + (f".{version % 100}" if version % 100 else "")


@dataclass(frozen=True)
class Server:
    """One server's capabilities, from its ``server_version_num``."""

    version: int

    @classmethod
    def of(cls, conn: connection) -> Server:
        return cls(conn.server_version)

    def __str__(self) -> str:
        return f"PostgreSQL {version_text(self.version)}"

    @property
    def aggregate_filter(self) -> bool:
        return self.version >= 90400

    @property
    def hashtextextended(self) -> bool:
        return self.version >= 110000

    @property
    def jit(self) -> bool:
        return self.version >= 110000

    @property
    def shortest_floats(self) -> bool:
        """``float8::text`` is the shortest text that reads back to the same double (with any
        positive ``extra_float_digits``); before 12 it is ``%.{15 + extra_float_digits}g``."""
        return self.version >= 120000

    @property
    def tablesample(self) -> bool:
        return self.version >= 90500

    @property
    def merge(self) -> bool:
        return self.version >= 150000

    def require_source(self, where: str) -> None:
        if self.version < OLDEST_SOURCE:
            raise ConfigError(f"{where} is {self}; widen reads narrow tables from PostgreSQL "
                              f"{version_text(OLDEST_SOURCE)} or later")

    def require_target(self, where: str) -> None:
        if self.version < OLDEST_TARGET:
            raise ConfigError(f"{where} is {self}; widen writes wide tables and its catalog to PostgreSQL "
                              f"{version_text(OLDEST_TARGET)} or later (a {self} server can be the source)")

    def no_jit(self) -> str:
        """A statement that turns JIT off (wide GROUP BYs are slower with it), or one that does nothing."""
        return "SET jit = off" if self.jit else "SELECT 1"

    def snapshot_xip(self) -> sql.Composable:
        """The current snapshot's in-progress transaction ids (64-bit, epoch in the high half)."""
        if self.version >= 130000:
            return sql.SQL("pg_snapshot_xip(pg_current_snapshot())")
        return sql.SQL("txid_snapshot_xip(txid_current_snapshot())")

    def snapshot_xmin(self) -> sql.Composable:
        """The current snapshot's xmin as bigint (64-bit, epoch in the high half): the oldest
        transaction id still running when it was taken (every one it does not see is at or after it)."""
        if self.version >= 130000:
            return sql.SQL("pg_snapshot_xmin(pg_current_snapshot())::text::bigint")
        return sql.SQL("txid_snapshot_xmin(txid_current_snapshot())")

    def bucket_start(self, width_seconds: sql.Composable,
                     column: sql.Composable = sql.Identifier("created_time")) -> sql.Composable:
        """The start of ``column``'s epoch-aligned bucket of ``width_seconds`` (a parameter or
        literal): ``date_bin`` from 14 (about 2.5x faster), epoch arithmetic before."""
        if self.version >= 140000:
            return sql.SQL("date_bin({w} * interval '1 second', {c}, timestamptz 'epoch')").format(
                w=width_seconds, c=column)
        return sql.SQL("to_timestamp(floor(extract(epoch FROM {c}) / {w}) * {w})").format(w=width_seconds, c=column)

