"""Change data capture (source.mode cdc): inserts, updates and deletes of narrow rows reach the wide
tables from a logical replication slot, each exactly once.

On the embedded server with wal_level = logical: the job first refuses a narrow table whose replica
identity cannot name a deleted row's cell (nothing is created); with REPLICA IDENTITY FULL it makes
the publication and the slot, and every step below (each a ``stream --once``) ends with the wide
tables equal to the test's own SQL pivot of the narrow table (``oracle.differences``): inserts, a
new channel and a new ship, an updated value, a deleted duplicate (the other reading stays), a
deleted only reading (the cell goes), a deleted timestamp (the row goes), a transaction mixing all
of them across ships, a 100 kB string whose row is updated in another column (TOAST), a long
transaction committing after a later one, a bad row (rejected, not lost), a replay of transactions
the slot still holds after a batch committed (skipped). ``--drop-slot`` removes slot and publication.
Then the stream SIGKILLed at three random points while the application inserts, updates and
deletes; and old or unprepared servers refused before anything is made.
"""
from __future__ import annotations

import datetime as dt
import random
import threading
import time

import jobproc
import nasty
import oracle
import psycopg2
import pytest
from conftest import raw_config
from psycopg2 import sql

from widen import config as widen_config
from widen.config import BadInput
from widen.jobs import backfill, plan, stream
from widen.sources import postgres_cdc

NAME = "cdc"
SRC, TGT, CAT = f"src_{NAME}", f"wide_{NAME}", f"cat_{NAME}"
SHIPS = ["ship 'c' 1%", "船 b"]
NEW_SHIP = "new {ship} \\ x"
T0 = dt.datetime(2026, 2, 1, tzinfo=dt.UTC)


def at(minutes: float) -> dt.datetime:
    return T0 + dt.timedelta(minutes=minutes)


class Writer:
    """The application: its own session, committing with synchronous_commit on."""

    def __init__(self, pg_server: dict):
        self.conn = psycopg2.connect(host=pg_server["host"], port=pg_server["port"], user=pg_server["user"],
                                     dbname=pg_server["database"])
        with self.conn.cursor() as cur:
            cur.execute("SET synchronous_commit = on")
        self.conn.commit()

    def run(self, statement: str, params: tuple = (), commit: bool = True) -> int:
        with self.conn.cursor() as cur:
            cur.execute(sql.SQL(statement).format(t=sql.Identifier(SRC, "tbl_data_timeseries")), params)
            count = cur.rowcount
        if commit:
            self.conn.commit()
        return count

    def insert(self, ship: str, channel: str, when: dt.datetime, fmt: str, value, commit: bool = True) -> None:
        column = {"Decimal": "double_v", "Integer": "long_v", "String": "str_v", "Boolean": "bool_v"}.get(fmt, "str_v")
        self.run(f"INSERT INTO {{t}} (ship_id, data_channel_id, created_time, value_format, {column}) "
                 "VALUES (%s, %s, %s, %s, %s)", (ship, channel, when, fmt, value), commit)


def channels_of(pg, ship: str) -> dict[str, str]:
    """channel -> value_format of the ship's generated channels."""
    with pg.cursor() as cur:
        cur.execute(sql.SQL("SELECT DISTINCT data_channel_id, value_format FROM {} WHERE ship_id = %s ORDER BY 1")
                    .format(sql.Identifier(SRC, "tbl_data_timeseries")), (ship,))
        return dict(cur.fetchall())


def assert_oracle(pg) -> None:
    with pg.cursor() as cur:
        ships = oracle.valid_ships(cur, SRC)
        cur.execute(sql.SQL("SELECT DISTINCT ship_id FROM {}").format(sql.Identifier(CAT, "wide_tables")))
        assert ships <= {r[0] for r in cur.fetchall()}
        for ship in ships:
            diffs = oracle.differences(cur, SRC, TGT, CAT, ship)
            assert all(d == (0, 0) for d in diffs.values()), (ship, diffs)


def streamed(config, spark, pg) -> dict:
    done = stream.run(config, spark, once=True)
    assert done.exit_code == 0, done.report
    assert_oracle(pg)
    return done.summary


