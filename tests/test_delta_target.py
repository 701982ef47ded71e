"""target.kind delta: backfill, stream and reconcile into Delta tables equal the oracle.

The hostile fleet (channels UPPER and upper, dots, quotes, 64+ byte names, floating-point edges,
duplicates, rejects) is backfilled into Delta tables split over part tables; the stream then adds
minutes with a new channel and a new ship; a replayed micro-batch commits nothing (txnAppId /
txnVersion); reconcile passes, finds three faults made in the Delta tables and the source, repairs
them; rollback drops a ship's Delta tables. The oracle is the SQL pivot of tests/oracle.py, run on a
copy of the Delta tables read back with plain Spark.
"""
from __future__ import annotations

import datetime as dt
import os
import time
from dataclasses import replace

import nasty
import oracle
import pyarrow as pa
from delta.tables import DeltaTable
from psycopg2 import sql
from pyspark.sql import functions as F

from widen.jobs import backfill, reconcile, rollback, stream
from widen.streaming import sink as stream_sink
from widen.targets.delta import table_dir

NAME = "dlt"
SRC, CAT, COPY = f"src_{NAME}", f"cat_{NAME}", f"wide_{NAME}"


def check_oracle(spark, pg, root: str) -> None:
    with pg.cursor() as cur:
        oracle.copy_delta_tables(spark, cur, root, CAT, COPY)
        oracle.assert_equal_to_oracle(cur, SRC, COPY, CAT)


def tables_of(pg, ship: str) -> dict[int, str]:
    with pg.cursor() as cur:
        cur.execute(sql.SQL("SELECT part, table_name FROM {} WHERE ship_id = %s").format(
            sql.Identifier(CAT, "wide_tables")), (ship,))
        return dict(cur.fetchall())


