"""A backfill's unit of work: one ship x one aligned time range, and how chunks are cut and ordered.

Pure: no connection, no Spark session.
"""
from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass


@dataclass(frozen=True, order=True)
class Chunk:
    ship_id: str
    range_start: dt.datetime
    range_end: dt.datetime
    narrow_rows: int = 0

    @property
    def key(self) -> tuple[str, dt.datetime, dt.datetime]:
        return (self.ship_id, self.range_start, self.range_end)

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