def slot_status(cur, slot: str) -> str | None:
    cur.execute("SELECT wal_status FROM pg_replication_slots WHERE slot_name = %s", (slot,))
    return cur.fetchone()[0]


def slot_row(pg, slot: str):
    with pg.cursor() as cur:
        cur.execute("SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = %s", (slot,))
        return cur.fetchone()


@pytest.fixture
def no_slots_left(pg):
    """Whatever happens, no slot of this module is left to keep WAL on the test server."""
    yield
    with pg.cursor() as cur:
        cur.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                    "WHERE slot_name LIKE 'widen_cdc%%' AND NOT active")


def test_cdc_journey(fresh_fleet, make_config, spark, pg, pg_server, tmp_path, no_slots_left):
    fresh_fleet(NAME, ship_list=SHIPS, channels=3, hours=0.5, start=T0, cadence_seconds=60).close()
    config = make_config(NAME, source__mode="cdc", stream__query_name="cdc q", stream__start="latest",
                         stream__checkpoint=str(tmp_path / "cp"), stream__max_rows_per_batch=5000)
    slot, publication = postgres_cdc.slot_names(config)
    narrow = sql.Identifier(SRC, "tbl_data_timeseries")

    # no replica identity that names a row's cell: refused, nothing made
    with pytest.raises(BadInput, match="REPLICA IDENTITY FULL"):
        stream.run(config, spark, once=True)
    with pg.cursor() as cur:
        cur.execute("SELECT (SELECT count(*) FROM pg_replication_slots WHERE slot_name = %s) + "
                    "(SELECT count(*) FROM pg_publication WHERE pubname = %s)", (slot, publication))
        assert cur.fetchone()[0] == 0
        cur.execute(sql.SQL("ALTER TABLE {} REPLICA IDENTITY FULL").format(narrow))     # the DBA's step
        # a publication of that name that is not what widen would make is never changed
        cur.execute(sql.SQL("CREATE PUBLICATION {} FOR TABLE {} WITH (publish = 'insert')").format(
            sql.Identifier(publication), narrow))
    with pytest.raises(BadInput, match="does not publish every insert, update, delete and truncate"):
        stream.run(config, spark, once=True)
    with pg.cursor() as cur:
        cur.execute(sql.SQL("DROP PUBLICATION {}").format(sql.Identifier(publication)))

    writer = Writer(pg_server)
    try:
        assert plan.run(config, spark).exit_code == 0
        first = stream.run(config, spark, once=True)
        assert first.exit_code == 0 and first.summary["narrow_rows"] == 0, first.report
        assert slot_row(pg, slot) is not None
        writer.insert(SHIPS[0], "late", at(100), "String", "after the slot")     # the stream's, not the backfill's
        assert backfill.run(config, spark).exit_code == 0
        assert streamed(config, spark, pg)["narrow_rows"] == 1

        a = channels_of(pg, SHIPS[0])
        ca, fa = next((c, f) for c, f in a.items() if f == "Decimal")
        cb, fb = "dup chan", "String"           # a String channel of ship b, made here
        writer.insert(SHIPS[1], cb, at(5), fb, "aaa")
        writer.insert(SHIPS[1], cb, at(8), fb, "bbb")

        # inserts: a new minute, a new channel, a new ship
        writer.insert(SHIPS[0], ca, at(40), fa, 1.5)
        writer.insert(SHIPS[1], "new chan '%s'", at(41), "Integer", 7)
        writer.insert(NEW_SHIP, "x", at(1), "Boolean", True)
        streamed(config, spark, pg)

        # an update of a value
        assert writer.run("UPDATE {t} SET double_v = 0.1 + 0.2 WHERE ship_id = %s AND data_channel_id = %s AND "
                          "created_time = %s", (SHIPS[0], ca, at(3))) == 1
        streamed(config, spark, pg)

        # a deleted duplicate: the other reading stays
        writer.insert(SHIPS[1], cb, at(5), fb, "zzz greater")
        streamed(config, spark, pg)
        assert writer.run("DELETE FROM {t} WHERE ship_id = %s AND data_channel_id = %s AND created_time = %s "
                          "AND str_v = 'zzz greater'", (SHIPS[1], cb, at(5))) == 1
        streamed(config, spark, pg)

        # the only reading deleted: the cell goes; every reading of a timestamp deleted: the row goes
        writer.run("DELETE FROM {t} WHERE ship_id = %s AND data_channel_id = %s AND created_time = %s",
                   (SHIPS[0], ca, at(6)))
        writer.run("DELETE FROM {t} WHERE ship_id = %s AND created_time = %s", (SHIPS[1], at(7)))
        streamed(config, spark, pg)
        with pg.cursor() as cur:
            cur.execute(sql.SQL("SELECT table_name FROM {} WHERE ship_id = %s AND part = 1").format(
                sql.Identifier(CAT, "wide_tables")), (SHIPS[1],))
            cur.execute(sql.SQL("SELECT count(*) FROM {} WHERE created_time = {}").format(
                sql.Identifier(TGT, cur.fetchone()[0]), sql.Literal(at(7))))
            assert cur.fetchone()[0] == 0

        # one transaction mixing them across ships
        writer.insert(SHIPS[0], ca, at(42), fa, -0.0, commit=False)
        writer.run("UPDATE {t} SET str_v = 'changed' WHERE ship_id = %s AND data_channel_id = %s AND "
                   "created_time = %s", (SHIPS[1], cb, at(8)), commit=False)
        writer.run("DELETE FROM {t} WHERE ship_id = %s AND created_time = %s", (SHIPS[0], at(9)))
        streamed(config, spark, pg)

        # a 100 kB string, then its row updated in another column (its value arrives TOASTed)
        big = "é" * 50_000
        writer.insert(SHIPS[0], "big", at(10), "String", big)
        streamed(config, spark, pg)
        writer.run("UPDATE {t} SET long_v = 1 WHERE ship_id = %s AND data_channel_id = 'big'", (SHIPS[0],))
        streamed(config, spark, pg)

        # a long transaction committing after a later one
        other = Writer(pg_server)
        try:
            other.insert(SHIPS[0], ca, at(50), fa, 50.0, commit=False)
            writer.insert(SHIPS[1], cb, at(51), fb, "later, committed first")
            streamed(config, spark, pg)
            other.conn.commit()
            streamed(config, spark, pg)
        finally:
            other.conn.close()

        # a re-sent batch replacing another (more than 500 timestamps each way: staged merges)
        with writer.conn.cursor() as cur:
            cur.execute(sql.SQL("INSERT INTO {} (ship_id, data_channel_id, created_time, value_format, double_v) "
                                "SELECT %s, 'resent', %s + k * interval '1 second', 'Decimal', k FROM "
                                "generate_series(1, 600) k").format(narrow), (SHIPS[0], at(300)))
        writer.conn.commit()
        streamed(config, spark, pg)
        with writer.conn.cursor() as cur:
            cur.execute(sql.SQL("DELETE FROM {} WHERE data_channel_id = 'resent'").format(narrow))
            cur.execute(sql.SQL("INSERT INTO {} (ship_id, data_channel_id, created_time, value_format, double_v) "
                                "SELECT %s, 'resent', %s + k * interval '1 second', 'Decimal', -k FROM "
                                "generate_series(1, 1200) k").format(narrow), (SHIPS[0], at(300)))
        writer.conn.commit()
        streamed(config, spark, pg)

        # a bad row is rejected, not lost
        writer.insert(SHIPS[1], cb, at(52), "Float128", "?")
        summary = streamed(config, spark, pg)
        assert summary["rejected_rows"] == 1
        with pg.cursor() as cur:
            cur.execute(sql.SQL("SELECT count(*) FROM {} WHERE job = 'stream'").format(sql.Identifier(CAT, "rejects")))
            assert cur.fetchone()[0] == 1
            # the ledger has no gap, and the slot stands at the last batch's end
            cur.execute(sql.SQL("SELECT array_agg(batch_id ORDER BY batch_id) FROM {}").format(
                sql.Identifier(CAT, "stream_batches")))
            ids = cur.fetchone()[0]
            assert ids == list(range(len(ids))), ids
            cur.execute("SELECT confirmed_flush_lsn >= pg_current_wal_flush_lsn() - 100000 FROM pg_replication_slots "
                        "WHERE slot_name = %s", (slot,))
            assert cur.fetchone()[0]

        # a kill after a batch's ledger row and before the slot moved on: the slot is behind the
        # checkpoint (made here by putting back a copy of the slot taken before the batch); the
        # replayed transactions are skipped by their LSN, the new ones applied once
        with pg.cursor() as cur:
            cur.execute("SELECT pg_copy_logical_replication_slot(%s, 'widen_cdc_saved')", (slot,))
        writer.insert(SHIPS[0], ca, at(53), fa, 53.0)
        assert streamed(config, spark, pg)["narrow_rows"] == 1
        with pg.cursor() as cur:
            cur.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
            cur.execute("SELECT pg_copy_logical_replication_slot('widen_cdc_saved', %s)", (slot,))
            cur.execute("SELECT pg_drop_replication_slot('widen_cdc_saved')")
        writer.insert(SHIPS[1], cb, at(54), fb, "after the replay")
        replayed = streamed(config, spark, pg)
        assert replayed["narrow_rows"] == 1, replayed     # not 2: the first insert was not read again
    finally:
        writer.conn.close()

    # the source bounds the WAL a slot keeps (max_slot_wal_keep_size) and drops what a stopped
    # stream needed: the slot is invalidated, and the next start says so with what to repair
    with pg.cursor() as cur:
        cur.execute(sql.SQL("SELECT max(committed_at) FROM {} WHERE query_name = %s").format(
            sql.Identifier(CAT, "stream_batches")), ("cdc q",))
        last_batch = cur.fetchone()[0].astimezone(dt.UTC)
        try:
            cur.execute("ALTER SYSTEM SET max_slot_wal_keep_size = '1MB'")
            cur.execute("SELECT pg_reload_conf()")
            deadline = time.monotonic() + 60
            while slot_status(cur, slot) != "lost":
                assert time.monotonic() < deadline, slot_status(cur, slot)
                cur.execute("CREATE TEMP TABLE IF NOT EXISTS wal_filler (x text); "
                            "INSERT INTO wal_filler SELECT repeat('x', 1000) FROM generate_series(1, 3000)")
                cur.execute("SELECT pg_switch_wal(); CHECKPOINT")
        finally:
            cur.execute("ALTER SYSTEM RESET max_slot_wal_keep_size")
            cur.execute("SELECT pg_reload_conf()")
    with pytest.raises(BadInput, match=f"was invalidated.*after its last batch \\({last_batch:%Y-%m-%d %H:%M:%S}Z\\)"):
        stream.run(config, spark, once=True)

    dropped = stream.run(config, spark, drop_slot=True)
    assert dropped.exit_code == 0 and len(dropped.summary["dropped"]) == 2, dropped.report
    assert slot_row(pg, slot) is None


