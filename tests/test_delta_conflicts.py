"""Delta commit conflicts (two writers of one table) are retried, told by delta-spark's typed
exceptions and error conditions; any other error is raised at once. Real Delta tables, real
concurrent commits in one Spark session."""
from __future__ import annotations

import os
import threading
import time

import pytest
from pyspark.sql import functions as F

from widen.targets import delta as delta_target


def test_a_merge_that_loses_a_commit_race_is_tried_again(spark, tmp_path):
    """A MERGE reads the table, then (its source held by a UDF) another writer appends rows it
    would have read: its commit conflicts (ConcurrentAppendException); the retry merges it."""
    from delta.tables import DeltaTable

    path = str(tmp_path / "t")
    spark.range(4).selectExpr("id", "'old' AS v").write.format("delta").save(path)
    # the UDF runs in Spark's Python workers: the two sides meet through files
    reading, appended = str(tmp_path / "reading"), str(tmp_path / "appended")

    @F.udf("string")
    def held(v):       # the first attempt's source waits until the other writer committed
        import os
        import time

        deadline = time.monotonic() + 60
        if not os.path.exists(appended):
            open(reading, "a").close()
            while not os.path.exists(appended) and time.monotonic() < deadline:
                time.sleep(0.05)
        return v

    def append():
        deadline = time.monotonic() + 60
        while not os.path.exists(reading):
            assert time.monotonic() < deadline, "the MERGE never read its source"
            time.sleep(0.05)
        spark.range(10, 12).selectExpr("id", "'other' AS v").write.format("delta").mode("append").save(path)
        open(appended, "a").close()

    attempts = []

    def merge():
        attempts.append(1)
        # one partition: the held task takes one of local[2]'s two slots, the append the other
        source = spark.range(0, 12, 1, 1).selectExpr("id", "'new' AS v").select("id", held("v").alias("v"))
        (DeltaTable.forPath(spark, path).alias("w").merge(source.alias("s"), "w.id = s.id")
         .whenMatchedUpdate(set={"v": "s.v"}).whenNotMatchedInsert(values={"id": "s.id", "v": "s.v"}).execute())

    other = threading.Thread(target=append)
    other.start()
    try:
        delta_target.retry_conflicts(merge, "merge into t")
    finally:
        open(appended, "a").close()
        other.join(60)
    assert len(attempts) == 2
    rows = sorted(tuple(r) for r in spark.read.format("delta").load(path).collect())
    assert rows == [(i, "new") for i in range(12)]


def test_an_error_that_is_no_conflict_is_raised_at_once(spark, tmp_path):
    """A column that is not there (whatever its message says) is no reason to try again."""
    from pyspark.errors import AnalysisException

    path = str(tmp_path / "t")
    spark.range(1).write.format("delta").save(path)
    attempts = []

    def failing():
        attempts.append(1)
        spark.read.format("delta").load(path).select("`Concurrent column already exists`").collect()

    with pytest.raises(AnalysisException):
        delta_target.retry_conflicts(failing, "read t")
    assert attempts == [1]


def test_two_writers_making_one_ship_s_table_at_once_each_get_their_columns(make_config, spark, tmp_path):
    """A stream and a backfill meet a new ship at the same moment, each knowing other channels:
    both create the part table at once. Whichever loses the race adds the columns it needs to the
    winner's table (a create that lost, or a create-if-not-exists that found the table, would leave
    them out, and the next MERGE would fail)."""
    from widen.core.layout import ShipLayout
    from widen.targets.delta import DeltaTarget

    config = make_config("dconf", target__kind="delta", target__delta_root=str(tmp_path / "lake"))
    target = DeltaTarget(spark, config.target)
    for round_ in range(4):
        layouts, errors = [], []
        for channels in (["a"], ["a", "b", "c"]):
            layout = ShipLayout(f"ship {round_}")
            target.rules.grow(layout, {c: (None, None) for c in channels})
            layouts.append(layout)
        assert layouts[0].tables == layouts[1].tables
        barrier = threading.Barrier(2)

        def ensure(layout, barrier=barrier, errors=errors):
            barrier.wait(30)
            try:
                target.ensure_tables(None, layout)
            except Exception as err:  # noqa: BLE001 - reported below
                errors.append(err)

        writers = [threading.Thread(target=ensure, args=(layout,)) for layout in layouts]
        for w in writers:
            w.start()
        for w in writers:
            w.join(120)
        assert not any(w.is_alive() for w in writers)
        assert not errors, [(getattr(e, "getCondition", lambda: None)(), str(e)[:300]) for e in errors]
        [name] = layouts[1].tables.values()
        columns = target.read(name).columns
        assert sorted(columns) == sorted(["created_time", *(c.column_name for c in layouts[1].channels.values())]), \
            (round_, columns)

