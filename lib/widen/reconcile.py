"""Narrow == wide, proven with checksums computed inside both databases.

For a ship and a time range, each side gives per bucket (or per timestamp): the number of
timestamps, the number of non-NULL cells and an order-independent 64-bit checksum of
(created_time, data_channel_id, rendered value):

    per cell       c = hashtextextended(channel || US || value, 0) >> 16      (48 bits)
    per timestamp  s = sum of its cells' c                                     (bigint)
    per bucket     checksum = sum over timestamps of hashtextextended(created_time::text || ':' || s, 0)
                   modulo 2^64, shown as a signed bigint

The narrow side applies DESIGN.md's reject rule and, in its exact form, the duplicate rule; the wide
side unpivots through the catalog's channel -> column mapping (one expression per column, no
unpivot join) and joins part tables on created_time. Only these aggregates cross the wire.

A bucket is first checked with the narrow side's *fast* form (no duplicate grouping: one pass, one
hash aggregate by created_time). A bucket that differs is checked again with the exact form, so a
bucket whose only difference is a duplicate reading is not a mismatch. Mismatches are bisected
down to single timestamps, whose cells are then compared one by one.

Both sessions use UTC and ISO dates, so ``created_time::text`` is the same text on both servers.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from psycopg2 import sql

from widen import catalog, render
from widen.config import Config, SourceConfig

US = sql.SQL("chr(31)")
TWO_64 = 1 << 64


@dataclass(frozen=True)
class Aggregate:
    times: int = 0
    cells: int = 0
    checksum: int = 0

    @classmethod
    def of(cls, row) -> "Aggregate":
        times, cells, checksum = row
        return cls(int(times or 0), int(cells or 0), _signed(int(checksum or 0)))


def _signed(value: int) -> int:
    value %= TWO_64
    return value - TWO_64 if value >= 1 << 63 else value


def prepare_session(cur) -> None:
    """The same text for a timestamp on both servers; no JIT for wide expressions.

    The queries read one ship's range and group it by created_time: the (ship_id, created_time)
    index gives them in that order, so the group-by streams with no sort. The planner, which
    misjudges the validity predicate, would rather scan the whole table for every ship (measured on
    10M rows, 8 ships: 9.6 s against 3.6 s), so plain and bitmap scans are discouraged here.
    """
    cur.execute("SET TIME ZONE 'UTC'; SET DateStyle = 'ISO, MDY'; SET jit = off; SET work_mem = '64MB'; "
                "SET enable_seqscan = off; SET enable_bitmapscan = off")


def _bucket_expr(server_version: int) -> sql.Composable:
    """The bucket start of created_time, for a width given as the first parameter (seconds)."""
    if server_version >= 140000:
        return sql.SQL("date_bin(%(width)s * interval '1 second', created_time, timestamptz 'epoch')")
    return sql.SQL("to_timestamp(floor(extract(epoch FROM created_time) / %(width)s) * %(width)s)")


def _per_time_to_groups(per_time: sql.Composable, group: sql.Composable) -> sql.Composable:
    """(created_time, cells, s, valid_rows, rejected) rows -> (group, times, cells, checksum, rejected).

    A timestamp counts when it has a valid row; rejected rows are counted on the way (the fast
    narrow form reads every row of the range once, valid or not)."""
    return sql.SQL(
        "SELECT {g} AS grp, count(*) FILTER (WHERE valid_rows > 0), sum(cells) FILTER (WHERE valid_rows > 0), "
        "sum(hashtextextended(created_time::text || ':' || s::text, 0)::numeric) FILTER (WHERE valid_rows > 0), "
        "sum(rejected) FROM ({p}) per_time GROUP BY 1").format(g=group, p=per_time)


def narrow_cells(cfg: SourceConfig, exact: bool) -> sql.Composable:
    """(created_time, ch, v, ok) of one ship's narrow rows in [%(lo)s, %(hi)s): with ``exact`` valid
    rows only, one per (created_time, channel) by the duplicate rule; without, every row, ``ok``
    telling the valid ones."""
    table = sql.Identifier(cfg.schema, cfg.table)
    in_range = sql.SQL("ship_id = %(ship)s AND created_time >= %(lo)s AND created_time < %(hi)s")
    where = sql.SQL("{} AND {}").format(in_range, render.valid_row_predicate())
    value = render.rendered_value()
    if not exact:
        return sql.SQL("SELECT created_time, data_channel_id AS ch, {v} AS v, {ok} AS ok FROM {t} WHERE {w}").format(
            v=value, ok=render.valid_row_predicate(), t=table, w=in_range)
    if cfg.order_column:
        return sql.SQL("SELECT DISTINCT ON (created_time, data_channel_id) created_time, data_channel_id AS ch, "
                       "{v} AS v, true AS ok FROM {t} WHERE {w} ORDER BY created_time, data_channel_id, {o} DESC"
                       ).format(v=value, t=table, w=where, o=sql.Identifier(cfg.order_column))
    return sql.SQL("SELECT created_time, data_channel_id AS ch, max(({v}) COLLATE \"C\") AS v, true AS ok "
                   "FROM {t} WHERE {w} GROUP BY 1, 2").format(v=value, t=table, w=where)


def narrow_per_time(cfg: SourceConfig, exact: bool) -> sql.Composable:
    return sql.SQL(
        "SELECT created_time, count(v) FILTER (WHERE ok) AS cells, "
        "coalesce(sum(hashtextextended(ch || {us} || v, 0) >> 16) FILTER (WHERE ok), 0) AS s, "
        "count(*) FILTER (WHERE ok) AS valid_rows, count(*) FILTER (WHERE NOT ok) AS rejected "
        "FROM ({c}) cells GROUP BY created_time").format(us=US, c=narrow_cells(cfg, exact))


def wide_per_time(target_schema: str, layout: catalog.ShipLayout) -> tuple[sql.Composable, dict]:
    """(created_time, cells, s) of one ship's wide rows in [%(lo)s, %(hi)s), all parts together.

    Channel names go as parameters (``%(c0)s`` …): a literal ``%`` in a name would otherwise be
    read as a placeholder."""
    per_part = []
    names: dict[str, str] = {}
    for part in layout.parts:
        members = layout.part_channels(part)
        cells = sql.SQL(" + ").join(
            sql.SQL("({} IS NOT NULL)::int").format(sql.Identifier(c.column_name)) for c in members) \
            if members else sql.SQL("0")
        terms = []
        for c in members:
            key = f"c{len(names)}"
            names[key] = c.data_channel_id
            terms.append(sql.SQL("coalesce(hashtextextended({ch}::text || {us} || {col}, 0) >> 16, 0)").format(
                ch=sql.Placeholder(key), us=US, col=sql.Identifier(c.column_name)))
        sums = sql.SQL(" + ").join(terms) if terms else sql.SQL("0")
        per_part.append(sql.SQL(
            "SELECT created_time, {cells} AS cells, {sums} AS s, 1 AS valid_rows, 0 AS rejected FROM {t} "
            "WHERE created_time >= %(lo)s AND created_time < %(hi)s").format(
            cells=cells, sums=sums, t=sql.Identifier(target_schema, layout.tables[part])))
    if len(per_part) == 1:
        return per_part[0], names
    return sql.SQL("SELECT created_time, sum(cells) AS cells, sum(s) AS s, 1 AS valid_rows, 0 AS rejected "
                   "FROM ({}) parts GROUP BY created_time").format(sql.SQL(" UNION ALL ").join(per_part)), names


def _wide(tgt_cur, config: Config, layout, group: sql.Composable, params: dict) -> dict:
    if layout is None or not layout.tables:
        return {}
    per_time, names = wide_per_time(config.target.schema, layout)
    return aggregates(tgt_cur, per_time, group, {**params, **names})


def aggregates(cur, per_time: sql.Composable, group: sql.Composable, params: dict,
               rejected: dict | None = None) -> dict:
    """group value -> Aggregate (groups with only rejected rows left out; their counts go to
    ``rejected`` when given)."""
    cur.execute(_per_time_to_groups(per_time, group), params)
    out = {}
    for grp, times, cells, checksum, rejects in cur.fetchall():
        if rejected is not None and rejects:
            rejected[grp] = int(rejects)
        if times:
            out[grp] = Aggregate.of((times, cells, checksum))
    return out


def bucket_aggregates(src_cur, tgt_cur, config: Config, layout: catalog.ShipLayout | None, ship: str,
                      lo: dt.datetime, hi: dt.datetime, width_seconds: float,
                      rejected: dict | None = None) -> tuple[dict, dict]:
    """(source, target) bucket start -> Aggregate for one ship, the source in its fast form
    (duplicates not grouped); rejected rows per bucket into ``rejected``."""
    params = {"ship": ship, "lo": lo, "hi": hi, "width": width_seconds}
    source = aggregates(src_cur, narrow_per_time(config.source, False),
                        _bucket_expr(src_cur.connection.server_version), params, rejected)
    return source, _wide(tgt_cur, config, layout, _bucket_expr(tgt_cur.connection.server_version), params)


def range_aggregates(src_cur, tgt_cur, config: Config, layout: catalog.ShipLayout | None, ship: str,
                     lo: dt.datetime, hi: dt.datetime) -> tuple[Aggregate, Aggregate]:
    """Exact (source, target) aggregate of one ship's range."""
    params = {"ship": ship, "lo": lo, "hi": hi}
    source = aggregates(src_cur, narrow_per_time(config.source, True), sql.SQL("0"), params).get(0, Aggregate())
    return source, _wide(tgt_cur, config, layout, sql.SQL("0"), params).get(0, Aggregate())


