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

With a Delta target the wide side is computed by Spark over the Delta tables (``DeltaWide``) and
both sides use md5 instead of ``hashtextextended`` (``Hashes``): the first 48 bits of
md5(channel || US || value) per cell, the first 64 bits of md5(created_time::text || ':' || s) per
timestamp, with PostgreSQL's timestamp text rebuilt in Spark.
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
class Hashes:
    """The two hash functions of the checksum, as SQL around an expression.

    ``pg``: PostgreSQL's ``hashtextextended`` (the fastest; both sides are PostgreSQL). ``md5``: for
    a Delta target, where Spark computes the wide side and has md5 but not PostgreSQL's hash:
    the cell hash is the first 48 bits of md5, the timestamp mix the first 64 bits (both sides
    hash the same UTF-8 text)."""
    kind: str = "pg"

    @classmethod
    def for_config(cls, config: Config) -> "Hashes":
        return cls("md5" if config.target.is_delta else "pg")

    def cell(self, text: sql.Composable) -> sql.Composable:
        if self.kind == "md5":
            return sql.SQL("('x' || substr(md5({}), 1, 12))::bit(48)::bigint").format(text)
        return sql.SQL("(hashtextextended({}, 0) >> 16)").format(text)

    def mix(self, text: sql.Composable) -> sql.Composable:
        if self.kind == "md5":
            return sql.SQL("('x' || substr(md5({}), 1, 16))::bit(64)::bigint").format(text)
        return sql.SQL("hashtextextended({}, 0)").format(text)


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


def _per_time_to_groups(per_time: sql.Composable, group: sql.Composable, hashes: Hashes) -> sql.Composable:
    """(created_time, cells, s, valid_rows, rejected) rows -> (group, times, cells, checksum, rejected).

    A timestamp counts when it has a valid row; rejected rows are counted on the way (the fast
    narrow form reads every row of the range once, valid or not)."""
    return sql.SQL(
        "SELECT {g} AS grp, count(*) FILTER (WHERE valid_rows > 0), sum(cells) FILTER (WHERE valid_rows > 0), "
        "sum({mix}::numeric) FILTER (WHERE valid_rows > 0), "
        "sum(rejected) FROM ({p}) per_time GROUP BY 1").format(
        g=group, p=per_time, mix=hashes.mix(sql.SQL("created_time::text || ':' || s::text")))


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


def narrow_per_time(cfg: SourceConfig, exact: bool, hashes: Hashes = Hashes()) -> sql.Composable:
    return sql.SQL(
        "SELECT created_time, count(v) FILTER (WHERE ok) AS cells, "
        "coalesce(sum({cell}) FILTER (WHERE ok), 0) AS s, "
        "count(*) FILTER (WHERE ok) AS valid_rows, count(*) FILTER (WHERE NOT ok) AS rejected "
        "FROM ({c}) cells GROUP BY created_time").format(
        cell=hashes.cell(sql.SQL("ch || {us} || v").format(us=US)), c=narrow_cells(cfg, exact))


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
            terms.append(sql.SQL("coalesce({h}, 0)").format(h=Hashes().cell(sql.SQL("{ch}::text || {us} || {col}").format(
                ch=sql.Placeholder(key), us=US, col=sql.Identifier(c.column_name)))))
        sums = sql.SQL(" + ").join(terms) if terms else sql.SQL("0")
        per_part.append(sql.SQL(
            "SELECT created_time, {cells} AS cells, {sums} AS s, 1 AS valid_rows, 0 AS rejected FROM {t} "
            "WHERE created_time >= %(lo)s AND created_time < %(hi)s").format(
            cells=cells, sums=sums, t=sql.Identifier(target_schema, layout.tables[part])))
    if len(per_part) == 1:
        return per_part[0], names
    return sql.SQL("SELECT created_time, sum(cells) AS cells, sum(s) AS s, 1 AS valid_rows, 0 AS rejected "
                   "FROM ({}) parts GROUP BY created_time").format(sql.SQL(" UNION ALL ").join(per_part)), names


class PostgresWide:
    """The wide side in a PostgreSQL target: the aggregates computed by its server."""

    def __init__(self, cur, config: Config):
        self.cur, self.config = cur, config

    def groups(self, layout, ship: str, lo, hi, grouping: str, width: float | None = None) -> dict:
        """group -> Aggregate; ``grouping`` is ``bucket`` (of ``width`` seconds), ``range`` (key 0)
        or ``time`` (key created_time)."""
        if layout is None or not layout.tables:
            return {}
        group = {"bucket": _bucket_expr(self.cur.connection.server_version), "range": sql.SQL("0"),
                 "time": sql.SQL("created_time")}[grouping]
        per_time, names = wide_per_time(self.config.target.schema, layout)
        params = {"ship": ship, "lo": lo, "hi": hi, "width": width, **names}
        return aggregates(self.cur, per_time, group, params, hashes=Hashes())

    def row(self, layout, created_time) -> tuple[bool, dict]:
        """(whether a wide row exists at created_time, its non-NULL cells by channel)."""
        cur, target = self.cur, {}
        has_row = False
        for part in layout.parts:
            members = layout.part_channels(part)
            if not members:
                continue
            cur.execute(sql.SQL("SELECT {} FROM {} WHERE created_time = %s").format(
                sql.SQL(", ").join(sql.Identifier(c.column_name) for c in members),
                sql.Identifier(self.config.target.schema, layout.tables[part])), (created_time,))
            found = cur.fetchone()
            if found is None:
                continue
            has_row = True
            target.update({c.data_channel_id: v for c, v in zip(members, found) if v is not None})
        if not has_row:
            cur.execute(sql.SQL("SELECT 1 FROM {} WHERE created_time = %s").format(
                sql.Identifier(self.config.target.schema, layout.tables[1])), (created_time,))
            has_row = cur.fetchone() is not None
        return has_row, target