def live(ship: str, start: dt.datetime, channels: list[str]) -> list[tuple]:
    """Four readings a channel, a second apart, just after ``start`` (nasty.minute's formats)."""
    return [(s, ch, start + dt.timedelta(seconds=1 + k), *rest)
            for s, ch, when, *rest in nasty.minute(ship, 0, channels)
            for k in [int((when - nasty.T0).total_seconds()) // 15]]


def test_backfill_stream_reconcile_into_delta(fresh_fleet, make_config, spark, pg, tmp_path):
    root = str(tmp_path / "lake")
    config = make_config(NAME, target__kind="delta", target__delta_root=root, target__max_columns_per_table=4)
    config = replace(config, stream=replace(config.stream, checkpoint=str(tmp_path / "cp"), query_name=NAME))
    fresh_fleet(NAME, ships=2, channels=6, hours=3, seed=11).close()
    nasty.insert(pg, SRC)

    # Backfill: every ship's Delta tables equal the SQL pivot; rejects and duplicates counted.
    first = backfill.run(config, spark)
    assert first.exit_code == 0, first.report
    assert first.summary["rejected_rows"] > 0 and first.summary["duplicate_rows"] > 0
    check_oracle(spark, pg, root)
    # UPPER and upper cannot share a Delta table (names are unique regardless of case).
    with pg.cursor() as cur:
        cur.execute(sql.SQL("SELECT data_channel_id, table_name FROM {} WHERE data_channel_id IN "
                            "('UPPER', 'upper')").format(sql.Identifier(CAT, "channel_columns")))
        placed = dict(cur.fetchall())
    assert len(placed) == 2 and placed["UPPER"] != placed["upper"]

    # Stream: the first run only takes the tail's offset; the second merges the new minutes,
    # a new channel of a fleet ship and a new ship whose channels differ only by case.
    fleet_ship = sorted(s for s in oracle.valid_ships(pg.cursor(), SRC) if s.startswith("IMO"))[0]
    fleet_channels = sorted(oracle.valid_channels(pg.cursor(), SRC, fleet_ship))
    tail = stream.run(config, spark, once=True)
    assert tail.exit_code == 0 and tail.summary["narrow_rows"] == 0
    start = dt.datetime.fromisoformat(tail.summary["start_offset"]["t"])
    new_rows = (live(fleet_ship, start, fleet_channels[:3] + ["brand new"])
                + live("ship new", start, ["Mixed", "mixed", "a.b"])
                + live("ship new", start + dt.timedelta(seconds=5), ["Mixed", "a.b"]))
    new_rows.append(("ship new", "a.b", new_rows[-1][2], "String", None, None, "a later duplicate", None))
    nasty.insert(pg, SRC, new_rows)
    settled = max(r[2] for r in new_rows) + dt.timedelta(seconds=config.stream.settle_seconds + 1)
    while dt.datetime.now(dt.UTC) < settled:       # the tail is read once it has settled
        time.sleep(0.2)
    second = stream.run(config, spark, once=True)
    assert second.exit_code == 0, second.report
    assert second.summary["narrow_rows"] == len(new_rows)
    check_oracle(spark, pg, root)

    # A batch replayed after a crash between the Delta commits and the ledger row: Delta skips the
    # version it has (the replay carries a different value, which must not land), the ledger heals.
    with pg.cursor() as cur:
        cur.execute(sql.SQL("SELECT max(batch_id) FROM {} WHERE query_name = %s AND narrow_rows > 0").format(
            sql.Identifier(CAT, "stream_batches")), (NAME,))
        last = cur.fetchone()[0]
        cur.execute(sql.SQL("DELETE FROM {} WHERE query_name = %s AND batch_id = %s").format(
            sql.Identifier(CAT, "stream_batches")), (NAME, last))
    new_ship_tables = [f"{root}/{table_dir(t)}" for t in tables_of(pg, "ship new").values()]
    versions = [DeltaTable.forPath(spark, p).history(1).first()["version"] for p in new_ship_tables]
    replay = pa.table({"ship_id": ["ship new"], "data_channel_id": ["a.b"],
                       "created_time": pa.array([new_rows[-1][2]], pa.timestamp("us", tz="UTC")),
                       "value": ["zz replayed"], "reject": pa.array([None], pa.string()),
                       "order_key": pa.array([None], pa.int64())})
    result = stream_sink.write_batch(config, replay, last, NAME, spark)
    assert not result.skipped
    assert [DeltaTable.forPath(spark, p).history(1).first()["version"] for p in new_ship_tables] == versions
    check_oracle(spark, pg, root)

    # Reconcile: clean; then a changed Delta cell, a deleted Delta row and a deleted narrow row are
    # each found exactly; --repair fixes them.
    clean = reconcile.run(config, spark)
    assert clean.exit_code == 0, clean.report
    assert clean.summary["mismatched_buckets"] == 0 and clean.summary["rejected_rows"] > 0
    with pg.cursor() as cur:
        mapping = {ch: (table, col) for table, pairs in oracle.catalog_mapping(cur, CAT, fleet_ship).items()
                   for ch, col in pairs}
        cur.execute(sql.SQL("SELECT min(created_time) FROM {} WHERE ship_id = %s").format(
            sql.Identifier(SRC, "tbl_data_timeseries")), (fleet_ship,))
        t0 = cur.fetchone()[0]
    ch1, ch2 = fleet_channels[0], fleet_channels[1]
    at = lambda minutes: t0 + dt.timedelta(minutes=minutes)  # noqa: E731
    delta = lambda table: DeltaTable.forPath(spark, f"{root}/{table_dir(table)}")  # noqa: E731
    table1, column1 = mapping[ch1]
    delta(table1).update(F.col("created_time") == F.lit(at(10)), {f"`{column1}`": F.lit("tampered")})
    for table in {t for t, _ in mapping.values()}:
        delta(table).delete(F.col("created_time") == F.lit(at(70)))
    with pg.cursor() as cur:
        cur.execute(sql.SQL("DELETE FROM {} WHERE ship_id = %s AND data_channel_id = %s AND created_time = %s")
                    .format(sql.Identifier(SRC, "tbl_data_timeseries")), (fleet_ship, ch2, at(100)))
        assert cur.rowcount == 1
    found = reconcile.run(config, spark)
    assert found.exit_code == 1
    cells = {(c["kind"], c["created_time"], c["data_channel_id"]) for c in found.summary["cells"]}
    assert ("different", at(10).isoformat(), ch1) in cells
    assert {("missing", at(70).isoformat(), ch) for ch in fleet_channels} <= cells
    assert ("extra", at(100).isoformat(), ch2) in cells
    assert found.summary["ships_mismatched"] == [fleet_ship]
    repaired = reconcile.run(config, spark, repair=True)
    assert repaired.exit_code == 0, repaired.report
    assert reconcile.run(config, spark).exit_code == 0
    check_oracle(spark, pg, root)

    # Rollback of one ship drops its Delta tables and its catalog rows.
    paths = [f"{root}/{table_dir(t)}" for t in tables_of(pg, "ship new").values()]
    assert rollback.run(config, spark, ships=["ship new"]).exit_code == 0
    assert not any(os.path.exists(p) for p in paths) and tables_of(pg, "ship new") == {}


def test_metastore_database_tables(make_config, spark, tmp_path):
    """target.delta_database: the part tables are metastore tables (lower-case names, md5 when the
    name is not plain); columns added later; a MERGE and a drop reach them by name."""
    from widen.core import kernels
    from widen.core.layout import ShipLayout
    from widen.targets.delta import DeltaTarget, merge_wide, quoted

    database = "widen_dlt_db"
    # LOCATION takes no parameter marker: the (pytest tmp) path as an escaped Spark string literal.
    location = str(tmp_path / "warehouse").replace("\\", "\\\\").replace("'", "\\'")
    spark.sql(f"CREATE DATABASE IF NOT EXISTS {quoted(database)} LOCATION '{location}'")
    config = make_config(NAME, target__kind="delta", target__delta_database=database)
    target = DeltaTarget(spark, config.target)
    layout = ShipLayout("Ship.One")
    target.rules.grow(layout, {"a.b": (None, None), "Wind `speed`": (None, None)})
    target.ensure_tables(None, layout)
    target.rules.grow(layout, {"later": (None, None)})
    target.ensure_tables(None, layout)
    name = layout.tables[1]
    assert target.qualified(name) == f"`{database}`.`{table_dir(name, lower=True)}`"
    assert table_dir(name, lower=True) != name and table_dir(name, lower=True) == table_dir(name, lower=True).lower()
    times = pa.array([nasty.T0, nasty.at(15)], pa.timestamp("us", tz="UTC"))
    columns = {c: pa.array(v, pa.string()) for c, v in
               {"a.b": ["1", None], "Wind `speed`": [None, "x"], "later": ["l", "m"]}.items()}
    order = [c.data_channel_id for c in layout.part_channels(1)]
    merge_wide(target, layout, kernels.Pivoted(times, [columns[c] for c in order], []), greatest=False)
    rows = spark.read.table(target.qualified(name)).orderBy("created_time").collect()
    assert [r.asDict() for r in rows] == [
        {"created_time": nasty.T0.replace(tzinfo=None), "a.b": "1", "Wind `speed`": None, "later": "l"},
        {"created_time": nasty.at(15).replace(tzinfo=None), "a.b": None, "Wind `speed`": "x", "later": "m"}]
    target.drop(layout)
    assert not target.exists(name)
