"""One rule for which value wins with ``source.order_column`` (docs/design.md, "One rule for every
writer"; issue 29 item 5): no write replaces a value that came from a later row, whichever job
commits last.

With an order column a backfill chunk's merge, a stream batch and a repair all *replace* cells, so
the order of their commits matters. The races are made exact with hooks in the jobs' own code
paths (no database is mocked: real PostgreSQL, real Spark, the stream run as the job):

- a chunk has read its range; a newer duplicate arrives and the stream writes it; then the chunk
  merges (it must notice and read again);
- a chunk has checked its read and is about to merge; a newer duplicate arrives and the stream
  starts writing it (it must wait for the chunk's commit and land after it);
- ``reconcile --repair`` has read a piece's rows; a newer duplicate arrives and the stream writes
  it; then the repair writes (it must write the newer row);
- and what must not cost a re-read: readings of new timestamps (a live writer's) arriving in the
  chunk's range between its read and its merge.

Every cell must equal what an in-database query over the narrow table picks (the valid row with
the greatest ingest_id per ship, channel and created_time), for PostgreSQL and Delta targets.

Seen failing on the code before the fix: the five race runs, each with the older value in the
raced cells (the chunk's or the repair's write replaced the stream's newer one). The live writer's
test passes there too (nothing to re-read); it failed on a first version of the fix that read a
chunk again on any new row in its range (as tests/test_cutover.py did, with its live writer).
"""
from __future__ import annotations

import datetime as dt
import threading
import time
from dataclasses import replace

import nasty
import oracle
import pytest
from psycopg2 import sql

from widen.jobs import backfill, reconcile, stream
from widen.pg import db
from widen.targets import open_target
from widen.targets.delta import DeltaChunkWrite
from widen.targets.postgres import PostgresChunkWrite

SHIP = "ship ö"
T0 = dt.datetime(2026, 4, 1, tzinfo=dt.UTC)
SECOND = dt.timedelta(seconds=15)
#: long enough for a job on a busy machine, short enough that a broken test does not hang the suite
WAIT = 120.0
NARROW_DDL = ("CREATE TABLE {} (ship_id text, data_channel_id text, created_time timestamptz, value_format text, "
              "double_v double precision, long_v bigint, str_v text, bool_v boolean, ingest_id bigserial)")


def old_rows() -> list[tuple]:
    """The history the backfill reads: channels a (Decimal) and b (String) at T0 and T0 + 15 s,
    with a duplicate it resolves itself (the second row of a at T0 wins by ingest_id)."""
    return [(SHIP, "a", T0, "Decimal", 1.5, None, None, None),
            (SHIP, "a", T0, "Decimal", 2.5, None, None, None),
            (SHIP, "b", T0, "String", None, None, "old b", None),
            (SHIP, "a", T0 + SECOND, "Decimal", 3.5, None, None, None),
            (SHIP, "b", T0 + SECOND, "String", None, None, "old b2", None)]


def newer_rows() -> list[tuple]:
    """Newer duplicates of two keys the backfill read (inserted later: greater ingest_ids)."""
    return [(SHIP, "a", T0, "Decimal", 0.25, None, None, None),
            (SHIP, "b", T0 + SECOND, "String", None, None, "newer b2", None)]


RACED = [("a", T0), ("b", T0 + SECOND)]


def setup(name: str, kind: str, make_config, pg, tmp_path, spark, streamed: bool = False):
    """The narrow table with the history (the stream starts at the earliest row); with ``streamed``
    the stream's first run has written it, so its sink knows the ship's layout and needs no DDL
    (no catalog lock) for the newer rows. Returns the config and the Delta root (None for a
    PostgreSQL target)."""
    root = str(tmp_path / "lake") if kind == "delta" else None
    delta = {"target__kind": "delta", "target__delta_root": root} if root else {}
    config = make_config(name, source__order_column="ingest_id", backfill__parallel_chunks=1,
                         backfill__max_attempts=1, **delta)
    config = replace(config, stream=replace(config.stream, checkpoint=str(tmp_path / "cp"), query_name=name,
                                            start="earliest"))
    with pg.cursor() as cur:
        for schema in (f"src_{name}", f"wide_{name}", f"cat_{name}", f"copy_{name}"):
            cur.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
        cur.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(f"src_{name}")))
        narrow = sql.Identifier(f"src_{name}", "tbl_data_timeseries")
        cur.execute(sql.SQL(NARROW_DDL).format(narrow))
        cur.execute(sql.SQL("CREATE INDEX ON {} (ship_id, created_time)").format(narrow))
        cur.execute(sql.SQL("CREATE INDEX ON {} (ingest_id)").format(narrow))
    nasty.insert(pg, f"src_{name}", old_rows())
    if streamed:
        assert stream.run(config, spark, once=True).summary["narrow_rows"] == len(old_rows())
    return config, root