@pytest.mark.parametrize("version,refusal", [("9.6", "needs PostgreSQL 10 or newer"),
                                             ("11", "needs wal_level = logical")])
def test_refused_where_the_source_cannot(version, refusal, old_server, pg_server, spark, tmp_path):
    """An old server, or one without wal_level = logical: refused by name before anything is made."""
    server = old_server(version)
    conn = psycopg2.connect(host=server["host"], port=server["port"], user=server["user"], dbname=server["database"])
    conn.autocommit = True
    name = f"cdcold{version.replace('.', '')}"
    try:
        with conn.cursor() as cur:
            cur.execute(sql.SQL("DROP SCHEMA IF EXISTS {s} CASCADE; CREATE SCHEMA {s}").format(s=sql.Identifier(name)))
            cur.execute(sql.SQL("CREATE TABLE {} (ship_id text, data_channel_id text, created_time timestamptz, "
                                "value_format text, double_v double precision, long_v bigint, str_v text, "
                                "bool_v boolean)").format(sql.Identifier(name, "tbl_data_timeseries")))
        raw = raw_config(pg_server, name, source__mode="cdc", stream__checkpoint=str(tmp_path / "cp"))
        raw["source"].update(host=server["host"], port=server["port"], user=server["user"],
                             database=server["database"], schema=name)
        with pytest.raises(BadInput, match=refusal):
            stream.run(widen_config.parse(raw), spark, once=True)
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM pg_replication_slots")
            assert cur.fetchone()[0] == 0
    finally:
        conn.close()