def time_aggregates(src_cur, tgt_cur, config: Config, layout, ship: str, lo: dt.datetime,
                    hi: dt.datetime) -> tuple[dict, dict]:
    """(source, target) created_time -> Aggregate, exact, for a small range."""
    params = {"ship": ship, "lo": lo, "hi": hi}
    group = sql.SQL("created_time")
    source = aggregates(src_cur, narrow_per_time(config.source, True), group, params)
    return source, _wide(tgt_cur, config, layout, group, params)


@dataclass
class CellDiff:
    created_time: dt.datetime
    data_channel_id: str | None      # None: the whole timestamp (a wide row with no cells)
    kind: str                        # missing | extra | different
    source_value: str | None = None
    target_value: str | None = None


def cell_differences(src_cur, tgt_cur, config: Config, layout, ship: str,
                     times: list[dt.datetime]) -> list[CellDiff]:
    """The exact cells that differ at the given timestamps."""
    out: list[CellDiff] = []
    for lo in times:
        hi = lo + dt.timedelta(microseconds=1)
        params = {"ship": ship, "lo": lo, "hi": hi}
        src_cur.execute(narrow_cells(config.source, True), params)
        src_rows = src_cur.fetchall()
        source = {ch: v for _, ch, v, _ in src_rows if v is not None}
        target: dict[str, str] = {}
        has_row = False
        if layout is not None and layout.tables:
            for part in layout.parts:
                members = layout.part_channels(part)
                if not members:
                    continue
                tgt_cur.execute(sql.SQL("SELECT {} FROM {} WHERE created_time = %(lo)s").format(
                    sql.SQL(", ").join(sql.Identifier(c.column_name) for c in members),
                    sql.Identifier(config.target.schema, layout.tables[part])), params)
                row = tgt_cur.fetchone()
                if row is None:
                    continue
                has_row = True
                target.update({c.data_channel_id: v for c, v in zip(members, row) if v is not None})
            if not has_row:
                tgt_cur.execute(sql.SQL("SELECT 1 FROM {} WHERE created_time = %(lo)s").format(
                    sql.Identifier(config.target.schema, layout.tables[1])), params)
                has_row = tgt_cur.fetchone() is not None
        for ch in sorted(set(source) | set(target)):
            if ch not in target:
                out.append(CellDiff(lo, ch, "missing", source[ch], None))
            elif ch not in source:
                out.append(CellDiff(lo, ch, "extra", None, target[ch]))
            elif source[ch] != target[ch]:
                out.append(CellDiff(lo, ch, "different", source[ch], target[ch]))
        if not source and not target and bool(src_rows) != has_row:
            # A timestamp whose readings are all NULL still has its (empty) wide row.
            out.append(CellDiff(lo, None, "missing" if src_rows else "extra"))
    return out


