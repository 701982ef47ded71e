"""Narrow sources: the PostgreSQL table (``postgres``, ``postgres_stream``) and a Delta table of
narrow rows (``delta``, stream only). ``open_source`` picks the configured one."""
from __future__ import annotations

from widen.config import BadInput, SourceConfig
from widen.sources.base import NarrowSource, NarrowTable


def open_source(cfg: SourceConfig) -> NarrowSource:
    if cfg.kind == "delta":
        from widen.sources.delta import DeltaSource

        return DeltaSource(cfg)
    from widen.sources.postgres import PostgresSource

    return PostgresSource(cfg)


def open_table(cfg: SourceConfig, job: str) -> NarrowTable:
    """The source as a table the batch jobs read; bad input for a stream-only source."""
    source = open_source(cfg)
    if not isinstance(source, NarrowTable):
        raise BadInput(f"{job} reads a narrow PostgreSQL table; source.kind {cfg.kind} is a stream-only source "
                       "(run the stream, or point source at the PostgreSQL table)")
    return source


__all__ = ["NarrowSource", "NarrowTable", "open_source", "open_table"]
