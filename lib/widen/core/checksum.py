"""Narrow == wide, proven with checksums: the algebra, whatever computes it.

For a ship and a time range, each side gives per bucket (or per timestamp): the number of
timestamps, the number of non-NULL cells and an order-independent 64-bit checksum of
(created_time, data_channel_id, rendered value):

    per cell       c = H48(channel || US || value)                  (48 bits, US = chr(31))
    per timestamp  s = sum of its cells' c                           (bigint)
    per group      checksum = sum over timestamps of H64(created_time::text || ':' || s)
                   modulo 2^64, shown as a signed bigint

H is ``HASH_PG`` (``hashtextextended(x, 0) >> 16`` and ``hashtextextended(x, 0)``: the fastest,
when both sides are PostgreSQL 11+) or ``HASH_MD5`` (the first 48 / 64 bits of md5(x): what Spark
can compute too, for a Delta target, and what a server without ``hashtextextended`` has).
``created_time::text`` is PostgreSQL's text of a UTC timestamptz (``2026-01-01 00:00:00.5+00``).

The narrow side applies docs/design.md's reject rule and, in its exact form, the duplicate rule; the wide
side unpivots through the catalog's channel -> column mapping and adds part tables up per
timestamp. Only these aggregates cross the wire. A differing bucket is bisected down to single
timestamps (``Drill``), whose cells are then compared one by one (``CellDiff``).

Pure: the SQL form is ``widen.pg.checksums``, the Spark form ``widen.targets.delta``.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any

TWO_64 = 1 << 64
HASH_PG = "pg"
HASH_MD5 = "md5"
UNIT_SEPARATOR = "\x1f"


def signed(value: int) -> int:
    """A sum modulo 2^64 as the signed bigint both databases show."""
    value %= TWO_64
    return value - TWO_64 if value >= 1 << 63 else value


@dataclass(frozen=True)
class Aggregate:
    times: int = 0
    cells: int = 0
    checksum: int = 0

    @classmethod
    def of(cls, row: Sequence[Any]) -> Aggregate:
        times, cells, checksum = row
        return cls(int(times or 0), int(cells or 0), signed(int(checksum or 0)))


def from_micros(micros: int) -> dt.datetime:
    return dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(microseconds=int(micros))


@dataclass
class CellDiff:
    created_time: dt.datetime
    data_channel_id: str | None      # None: the whole timestamp (a wide row with no cells)
    kind: str                        # missing | extra | different
    source_value: str | None = None
    target_value: str | None = None


@dataclass
class Drill:
    """What a bisection found in one ship: timestamps and whole ranges that differ."""
    times: list[dt.datetime] = field(default_factory=list)
    ranges: list[tuple[dt.datetime, dt.datetime, Aggregate, Aggregate]] = field(default_factory=list)
