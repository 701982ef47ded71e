"""A backfill's unit of work: one ship x one aligned time range, and how chunks are cut and ordered.

A chunk is always a cell of the epoch-aligned grid (``chunk_hours`` wide): that is its name in the
ledger, whatever ``--start``/``--end`` a run has. A run reads the part of the cell it was asked for
that the ledger does not hold yet (``left_to_read``); a cell read only in part (cut by ``--end``, the
hand-off, or ``--start``) is recorded as ``partial`` with the range it covers, and a later run reads
only its rest (``extend_coverage``), so every row is counted once and progress counts cells.

Pure: no connection, no Spark session.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import math
from dataclasses import dataclass

#: a time range [start, end)
Span = tuple[dt.datetime, dt.datetime]


@dataclass(frozen=True, order=True)
class Chunk:
    """One ship x one grid cell; ``range_start``/``range_end`` are what this run reads of it (the
    whole cell unless --start/--end or the ledger cut it), ``cell_start``/``cell_end`` the cell."""
    ship_id: str
    range_start: dt.datetime
    range_end: dt.datetime
    narrow_rows: int = 0
    cell_start: dt.datetime | None = None
    cell_end: dt.datetime | None = None

    @property
    def cell(self) -> Span:
        return (self.cell_start or self.range_start, self.cell_end or self.range_end)

    @property
    def key(self) -> tuple[str, dt.datetime, dt.datetime]:
        """The ledger's name of the chunk: the ship and its grid cell."""
        return (self.ship_id, *self.cell)

    def label(self) -> str:
        return f"{self.ship_id} [{self.range_start.isoformat()}, {self.range_end.isoformat()})"

    def batch_label(self) -> str:
        """How the chunk's rejects are labelled in ``rejects.batch``."""
        return f"{self.ship_id}|{self.range_start.isoformat()}|{self.range_end.isoformat()}"


def aligned_range(bucket_start: dt.datetime, width_seconds: float, start: dt.datetime | None,
                  end: dt.datetime | None) -> tuple[dt.datetime, dt.datetime]:
    """The chunk of an epoch-aligned bucket, clipped to [start, end)."""
    hi = bucket_start + dt.timedelta(seconds=width_seconds)
    return (max(bucket_start, start) if start else bucket_start, min(hi, end) if end else hi)


def cell_chunk(ship_id: str, bucket_start: dt.datetime, width_seconds: float, start: dt.datetime | None,
               end: dt.datetime | None, narrow_rows: int = 0) -> Chunk:
    """The chunk of a ship's epoch-aligned cell, to be read within [start, end)."""
    return Chunk(ship_id, *aligned_range(bucket_start, width_seconds, start, end), narrow_rows,
                 bucket_start, bucket_start + dt.timedelta(seconds=width_seconds))


def left_to_read(chunk: Chunk, covered: Span | None) -> Chunk | None:
    """What ``chunk`` still has to read when the ledger holds ``covered`` of its cell: None when
    the run's range is covered; else one range that, with ``covered``, leaves no hole (a gap
    between them is read too: rows read twice are merged idempotently, never counted twice)."""
    want = (chunk.range_start, chunk.range_end)
    if covered is None:
        return chunk
    lo, hi = covered
    if lo <= want[0] and want[1] <= hi:
        return None
    if want[0] >= lo:               # the rest after what is covered (the hand-off's cell, completed)
        read = (hi, want[1])
    elif want[1] <= hi:             # the part before it (a cell cut by --start, extended back)
        read = (want[0], lo)
    else:                           # around it: the whole range again
        read = want
    return dataclasses.replace(chunk, range_start=read[0], range_end=read[1])


def extend_coverage(covered: Span | None, read: Span) -> tuple[Span, bool]:
    """The cell's covered range once ``read`` is merged, and whether the read's figures add to the
    recorded ones (True: ``read`` continues ``covered``) or replace them (it holds it, or the
    ledger no longer has what the run planned from, e.g. after a range rollback)."""
    if covered is not None and (read[0] == covered[1] or read[1] == covered[0]):
        return (min(read[0], covered[0]), max(read[1], covered[1])), True
    return read, False


def fold_reads(reads: list[tuple[Span, tuple]]) -> tuple[Span, tuple] | None:
    """One cell's ledger rows, (the range each read, its figures), as one covered range with its
    figures: rows an older widen recorded cut at --end/--start, or cells of another ``chunk_hours``
    inside this one. One row holding all the others gives its own figures; rows that follow each
    other without a hole or an overlap add theirs. None when that cannot be said without reading
    again (a hole, or rows that overlap only in part)."""
    if not reads:
        return None
    ordered = sorted(reads, key=lambda read: read[0])     # by range only: figures may be NULL
    widest = max(ordered, key=lambda read: read[0][1] - read[0][0])
    if all(widest[0][0] <= lo and hi <= widest[0][1] for (lo, hi), _ in ordered):
        return widest
    (lo, hi), figures = ordered[0]
    total = list(figures)
    for (start, end), more in ordered[1:]:
        if start != hi:
            return None
        hi = end
        total = [(a or 0) + (b or 0) for a, b in zip(total, more, strict=True)]
    return (lo, hi), tuple(total)


def sub_ranges(start: dt.datetime, end: dt.datetime, parts: int) -> list[tuple[dt.datetime, dt.datetime]]:
    """Split [start, end) into ``parts`` contiguous ranges on whole-second boundaries."""
    total = (end - start).total_seconds()
    parts = max(1, min(parts, math.ceil(total)))
    step = total / parts
    bounds = [start] + [start + dt.timedelta(seconds=math.floor(step * i)) for i in range(1, parts)] + [end]
    return [(lo, hi) for lo, hi in zip(bounds, bounds[1:]) if hi > lo]


def partitions_for(chunk: Chunk, partitions_per_chunk: int, max_rows_per_partition: int) -> int:
    """Enough read partitions that none holds more than ``max_rows_per_partition`` narrow rows."""
    return max(partitions_per_chunk, math.ceil(chunk.narrow_rows / max_rows_per_partition))


def interleave_by_ship(chunks: list[Chunk]) -> list[Chunk]:
    """Round-robin over ships, so parallel workers keep several ships moving at once."""
    by_ship: dict[str, list[Chunk]] = {}
    for chunk in sorted(chunks):
        by_ship.setdefault(chunk.ship_id, []).append(chunk)
    queues = list(by_ship.values())
    out = []
    while queues:
        for q in list(queues):
            out.append(q.pop(0))
            if not q:
                queues.remove(q)
    return out
