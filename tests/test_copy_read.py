"""How a backfill task reads the narrow table (``widen.pg.copy_read``, ``ChunkReader``): COPY … CSV
parsed by Arrow, against what psycopg2's own protocol returns for the same query.

- Generated texts (hypothesis: all of Unicode but NUL, with the characters CSV cares about made
  common) and NULLs come back exactly, the empty string apart from NULL.
- A server that sends nothing for ``socket_timeout`` seconds is given up with a clear error.
- A LATIN1 database: the reader asks for UTF-8, so its non-ASCII values arrive intact.
"""
from __future__ import annotations

import datetime as dt
import time

import psycopg2
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from psycopg2 import sql

from widen import errors
from widen.core import kernels, values
from widen.core.chunks import Chunk
from widen.pg import copy_read
from widen.sources.postgres import ChunkReader, PostgresSource

CSV_HOSTILE = st.sampled_from(['"', ",", "\n", "\r", "\r\n", "\\", "\\N", "NULL", "null", "NaN", "\t", " ", "'", "é"])
TEXTS = st.one_of(st.none(), st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
                                     max_size=12),
                  st.lists(CSV_HOSTILE, max_size=6).map("".join))


@settings(max_examples=40, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.tuples(TEXTS, st.one_of(st.none(), st.integers(-2**63, 2**63 - 1))), min_size=1, max_size=40))
def test_copy_csv_returns_what_the_server_holds(pg, rows):
    with pg.cursor() as cur:
        cur.execute("CREATE TEMP TABLE IF NOT EXISTS copy_probe (i int, t text, n bigint)")
        cur.execute("TRUNCATE copy_probe")
        cur.executemany("INSERT INTO copy_probe VALUES (%s, %s, %s)", [(i, t, n) for i, (t, n) in enumerate(rows)])
        query = "SELECT i, t, n FROM copy_probe ORDER BY i"
        cur.execute(query)
        expected = cur.fetchall()
        got = copy_read.copy_csv(cur, query, {"i": pa.int32(), "t": pa.string(), "n": pa.int64()}, socket_timeout=30)
    assert list(zip(*[got.column(c).to_pylist() for c in ("i", "t", "n")])) == expected


def test_a_silent_server_is_given_up_after_the_socket_timeout(pg_server):
    conn = psycopg2.connect(host=pg_server["host"], port=pg_server["port"], user=pg_server["user"],
                            dbname=pg_server["database"])
    began = time.monotonic()
    try:
        with conn.cursor() as cur, pytest.raises(copy_read.ReadTimeout, match="socket_timeout_seconds") as raised:
            copy_read.copy_csv(cur, "SELECT pg_sleep(60)::text", {"t": pa.string()}, socket_timeout=1.5)
    finally:
        conn.close()
    assert time.monotonic() - began < 15
    # the backfill's breaker counts it, also as Spark hands it over (a Python worker's traceback)
    assert errors.is_connection_failure(raised.value)
    wrapped = Exception("An exception was thrown from the Python worker.\nTraceback (most recent call last):\n"
                        f'  File "copy_read.py", line 1, in copy_csv\nwiden.pg.copy_read.ReadTimeout: {raised.value}\n')
    assert errors.is_connection_failure(wrapped)


def test_the_reader_asks_for_utf8_from_a_latin1_database(pg, make_config):
    with pg.cursor() as cur:
        cur.execute("DROP DATABASE IF EXISTS widen_latin1")
        cur.execute("CREATE DATABASE widen_latin1 ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0")
    cfg = make_config("latin1", source__database="widen_latin1")
    source = PostgresSource(cfg.source)
    names = ["température", "vélocité", "plain"]        # all in LATIN1
    t0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    with source.connect() as conn, conn.cursor() as cur:
        cur.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(cfg.source.schema)))
        cur.execute(sql.SQL("CREATE TABLE {} (ship_id text, data_channel_id text, created_time timestamptz, "
                            "value_format text, double_v float8, long_v bigint, str_v text, bool_v boolean)")
                    .format(source.table))
        cur.executemany(sql.SQL("INSERT INTO {} VALUES ('S1', %s, %s, 'String', NULL, NULL, %s, NULL)")
                        .format(source.table), [(n, t0 + dt.timedelta(seconds=i), f"«{n}» ±1°")
                                                for i, n in enumerate(names)])
        conn.commit()
        cur.execute("SET client_encoding = 'UTF8'")
        cur.execute(sql.SQL("SELECT data_channel_id, str_v FROM {} ORDER BY created_time").format(source.table))
        expected = cur.fetchall()
        chunk = Chunk("S1", t0, t0 + dt.timedelta(hours=1))
        query = source.chunk_select(conn, "S1", chunk.range_start, chunk.range_end, names[:2])
    try:
        reader = ChunkReader(cfg.source.connection.psycopg_params(), [(query, kernels.epoch_us(t0))], False, 30)
        got = pa.Table.from_batches(list(reader(iter([pa.record_batch([pa.array([0], pa.int64())], ["id"])]))))
        got = got.sort_by("created_us")
        assert got.column("channel").to_pylist() == [0, 1, values.UNKNOWN_CHANNEL]
        assert got.column("value").to_pylist() == [expected[0][1], expected[1][1], "plain"]
        assert got.column("created_us").to_pylist() == [kernels.epoch_us(t0) + i * 1_000_000 for i in range(3)]
    finally:
        with pg.cursor() as cur:
            cur.execute("DROP DATABASE widen_latin1 WITH (FORCE)")


def spark_wrapped(err: BaseException) -> Exception:
    """``err`` as the driver sees it when a Python worker raised it: a traceback in Spark's message."""
    return Exception("An exception was thrown from the Python worker. Please see the stack trace below.\n"
                     "Traceback (most recent call last):\n  File \"copy_read.py\", line 1, in copy_csv\n"
                     f"{type(err).__module__}.{type(err).__name__}: {err}\n")


def test_a_workers_lost_server_counts_for_the_breaker(pg_server, pg):
    """Real libpq failures, raised in a task, reach the driver as text: each still counts as a
    server that went away (``errors.is_connection_failure``), so an outage stops the backfill."""
    failures = []
    for host in ("widen-no-such-host.invalid", "127.0.0.1"):
        try:                # a name that does not resolve; a port nobody listens on
            psycopg2.connect(host=host, port=1, user="x", dbname="x", connect_timeout=3)
        except psycopg2.OperationalError as err:
            failures.append(err)
    conn = psycopg2.connect(host=pg_server["host"], port=pg_server["port"], user=pg_server["user"],
                            dbname=pg_server["database"])
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_backend_pid()")
            pid = cur.fetchone()[0]
            with pg.cursor() as killer:
                killer.execute("SELECT pg_terminate_backend(%s)", (pid,))
            with pytest.raises(psycopg2.Error) as raised:      # the server ended the session
                copy_read.copy_csv(cur, "SELECT 1::text", {"t": pa.string()})
            failures.append(raised.value)
    finally:
        conn.close()
    assert len(failures) == 3
    for err in failures:
        assert errors.is_connection_failure(spark_wrapped(err)), errors.describe(spark_wrapped(err))