def test_sigkill_while_the_application_inserts_updates_and_deletes(fresh_fleet, write_config, make_config, spark, pg,
                                                                    pg_server, tmp_path, no_slots_left):
    """The stream process SIGKILLed at three random points while a writer inserts, updates and
    deletes, and its replication connection cut every 1.5 s; restarted from its checkpoint each
    time. The end state equals the oracle, the ledger has no gap and counts every insert once."""
    name = "cdckill"
    src, cat = f"src_{name}", f"cat_{name}"
    fresh_fleet(name, ships=0).close()
    with pg.cursor() as cur:
        cur.execute(sql.SQL("ALTER TABLE {} REPLICA IDENTITY FULL").format(sql.Identifier(src, "tbl_data_timeseries")))
    overrides = {"source__mode": "cdc", "stream__checkpoint": str(tmp_path / "cp"), "stream__query_name": "cdc kill",
                 "stream__trigger_seconds": 0.3, "stream__max_rows_per_batch": 2000}
    config = make_config(name, **overrides)
    assert stream.run(config, spark, once=True).exit_code == 0          # the slot: the hand-off point
    config_path = write_config(name, **overrides)
    stop_writing, inserted = threading.Event(), []

    def application() -> None:
        rng = random.Random(15)
        writer = Writer(pg_server)
        try:
            minute = 0
            while not stop_writing.is_set():
                rows = [r for ship in KILL_SHIPS for r in nasty.minute(ship, minute, ["a", "b", "c", "d"])]
                with writer.conn.cursor() as cur:
                    nasty.insert(writer.conn, src, rows)
                    if minute > 2:        # a correction and a deletion of earlier readings, in one transaction
                        cur.execute(sql.SQL("UPDATE {t} SET double_v = double_v * 2 WHERE ctid = (SELECT ctid FROM {t} "
                                            "WHERE value_format = 'Decimal' OFFSET %s LIMIT 1)").format(
                            t=sql.Identifier(src, "tbl_data_timeseries")), (rng.randrange(8 * minute),))
                        cur.execute(sql.SQL("DELETE FROM {t} WHERE ctid = (SELECT ctid FROM {t} OFFSET %s LIMIT 1)")
                                    .format(t=sql.Identifier(src, "tbl_data_timeseries")), (rng.randrange(20 * minute),))
                writer.conn.commit()
                inserted.append(len(rows))
                minute += 1
                time.sleep(0.3)
        finally:
            writer.conn.close()

    cut = []

    def cut_replication() -> None:
        # the replication connection lost too (a network blip, a DBA's pg_terminate_backend): the
        # stream reconnects where its last committed batch ended
        conn = psycopg2.connect(host=pg_server["host"], port=pg_server["port"], user=pg_server["user"],
                                dbname=pg_server["database"])
        conn.autocommit = True
        try:
            while not stop_writing.wait(1.5):
                with conn.cursor() as cur:
                    cur.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE "
                                "backend_type = 'walsender' AND application_name = 'widen-cdc'")
                    cut.append(cur.fetchone()[0])
        finally:
            conn.close()

    threads = [threading.Thread(target=application), threading.Thread(target=cut_replication)]
    for thread in threads:
        thread.start()
    try:
        with pg.cursor() as cur:
            jobproc.kill_at_random_batches("stream", config_path, lambda: kill_batches(cur, cat))
    finally:
        stop_writing.set()
        for thread in threads:
            thread.join()
    assert sum(cut) >= 2, cut
    result = stream.run(config, spark, once=True)
    assert result.exit_code == 0, result.report
    with pg.cursor() as cur:
        oracle.assert_equal_to_oracle(cur, src, f"wide_{name}", cat)
        cur.execute(sql.SQL("SELECT batch_id, narrow_rows FROM {} ORDER BY 1").format(
            sql.Identifier(cat, "stream_batches")))
        ledger = cur.fetchall()
    assert [b for b, _ in ledger] == list(range(len(ledger)))       # no gap, no batch twice
    assert sum(n for _, n in ledger) == sum(inserted)                # every insert once


KILL_SHIPS = ["ship 1", "ship 'two' %"]


def kill_batches(cur, cat: str) -> int:
    cur.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(cat, "stream_batches")))
    return cur.fetchone()[0]
