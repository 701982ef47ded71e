"""What a wide target is to widen (one implementation per module here: ``postgres``, ``delta``).

The catalog and ledgers always live in the target PostgreSQL database; a target owns its wide
tables. The jobs and the stream sink call only these methods, inside the catalog transactions they
hold, so what exactly-once means for a target is the target's business (a PostgreSQL target's
writes join the catalog transaction; a Delta target's commits come first and are idempotent).
"""
from __future__ import annotations

import datetime as dt
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from widen.catalog.layouts import Layouts
from widen.config import TargetConfig
from widen.core.chunks import Chunk
from widen.core.kernels import Pivoted
from widen.core.layout import LayoutRules, ShipLayout

if TYPE_CHECKING:
    from psycopg2.extensions import connection, cursor

    from widen.core.transforms import NarrowChunk


class ChunkWrite(ABC):
    """One backfill chunk on its way into the target: ``run`` is the Spark job (the executors
    pivot; a PostgreSQL target's executors also COPY into staging), ``merge`` and ``rejects`` run on
    the driver in the chunk's catalog transaction, ``close`` cleans up whatever happens."""

    channels: list[str]

    @abstractmethod
    def run(self, narrow: NarrowChunk) -> list[dict]:
        """Run the Spark job over the chunk's narrow rows (``NarrowChunk.map``); the per-partition stats rows
        (``narrow_rows``, ``rejected_rows``, ``duplicate_rows``, ``wide_rows``, ``unknown_channels``)."""

    @abstractmethod
    def merge(self, cur: cursor) -> int | None:
        """Merge the chunk's wide rows column-wise; the wide rows merged (None: the stats' count)."""

    @abstractmethod
    def rejects(self, cur: cursor, catalog_schema: str, job: str, label: str) -> None:
        """Replace the chunk's rows in ``rejects``."""

    def close(self, cur: cursor | None = None) -> None:  # noqa: B027 - nothing to drop is the usual case
        """Drop what the chunk left behind (in ``cur``'s transaction when one is given)."""


class WideChecksums(ABC):
    """The wide side of reconcile's checksums (``core.checksum``)."""

    @abstractmethod
    def groups(self, layout: ShipLayout | None, ship: str, lo: dt.datetime, hi: dt.datetime, grouping: str,
               width: float | None = None) -> dict:
        """group -> Aggregate; ``grouping`` is ``bucket`` (of ``width`` seconds), ``range`` (key 0)
        or ``time`` (key created_time)."""

    @abstractmethod
    def row(self, layout: ShipLayout, created_time: dt.datetime) -> tuple[bool, dict[str, str]]:
        """(whether a wide row exists at created_time, its non-NULL cells by channel)."""


class WideTarget(ABC):
    kind: str
    cfg: TargetConfig
    #: the hash flavours it can compute for reconcile, fastest first (``core.checksum.HASH_PG`` /
    #: ``HASH_MD5``); reconcile uses the first the source can compute too
    checksum_hashes: tuple[str, ...]
    #: whether reconcile's Spark tasks compute this target's side with the source's (else the driver does)
    checksums_in_tasks: bool
    #: whether the target reaches its tables through a Spark session (jobs start one for it)
    needs_spark: bool = False
    #: the ships' reader views (``widen.targets.views.ReaderViews``), kept in step with the tables
    #: when ``widen.targets.views.configure`` attached them
    views: Any = None

    @property
    @abstractmethod
    def rules(self) -> LayoutRules:
        """Limits for layouts: columns and row bytes per part, case folding, storage names."""

    @property
    @abstractmethod
    def location(self) -> str:
        """What ``wide_tables.table_schema`` records for this target."""

    @property
    def layouts(self) -> Layouts:
        return Layouts(self.cfg.catalog_schema, self.rules, self.location)

    @abstractmethod
    def ensure_tables(self, conn: connection, layout: ShipLayout) -> int:
        """Create missing tables and columns (inside the caller's DDL transaction on the catalog
        connection ``conn``, which holds the ship's write lock). Returns the statements or commits."""

    def ddl_tables(self, layout: ShipLayout) -> list[tuple[str, str]]:
        """(schema, table) pairs whose locks DDL waits for, for ``db.lock_holders``."""
        return []

    def analyze(self, conn: connection, layout: ShipLayout, columns: str = "all") -> int:
        """Refresh the planner's statistics of the ship's tables (after its backfill; ``columns``:
        ``backfill.analyze``); the tables analyzed. Nothing to do where the engine keeps its own."""
        return 0

    def text_columns(self, conn: connection, layout: ShipLayout, kinds: dict[str, str]) -> None:
        """Turn the typed columns of the channels in ``kinds`` (channel -> its column type now) to
        text holding each value's source text, in the caller's DDL transaction."""
        raise NotImplementedError(f"{self.kind} targets have no typed columns")

    @abstractmethod
    def chunk_write(self, chunk: Chunk, layout: ShipLayout, has_order_key: bool) -> ChunkWrite:
        """How one backfill chunk gets in."""

    @abstractmethod
    def merge_rows(self, cur: cursor, layout: ShipLayout, wide: Pivoted, greatest: bool,
                   txn: tuple[str, int] | None = None, index: int = 0) -> None:
        """Merge pivoted rows (a stream micro-batch's or a repair's, one ship) column-wise: a NULL
        never overwrites; a value replaces, or with ``greatest`` the greater by byte order stays.
        ``txn`` (app id, batch id) makes a replayed batch change nothing where the write cannot join
        the catalog transaction ``cur`` belongs to."""

    @abstractmethod
    def delete_rows(self, cur: cursor, layout: ShipLayout, times: list, ranges: list) -> None:
        """Delete the ship's wide rows at ``times`` and in ``ranges`` ([lo, hi)) from every part."""

    @abstractmethod
    def rollback_actions(self, layout: ShipLayout, start: dt.datetime | None = None,
                         end: dt.datetime | None = None) -> list[tuple[str, Callable[[Any], Any]]]:
        """(description, action(cursor)) that drop the ship's tables (no range) or delete its rows in
        [start, end); run in the rollback's transaction, before the catalog rows go."""

    @abstractmethod
    def checksums(self, cur: cursor | None, hashes: str) -> WideChecksums:
        """The wide side of reconcile with the hash flavour ``hashes`` (``cur``: a target session,
        where the target is PostgreSQL)."""


def present_columns(layout: ShipLayout, wide: Pivoted, part: int) -> list[tuple[Any, pa.Array]]:
    """The part's channels that have a value in ``wide`` (an all-NULL column would change nothing)."""
    first = sum(len(layout.part_channels(p)) for p in layout.parts if p < part)
    members = layout.part_channels(part)
    columns = wide.columns[first:first + len(members)]
    return [(c, col) for c, col in zip(members, columns) if col.null_count < wide.num_rows]
