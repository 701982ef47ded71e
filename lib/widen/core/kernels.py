"""Arrow kernels: de-duplication, pivot and COPY text encoding — the ones production runs.

Pure functions over ``pyarrow`` tables, run inside Spark's Python workers (``mapInArrow``: the
backfill's chunk writers, the DataFrame transforms) and on the driver (stream micro-batches,
repairs). They never re-render a value: ``value`` arrives as the text PostgreSQL printed.

Input columns: ``created_time`` (timestamp), ``data_channel_id`` (string), ``value`` (string) and,
when the source has an order column, ``order_key``.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from widen.core import values

if TYPE_CHECKING:
    from collections.abc import Iterable

    from widen.core.layout import ShipLayout

#: narrow rows as every source hands them on (``values.ROW_COLUMNS``), as Arrow
ROW_SCHEMA = pa.schema(list(zip(values.ROW_COLUMNS, [pa.string(), pa.string(), pa.timestamp("us", tz="UTC"),
                                                    pa.string(), pa.string(), pa.int64(), pa.string()])))

EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def epoch_us(moment: dt.datetime) -> int:
    """Microseconds since the epoch, exactly (a naive ``moment`` is UTC)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return (moment - EPOCH) // dt.timedelta(microseconds=1)


def chunk_columns(has_order_key: bool) -> dict[str, pa.DataType]:
    """The columns of a backfill chunk's narrow rows (``values.UNKNOWN_CHANNEL``): name → type."""
    columns = {"created_us": pa.int64(), "channel": pa.int32(), "value": pa.string()}
    if has_order_key:
        columns["order_key"] = pa.int64()
    return columns


def collect(batches: Iterable[pa.RecordBatch], schema: pa.Schema) -> pa.Table:
    """All batches of one partition as a table (the schema is used only when there are none)."""
    batches = list(batches)
    return pa.Table.from_batches(batches) if batches else schema.empty_table()


def dedup(table: pa.Table, has_order_key: bool, channel: str = "data_channel_id") -> tuple[pa.Table, int]:
    """One row per (created_time, channel), and how many rows were dropped.

    ``channel`` names the column that identifies the channel (its name, or its column code).

    With an order key the row with the greatest key wins (even when its value is NULL); without
    one the greatest value by byte order wins and NULL only when all are NULL (PostgreSQL
    ``max(value COLLATE "C")``).
    """
    key = ["created_time", channel]
    if table.num_rows == 0:
        return table.select([*key, "value"]), 0
    if has_order_key:
        ordered = table.sort_by([("order_key", "ascending")])
        grouped = ordered.group_by(key, use_threads=False).aggregate(
            [("value", "last", pc.ScalarAggregateOptions(skip_nulls=False))])
    else:
        grouped = table.group_by(key, use_threads=False).aggregate([("value", "max")])
    grouped = grouped.rename_columns(_renamed(grouped.column_names)).select([*key, "value"])
    return grouped, table.num_rows - grouped.num_rows


def _renamed(names: list[str]) -> list[str]:
    return ["value" if n.startswith("value_") else n for n in names]


@dataclass
class Pivoted:
    """Wide rows: sorted distinct times and one string column per known channel index."""
    times: pa.Array
    columns: list[pa.Array]
    unknown_channels: list[str]
    #: True when two input rows fell on one cell (the input was not de-duplicated)
    collisions: bool = False

    @property
    def num_rows(self) -> int:
        return len(self.times)


def pivot_named(table: pa.Table, order: list[str], has_order_key: bool) -> tuple[Pivoted, int]:
    """Narrow rows with channels by name (``created_time``, ``data_channel_id``, ``value`` and, with
    ``has_order_key``, ``order_key``) de-duplicated and pivoted: one column per channel of ``order``,
    in that order; and the duplicate count. Rows of channels not in ``order`` are left out and their
    names returned in ``unknown_channels``, so the caller can add the columns and run them again.
    (The stream's micro-batches and the repairs; the DataFrame transform ``transforms.pivot``.)"""
    channels = table.column("data_channel_id")
    codes = pc.index_in(channels, value_set=pa.array(order, pa.string()))
    unknown: list[str] = []
    if codes.null_count:
        unknown = sorted(c for c in pc.unique(pc.filter(channels, pc.is_null(codes))).to_pylist() if c is not None)
    coded = pa.table({"created_time": pc.cast(table.column("created_time"), pa.timestamp("us", tz="UTC")),
                      "channel": codes, "value": table.column("value"),
                      **({"order_key": table.column("order_key")} if has_order_key else {})})
    wide, duplicates = dedup_and_pivot(coded, len(order), has_order_key)
    wide.unknown_channels = unknown
    return wide, duplicates