def last_by_order(cur, src: str, channel: str, when: dt.datetime) -> str | None:
    """The oracle of one cell: the rendered value of the valid narrow row with the greatest ingest_id."""
    cur.execute(sql.SQL("SELECT {r} FROM {t} WHERE ship_id = %s AND data_channel_id = %s AND created_time = %s "
                        "AND {v} ORDER BY ingest_id DESC LIMIT 1").format(
        r=oracle.RENDER, t=sql.Identifier(src, "tbl_data_timeseries"), v=oracle.VALID), (SHIP, channel, when))
    row = cur.fetchone()
    return row[0] if row else None


def check(spark, pg, name: str, root: str | None) -> None:
    """The raced cells equal the oracle's, which is the newer rows' value; every other cell too."""
    src, cat, wide = f"src_{name}", f"cat_{name}", f"wide_{name}"
    with pg.cursor() as cur:
        if root is not None:
            oracle.copy_delta_tables(spark, cur, root, cat, f"copy_{name}")
            wide = f"copy_{name}"
        columns = {ch: (table, col) for table, pairs in oracle.catalog_mapping(cur, cat, SHIP).items()
                   for ch, col in pairs}
        cells = {}
        for channel, when in RACED:
            table, column = columns[channel]
            cur.execute(sql.SQL("SELECT {}::text FROM {} WHERE created_time = %s").format(
                sql.Identifier(column), sql.Identifier(wide, table)), (when,))
            cells[(channel, when)] = cur.fetchone()[0]
        expected = {(channel, when): last_by_order(cur, src, channel, when) for channel, when in RACED}
        assert expected == {("a", T0): "0.25", ("b", T0 + SECOND): "newer b2"}      # the oracle sees the newer rows
        assert cells == expected
        oracle.assert_equal_to_oracle(cur, src, wide, cat, order_column="ingest_id")


def in_thread(action) -> tuple[threading.Thread, dict]:
    """``action()`` in a thread; its result or exception lands in the returned dict."""
    out: dict = {}

    def run():
        try:
            out["result"] = action()
        except BaseException as err:  # noqa: BLE001 - handed to the test
            out["error"] = err
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


def joined(thread: threading.Thread, out: dict):
    thread.join(WAIT)
    assert not thread.is_alive(), "the job did not finish"
    if "error" in out:
        raise out["error"]
    return out["result"]


@pytest.mark.parametrize("kind", ["postgres", "delta"])
def test_a_newer_duplicate_streamed_between_a_chunks_read_and_merge_stays(make_config, spark, pg, tmp_path,
                                                                          monkeypatch, kind):
    """The chunk's Spark job has read and pivoted its range; before it merges, newer duplicates
    arrive and the stream writes them. The chunk must not put the older values back."""
    name = f"ordrace_{kind}"
    config, root = setup(name, kind, make_config, pg, tmp_path, spark)
    read, go = threading.Event(), threading.Event()
    for cls in (PostgresChunkWrite, DeltaChunkWrite):
        def run(self, narrow, original=cls.run):
            stats = original(self, narrow)
            if not read.is_set():
                read.set()
                assert go.wait(WAIT)
            return stats
        monkeypatch.setattr(cls, "run", run)
    thread, out = in_thread(lambda: backfill.run(config, spark, end=dt.datetime.now(dt.UTC)))
    assert read.wait(WAIT)
    nasty.insert(pg, f"src_{name}", newer_rows())
    assert stream.run(config, spark, once=True).summary["narrow_rows"] == len(old_rows()) + len(newer_rows())
    go.set()
    result = joined(thread, out)
    assert result.exit_code == 0 and result.summary["chunks_done"] == 1, result.summary
    check(spark, pg, name, root)
    # the chunk read its range again: its figures are those of that read, the newer rows included
    assert result.summary["narrow_rows"] == len(old_rows()) + len(newer_rows())