@dataclass
class Drill:
    """What a bisection found in one ship: timestamps and whole ranges that differ."""
    times: list[dt.datetime] = field(default_factory=list)
    ranges: list[tuple[dt.datetime, dt.datetime, Aggregate, Aggregate]] = field(default_factory=list)


def drill(src_cur, tgt_cur, config: Config, layout, ship: str, lo: dt.datetime, hi: dt.datetime,
          leaf_times: int, found: Drill) -> None:
    """Bisect [lo, hi) to the timestamps whose aggregates differ.

    A range one side has nothing of is recorded whole (every cell of it is missing or extra);
    a range of at most ``leaf_times`` timestamps is compared timestamp by timestamp.
    """
    source, target = range_aggregates(src_cur, tgt_cur, config, layout, ship, lo, hi)
    if source == target:
        return
    if source.times == 0 or target.times == 0:
        found.ranges.append((lo, hi, source, target))
        return
    if max(source.times, target.times) <= leaf_times or hi - lo <= dt.timedelta(microseconds=2):
        src_t, tgt_t = time_aggregates(src_cur, tgt_cur, config, layout, ship, lo, hi)
        found.times.extend(t for t in sorted(set(src_t) | set(tgt_t)) if src_t.get(t) != tgt_t.get(t))
        return
    mid = lo + (hi - lo) / 2
    drill(src_cur, tgt_cur, config, layout, ship, lo, mid, leaf_times, found)
    drill(src_cur, tgt_cur, config, layout, ship, mid, hi, leaf_times, found)