def pivot_rows(rows: pa.Table, layout: ShipLayout, has_order_key: bool) -> tuple[Pivoted, int]:
    """One ship's valid narrow rows pivoted to its layout: a column per channel, part by part in
    ``part_channels`` order (``pivot_named`` with the layout's order)."""
    order = [c.data_channel_id for part in layout.parts for c in layout.part_channels(part)]
    return pivot_named(rows, order, has_order_key)


def pivot_coded(table: pa.Table, n_columns: int) -> Pivoted:
    """Pivot rows whose ``channel`` is already the output column's number (NULL rows are left out).

    Every time in the table gets a row, even if all its cells are NULL, as in a SQL GROUP BY.
    """
    times_sorted = pc.unique(table.column("created_time")).sort()
    n_times = len(times_sorted)
    if table.num_rows == 0:
        return Pivoted(times_sorted, [pa.nulls(0, pa.string())] * n_columns, [])
    codes = table.column("channel").combine_chunks()
    keep = ~codes.is_null().to_numpy(zero_copy_only=False)
    column_of_row = codes.fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    time_of_row = pc.index_in(table.column("created_time"), value_set=times_sorted).to_numpy(
        zero_copy_only=False)
    row_ids = np.arange(table.num_rows, dtype=np.int64)
    # One flat (column, time) grid holding the row that fills each cell, -1 where none does;
    # a single take() then builds every column at once.
    grid = np.full(n_columns * n_times, -1, dtype=np.int64)
    grid[column_of_row[keep] * n_times + time_of_row[keep]] = row_ids[keep]
    filled = grid >= 0
    collisions = int(np.count_nonzero(filled)) < int(np.count_nonzero(keep))
    values = table.column("value").combine_chunks()
    cells = values.take(pa.array(grid, mask=~filled))
    columns = [cells.slice(i * n_times, n_times) for i in range(n_columns)]
    return Pivoted(times_sorted, columns, [], collisions)


def dedup_and_pivot(table: pa.Table, n_columns: int, has_order_key: bool) -> tuple[Pivoted, int]:
    """``pivot_coded(dedup(table))`` and the duplicate count, without paying for dedup when none exist.

    The pivot notices when two rows land on one cell; only then is the (much slower) grouped
    de-duplication run and the pivot redone.
    """
    wide = pivot_coded(table, n_columns)
    if not wide.collisions:
        return wide, 0
    deduped, duplicates = dedup(table, has_order_key, channel="channel")
    return pivot_coded(deduped, n_columns), duplicates


_COPY_SPECIAL = r"[\\\t\n\r]"


def copy_escape(column: pa.Array) -> pa.Array:
    """Escape text for PostgreSQL's COPY text format (backslash, tab, newline, carriage return)."""
    if len(column) == column.null_count:
        return column
    if not pc.any(pc.match_substring_regex(column, _COPY_SPECIAL)).as_py():
        return column
    escaped = pc.replace_substring(column, "\\", "\\\\")
    escaped = pc.replace_substring(escaped, "\t", "\\t")
    escaped = pc.replace_substring(escaped, "\n", "\\n")
    return pc.replace_substring(escaped, "\r", "\\r")


def timestamp_text(times: pa.Array) -> pa.Array:
    """ISO text with an explicit UTC offset and the microseconds kept."""
    utc = pc.cast(times, pa.timestamp("us", tz="UTC"))
    return pc.binary_join_element_wise(pc.strftime(utc, format="%Y-%m-%d %H:%M:%S"),
                                       pa.scalar("+00"), "")


def copy_text(columns: list[pa.Array]) -> memoryview:
    """Rows of COPY text format (tab-separated, ``\\N`` for NULL), one line per row."""
    if not columns or len(columns[0]) == 0:
        return memoryview(b"")
    escaped = [copy_escape(c) for c in columns]
    lines = pc.binary_join_element_wise(*escaped, "\t", null_handling="replace",
                                        null_replacement="\\N")
    lines = pc.binary_join_element_wise(lines, pa.scalar(""), "\n")
    lines = pa.array(lines) if not isinstance(lines, pa.Array) else lines
    # The data buffer of a string array with no nulls is exactly the concatenated lines.
    offsets = np.frombuffer(lines.buffers()[1], dtype=np.int32)[lines.offset:lines.offset + len(lines) + 1]
    return memoryview(lines.buffers()[2])[offsets[0]:offsets[-1]]