def test_a_live_writers_new_readings_in_a_chunks_range_do_not_make_it_read_again(make_config, spark, pg, tmp_path,
                                                                                 monkeypatch):
    """Readings of new timestamps arrive in the chunk's range between its read and its merge (a live
    writer at the tail): the chunk writes none of their cells, so it merges what it read, once."""
    name = "ordlive"
    config, root = setup(name, "postgres", make_config, pg, tmp_path, spark)
    reads: list = []
    later = [(SHIP, "a", T0 + dt.timedelta(minutes=m), "Decimal", float(m), None, None, None) for m in (5, 6)]

    def run(self, narrow, original=PostgresChunkWrite.run):
        stats = original(self, narrow)
        if not reads:
            nasty.insert(pg, f"src_{name}", later)
        reads.append(sum(row["narrow_rows"] for row in stats))
        return stats
    monkeypatch.setattr(PostgresChunkWrite, "run", run)
    result = backfill.run(config, spark, end=dt.datetime.now(dt.UTC))
    assert result.exit_code == 0 and reads == [len(old_rows())], (reads, result.summary)
    assert stream.run(config, spark, once=True).summary["narrow_rows"] == len(old_rows()) + len(later)
    with pg.cursor() as cur:
        oracle.assert_equal_to_oracle(cur, f"src_{name}", f"wide_{name}", f"cat_{name}", order_column="ingest_id")


def order_lock_waiters(pg) -> int:
    """Sessions waiting for a ship's order lock (``catalog.ships.lock_ship_in_order``)."""
    with pg.cursor() as cur:
        cur.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
                    "AND classid = hashtext('widen.ship.order')::oid")
        return cur.fetchone()[0]


@pytest.mark.parametrize("kind", ["postgres", "delta"])
def test_a_newer_duplicate_streamed_while_a_chunk_merges_lands_after_it(make_config, spark, pg, tmp_path,
                                                                       monkeypatch, kind):
    """The chunk has checked its read and starts its merge; newer duplicates arrive and the stream
    starts writing them. The chunk's older values must not be the last word: the stream waits for
    the chunk's commit (it is seen waiting for the ship's order lock) and writes after it."""
    name = f"ordwait_{kind}"
    config, root = setup(name, kind, make_config, pg, tmp_path, spark, streamed=True)
    started: list = []
    for cls in (PostgresChunkWrite, DeltaChunkWrite):
        def merge(self, cur, original=cls.merge):
            if not started:
                nasty.insert(pg, f"src_{name}", newer_rows())
                started.append(in_thread(lambda: stream.run(config, spark, once=True)))
                thread = started[0][0]
                deadline = time.monotonic() + WAIT
                # until the stream either waits for this chunk (as it must) or has written already
                while thread.is_alive() and not order_lock_waiters(pg):
                    assert time.monotonic() < deadline, "the stream neither waited nor finished"
                    time.sleep(0.05)
            return original(self, cur)
        monkeypatch.setattr(cls, "merge", merge)
    result = backfill.run(config, spark, end=dt.datetime.now(dt.UTC))
    assert result.exit_code == 0 and result.summary["chunks_done"] == 1, result.summary
    assert joined(*started[0]).summary["narrow_rows"] == 2
    check(spark, pg, name, root)


def test_a_newer_duplicate_streamed_during_a_repair_stays(make_config, spark, pg, tmp_path, monkeypatch):
    """A wide row is lost (deleted behind widen's back); ``reconcile --repair`` reads the source
    rows of its timestamp; before it writes them, a newer duplicate arrives and the stream writes
    it. The repair must write the newer value, not the one it read first. (PostgreSQL target only:
    the repair's lock and re-read do not depend on the target kind, and Delta runs are slow.)"""
    name = "ordrepair"
    config, root = setup(name, "postgres", make_config, pg, tmp_path, spark)
    assert backfill.run(config, spark, end=dt.datetime.now(dt.UTC)).exit_code == 0
    target = open_target(config.target, spark)
    with db.connection(config.target.connection) as conn, conn.cursor() as cur:
        target.delete_rows(cur, target.layouts.load(conn, SHIP), [T0, T0 + SECOND], [])
        conn.commit()
    read, go = threading.Event(), threading.Event()

    def prepare_ship(*args, original=reconcile.prepare_ship, **kwargs):
        if not read.is_set():       # the repair has read its piece's rows
            read.set()
            assert go.wait(WAIT)
        return original(*args, **kwargs)
    monkeypatch.setattr(reconcile, "prepare_ship", prepare_ship)
    thread, out = in_thread(lambda: reconcile.run(config, spark, ships=[SHIP], repair=True))
    assert read.wait(WAIT)
    nasty.insert(pg, f"src_{name}", newer_rows())
    assert stream.run(config, spark, once=True).summary["narrow_rows"] == len(old_rows()) + len(newer_rows())
    go.set()
    result = joined(thread, out)
    assert result.summary["repaired_ships"] == [SHIP], result.summary
    check(spark, pg, name, root)
    assert result.exit_code == 0, result.report
