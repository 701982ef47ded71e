"""What a narrow source is to widen.

``NarrowSource``: rows for the live stream, in ``values.ROW_COLUMNS`` (value rendered exactly as
PostgreSQL prints it, ``reject`` the raw-reject array of a row that breaks a rule). ``NarrowTable``:
a source the batch jobs can also plan, read in chunks, count and checksum (the PostgreSQL table).
A new source implements one of them in a module of its own here; the jobs never ask which it is.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession


class NarrowSource(ABC):
    kind: str

    @property
    @abstractmethod
    def exactly_once(self) -> bool:
        """Whether each row reaches exactly one micro-batch (else the stream de-duplicates re-reads
        within a watermark)."""

    def require(self) -> None:  # noqa: B027 - a source with nothing to check needs no override
        """Bad input (exit 2) when the source is not there or not shaped as widen needs."""

    def stream_options(self, **extra) -> dict[str, str]:
        return {k: str(v) for k, v in extra.items()}

    def initial_offset(self, options: dict[str, str]) -> dict | None:
        """Where a new query starts, taken by the job so it can be recorded and logged (None: the
        source keeps its own)."""
        return None

    @abstractmethod
    def stream(self, spark: SparkSession, options: dict[str, str]) -> DataFrame:
        """The rows as a streaming DataFrame of ``values.ROW_SPARK_SCHEMA``; a source that is not
        ``exactly_once`` adds ``values.EVENT_TIME``, the timestamp the job's watermark runs on."""


class NarrowTable(NarrowSource):
    """A narrow table (see ``widen.sources.postgres.PostgresSource`` for the methods)."""


def without_handoff_time(offset: dict) -> dict:
    """A stream offset without the hand-off time ``t``: only a new query's first offset has it
    (its first batch also takes the rows present at the hand-off dated from ``t`` on)."""
    return {key: value for key, value in offset.items() if key != "t"}