class DeltaWide:
    """The wide side in Delta tables: the same aggregates computed by Spark (md5 ``Hashes``).

    ``created_time::text`` is rebuilt as PostgreSQL prints a UTC timestamptz
    (``2026-01-01 00:00:00.5+00``: fraction without trailing zeros, none when whole)."""

    def __init__(self, spark, config: Config):
        from widen.delta_sink import DeltaTarget

        self.spark, self.config = spark, config
        self.target = DeltaTarget(spark, config.target)

    @staticmethod
    def _cell(text):
        from pyspark.sql import functions as F

        return F.conv(F.substring(F.md5(text), 1, 12), 16, 10).cast("bigint")

    @staticmethod
    def _time_text(col):
        from pyspark.sql import functions as F

        micros = F.pmod(F.unix_micros(col), F.lit(1_000_000))
        fraction = F.when(micros == 0, F.lit("")).otherwise(
            F.concat(F.lit("."), F.regexp_replace(F.lpad(micros.cast("string"), 6, "0"), "0+$", "")))
        return F.concat(F.date_format(col, "yyyy-MM-dd HH:mm:ss"), fraction, F.lit("+00"))

    def per_time(self, layout, lo, hi):
        """(created_time, cells, s) of the ship's wide rows in [lo, hi), parts added up."""
        from functools import reduce

        from pyspark.sql import functions as F

        from widen.delta_sink import quoted

        frames = []
        for part in layout.parts:
            members = layout.part_channels(part)
            frame = self.target.read(layout.tables[part]).where(
                (F.col("created_time") >= F.lit(lo)) & (F.col("created_time") < F.lit(hi)))
            cols = [F.col(quoted(c.column_name)) for c in members]
            cells = reduce(lambda a, b: a + b, [c.isNotNull().cast("bigint") for c in cols], F.lit(0).cast("bigint"))
            sums = reduce(lambda a, b: a + b, [
                F.coalesce(self._cell(F.concat(F.lit(c.data_channel_id + "\x1f"), col)), F.lit(0).cast("bigint"))
                for c, col in zip(members, cols)], F.lit(0).cast("bigint"))
            frames.append(frame.select("created_time", cells.alias("cells"), sums.alias("s")))
        united = reduce(lambda a, b: a.unionByName(b), frames)
        if len(frames) > 1:
            united = united.groupBy("created_time").agg(F.sum("cells").alias("cells"), F.sum("s").alias("s"))
        return united

    def groups(self, layout, ship: str, lo, hi, grouping: str, width: float | None = None) -> dict:
        from pyspark.sql import functions as F

        if layout is None or not layout.tables or not all(self.target.exists(t) for t in layout.tables.values()):
            return {}
        per_time = self.per_time(layout, lo, hi)
        micros = F.unix_micros("created_time")
        if grouping == "bucket":
            step = int(round(width * 1_000_000))
            key = micros - F.pmod(micros, F.lit(step))       # integer arithmetic: exact at the edges
        else:
            key = micros if grouping == "time" else F.lit(0)
        mix = F.conv(F.substring(F.md5(F.concat(self._time_text(F.col("created_time")), F.lit(":"),
                                                F.col("s").cast("string"))), 1, 16), 16, 10).cast("decimal(20,0)")
        rows = (per_time.select(key.cast("bigint").alias("grp"), "cells", mix.alias("mix"))
                .groupBy("grp").agg(F.count(F.lit(1)), F.sum("cells"), F.sum("mix")).collect())
        out = {}
        for grp, times, cells, checksum in rows:
            group = 0 if grouping == "range" else _from_micros(grp)
            out[group] = Aggregate.of((times, cells, checksum))
        return out

    def row(self, layout, created_time) -> tuple[bool, dict]:
        from pyspark.sql import functions as F

        from widen.delta_sink import quoted

        target, has_row = {}, False
        for part in layout.parts:
            members = layout.part_channels(part)
            found = (self.target.read(layout.tables[part]).where(F.col("created_time") == F.lit(created_time))
                     .select(F.lit(1), *[F.col(quoted(c.column_name)) for c in members]).collect())
            if not found:
                continue
            has_row = True
            target.update({c.data_channel_id: v for c, v in zip(members, found[0][1:]) if v is not None})
        return has_row, target


