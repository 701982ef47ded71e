"""What a PostgreSQL server can do, by version: the one place that knows (DESIGN: sources 9.3+,
targets 11+). Statements ask here instead of comparing versions themselves."""
from __future__ import annotations

from psycopg2 import sql

#: MERGE (15+); before it the column-wise upsert is INSERT … ON CONFLICT (9.5+)
MERGE = 150000
#: date_bin (14+), which groups by time buckets about 2.5x faster than epoch arithmetic
DATE_BIN = 140000


def has_merge(server_version: int) -> bool:
    return server_version >= MERGE


def bucket_start(server_version: int, width_seconds: sql.Composable,
                 column: sql.Composable = sql.Identifier("created_time")) -> sql.Composable:
    """The start of ``column``'s epoch-aligned bucket of ``width_seconds`` (a parameter or
    literal): ``date_bin`` from 14, epoch arithmetic before (exact on every version)."""
    if server_version >= DATE_BIN:
        return sql.SQL("date_bin({w} * interval '1 second', {c}, timestamptz 'epoch')").format(
            w=width_seconds, c=column)
    return sql.SQL("to_timestamp(floor(extract(epoch FROM {c}) / {w}) * {w})").format(w=width_seconds, c=column)
