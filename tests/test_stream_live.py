"""The stream job's query while a writer inserts minute batches: rows of any age, metrics.

A writer thread inserts minute batches for several ships while the query runs; a new channel and a
new ship appear mid-stream; rows far behind the newest created_time arrive last. In the exact mode
every row reaches its batch exactly once, however old (no watermark drops it): at the end every wide
table equals the SQL-pivot oracle, nothing is counted late, and stream_batches, the log and the
Prometheus metrics (HTTP and textfile) say so.
"""
from __future__ import annotations

import re
import socket
import threading
import urllib.request
from dataclasses import replace

import nasty
import oracle
import psycopg2
from psycopg2 import sql

from widen.jobs import stream

NAME = "live"
SRC, TGT, CAT = f"src_{NAME}", f"wide_{NAME}", f"cat_{NAME}"
CHANNELS = ["/dnv-v2/vis-3-4a/411.1/C101.31/meta/qty-temperature", "rpm", "mode", "alarm"]
SHIPS = ["ship A", "ship B", "ship 'C'"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def metric(text: str, name: str) -> float:
    match = re.search(rf'^{name}\{{query_name="live"\}} (\S+)$', text, re.M)
    assert match, f"{name} missing from:\n{text}"
    return float(match.group(1))


def insert_returning_ids(conn, data: list[tuple]) -> list[int]:
    with conn.cursor() as cur:
        ids = []
        for row in data:
            cur.execute(sql.SQL("INSERT INTO {} (ship_id, data_channel_id, created_time, value_format, double_v, "
                                "long_v, str_v, bool_v) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) RETURNING ingest_id")
                        .format(sql.Identifier(SRC, "tbl_data_timeseries")), row)
            ids.append(cur.fetchone()[0])
        return ids


def test_live_stream_with_late_rows(fresh_fleet, make_config, spark, pg, pg_server, tmp_path, caplog):
    fresh_fleet(NAME, ships=0, ingest_id=True).close()
    config = make_config(NAME, source__order_column="ingest_id")
    port = free_port()
    config = replace(config, stream=replace(
        config.stream, query_name="live", checkpoint=str(tmp_path / "cp"), start="earliest",
        trigger_seconds=0.2, watermark_seconds=120, metrics_port=port,
        metrics_textfile=str(tmp_path / "widen.prom")))
    caplog.set_level("INFO", logger="widen")
    run = stream.start(config, spark)

    def writer(minutes: range) -> None:
        conn = psycopg2.connect(host=pg_server["host"], port=pg_server["port"], user=pg_server["user"],
                                dbname=pg_server["database"])
        conn.autocommit = True
        try:
            for m in minutes:              # one transaction a minute, all ships
                nasty.insert(conn, SRC, [r for ship in SHIPS for r in nasty.minute(ship, m, CHANNELS[:3])])
        finally:
            conn.close()

    try:
        thread = threading.Thread(target=writer, args=(range(0, 6),))
        thread.start()
        run.query.processAllAvailable()           # batches run while the writer writes
        thread.join()
        run.query.processAllAvailable()
        # Mid-stream: a new channel for ship A, a brand-new ship, a row to reject.
        nasty.insert(pg, SRC, nasty.minute("ship A", 6, CHANNELS) + nasty.minute("new ship", 6, ["x"]) + [
            ("ship B", "rpm", nasty.at(360), "Float", 1.0, None, None, None)])
        thread = threading.Thread(target=writer, args=(range(7, 11),))
        thread.start()
        thread.join()
        run.query.processAllAvailable()           # newest created_time 10:45
        nasty.insert(pg, SRC, [
            ("ship B", "rpm", nasty.at(9 * 60 + 7), "Integer", None, 77, None, None),       # new timestamp
            ("ship A", "alarm", nasty.at(9 * 60), "Boolean", None, None, None, True)])  # new column cell
        beyond = insert_returning_ids(pg, [
            ("ship A", "rpm", nasty.at(3 * 60), "Integer", None, 999, None, None),           # would change a cell
            ("ship 'C'", "mode", nasty.at(60 + 7), "String", None, None, "too late", None)])  # new timestamp
        # A duplicate inside the watermark with a later id: the later row wins across batches.
        nasty.insert(pg, SRC, [("ship B", "mode", nasty.at(10 * 60), "String", None, None, "corrected", None)])
        run.query.processAllAvailable()
        assert run.listener.wait_for(run.query.lastProgress["batchId"])
        scraped = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    finally:
        run.query.stop()
    summary = run.finish()

    with pg.cursor() as cur:
        oracle.assert_equal_to_oracle(cur, SRC, TGT, CAT, order_column="ingest_id")
        # Rows hours behind the newest created_time arrive like the others (the later id wins).
        cur.execute(sql.SQL('SELECT rpm FROM {} WHERE created_time = %s').format(
            sql.Identifier(TGT, "tbl_data_timeseries_ship B")), (nasty.at(9 * 60 + 7),))
        assert cur.fetchone() == ("77",)
        cur.execute(sql.SQL('SELECT rpm FROM {} WHERE created_time = %s').format(
            sql.Identifier(TGT, "tbl_data_timeseries_ship A")), (nasty.at(180),))
        assert cur.fetchone() == ("999",)
        cur.execute(sql.SQL('SELECT mode FROM {} WHERE created_time = %s').format(
            sql.Identifier(TGT, "tbl_data_timeseries_ship B")), (nasty.at(600),))
        assert cur.fetchone() == ("corrected",)
        cur.execute(sql.SQL("SELECT batch_id, coalesce(late_rows, 0), narrow_rows FROM {} "
                            "WHERE query_name = 'live' ORDER BY 1").format(sql.Identifier(CAT, "stream_batches")))
        batches = cur.fetchall()
        cur.execute(sql.SQL("SELECT count(*) FROM {} WHERE reason = 'unknown value_format'").format(
            sql.Identifier(CAT, "rejects")))
        assert cur.fetchone() == (1,)
    assert [b[0] for b in batches] == list(range(len(batches)))        # no gap, no duplicate
    assert sum(b[1] for b in batches) == 0 == summary["late_rows"] and len(beyond) == 2
    assert summary["narrow_rows"] == sum(b[2] for b in batches)
    assert "rows were older than the watermark" not in caplog.text
    textfile = (tmp_path / "widen.prom").read_text()
    for text in (scraped, textfile):
        assert metric(text, "widen_stream_late_rows_total") == 0
    assert metric(textfile, "widen_stream_narrow_rows_total") == summary["narrow_rows"]
    assert metric(textfile, "widen_stream_batches_total") == len(batches)
    assert metric(textfile, "widen_stream_freshness_lag_seconds") > 0