def _from_micros(micros: int) -> dt.datetime:
    return dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(microseconds=int(micros))


def aggregates(cur, per_time: sql.Composable, group: sql.Composable, params: dict,
               rejected: dict | None = None, hashes: Hashes = Hashes()) -> dict:
    """group value -> Aggregate (groups with only rejected rows left out; their counts go to
    ``rejected`` when given)."""
    cur.execute(_per_time_to_groups(per_time, group, hashes), params)
    out = {}
    for grp, times, cells, checksum, rejects in cur.fetchall():
        if rejected is not None and rejects:
            rejected[grp] = int(rejects)
        if times:
            out[grp] = Aggregate.of((times, cells, checksum))
    return out


def source_buckets(src_cur, config: Config, ship: str, lo, hi, width_seconds: float,
                   rejected: dict | None = None) -> dict:
    """bucket start -> Aggregate of the ship's narrow rows in the fast form (duplicates not
    grouped); rejected rows per bucket into ``rejected``."""
    params = {"ship": ship, "lo": lo, "hi": hi, "width": width_seconds}
    hashes = Hashes.for_config(config)
    return aggregates(src_cur, narrow_per_time(config.source, False, hashes),
                      _bucket_expr(src_cur.connection.server_version), params, rejected, hashes)


def bucket_aggregates(src_cur, wide, config: Config, layout: catalog.ShipLayout | None, ship: str,
                      lo: dt.datetime, hi: dt.datetime, width_seconds: float,
                      rejected: dict | None = None) -> tuple[dict, dict]:
    """(source, target) bucket start -> Aggregate for one ship, the source in its fast form."""
    return (source_buckets(src_cur, config, ship, lo, hi, width_seconds, rejected),
            wide.groups(layout, ship, lo, hi, "bucket", width_seconds))


def range_aggregates(src_cur, wide, config: Config, layout: catalog.ShipLayout | None, ship: str,
                     lo: dt.datetime, hi: dt.datetime) -> tuple[Aggregate, Aggregate]:
    """Exact (source, target) aggregate of one ship's range."""
    params = {"ship": ship, "lo": lo, "hi": hi}
    hashes = Hashes.for_config(config)
    source = aggregates(src_cur, narrow_per_time(config.source, True, hashes), sql.SQL("0"), params,
                        hashes=hashes).get(0, Aggregate())
    return source, wide.groups(layout, ship, lo, hi, "range").get(0, Aggregate())


def time_aggregates(src_cur, wide, config: Config, layout, ship: str, lo: dt.datetime,
                    hi: dt.datetime) -> tuple[dict, dict]:
    """(source, target) created_time -> Aggregate, exact, for a small range."""
    params = {"ship": ship, "lo": lo, "hi": hi}
    hashes = Hashes.for_config(config)
    source = aggregates(src_cur, narrow_per_time(config.source, True, hashes), sql.SQL("created_time"), params,
                        hashes=hashes)
    return source, wide.groups(layout, ship, lo, hi, "time")


@dataclass
class CellDiff:
    created_time: dt.datetime
    data_channel_id: str | None      # None: the whole timestamp (a wide row with no cells)
    kind: str                        # missing | extra | different
    source_value: str | None = None
    target_value: str | None = None


def cell_differences(src_cur, wide, config: Config, layout, ship: str,
                     times: list[dt.datetime]) -> list[CellDiff]:
    """The exact cells that differ at the given timestamps."""
    out: list[CellDiff] = []
    for lo in times:
        hi = lo + dt.timedelta(microseconds=1)
        params = {"ship": ship, "lo": lo, "hi": hi}
        src_cur.execute(narrow_cells(config.source, True), params)
        src_rows = src_cur.fetchall()
        source = {ch: v for _, ch, v, _ in src_rows if v is not None}
        has_row, target = wide.row(layout, lo) if layout is not None and layout.tables else (False, {})
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


def drill(src_cur, wide, config: Config, layout, ship: str, lo: dt.datetime, hi: dt.datetime,
          leaf_times: int, found: Drill) -> None:
    """Bisect [lo, hi) to the timestamps whose aggregates differ.

    A range one side has nothing of is recorded whole (every cell of it is missing or extra);
    a range of at most ``leaf_times`` timestamps is compared timestamp by timestamp.
    """
    source, target = range_aggregates(src_cur, wide, config, layout, ship, lo, hi)
    if source == target:
        return
    if source.times == 0 or target.times == 0:
        found.ranges.append((lo, hi, source, target))
        return
    if max(source.times, target.times) <= leaf_times or hi - lo <= dt.timedelta(microseconds=2):
        src_t, tgt_t = time_aggregates(src_cur, wide, config, layout, ship, lo, hi)
        found.times.extend(t for t in sorted(set(src_t) | set(tgt_t)) if src_t.get(t) != tgt_t.get(t))
        return
    mid = lo + (hi - lo) / 2
    drill(src_cur, wide, config, layout, ship, lo, mid, leaf_times, found)
    drill(src_cur, wide, config, layout, ship, mid, hi, leaf_times, found)
