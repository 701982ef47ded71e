"""Every job's Prometheus metrics, read back from the textfile and from a real Pushgateway after
real runs, checked against the ledgers (backfill_chunks, reconcile_results) and the source; the
alert rules name only metrics widen exports; ``--log-format json`` lines are JSON."""
from __future__ import annotations

import json
import re
import subprocess
import urllib.request
from dataclasses import replace
from pathlib import Path

import pytest
import tools
import yaml
from prometheus_client.parser import text_string_to_metric_families
from psycopg2 import sql

from widen import cli, log, metrics
from widen.jobs import backfill, reconcile, status, stream
from widen.sources import generate

NAME = "metrics"
SRC, TGT, CAT = f"src_{NAME}", f"wide_{NAME}", f"cat_{NAME}"
RULES = Path(__file__).resolve().parents[1] / "conf" / "prometheus" / "widen-alerts.yml"


def samples(text: str, **match: str) -> dict[tuple[str, tuple], float]:
    """(name, sorted labels) -> value of the exposition ``text``, keeping samples whose labels
    ``match`` (those labels removed); ``_created`` samples left out."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = dict(s.labels)
            if s.name.endswith("_created") or any(labels.pop(k, None) != v for k, v in match.items()):
                continue
            out[(s.name, tuple(sorted(labels.items())))] = s.value
    return out


def by_ship(found: dict, name: str, **labels: str) -> dict[str, float]:
    out = {}
    for (n, lab), value in found.items():
        lab = dict(lab)
        if n == name and all(lab.get(k) == v for k, v in labels.items()):
            out[lab["ship"]] = value
    return out


def one(found: dict, name: str) -> float:
    [value] = [v for (n, _), v in found.items() if n == name]
    return value


def chunk_ledger(cur) -> dict[str, tuple]:
    cur.execute(sql.SQL(
        "SELECT ship_id, count(*), count(*) FILTER (WHERE status = 'done'), "
        "count(*) FILTER (WHERE status = 'failed'), coalesce(sum(narrow_rows) FILTER (WHERE status = 'done'), 0), "
        "coalesce(sum(wide_rows) FILTER (WHERE status = 'done'), 0) FROM {} GROUP BY 1").format(
            sql.Identifier(CAT, "backfill_chunks")))
    return {r[0]: tuple(int(x) for x in r[1:]) for r in cur.fetchall()}


def pushed(gateway: str, job: str, instance: str, selection: str = "all") -> dict:
    text = urllib.request.urlopen(f"http://{gateway}/metrics", timeout=10).read().decode()
    return {k: v for k, v in samples(text, job=f"widen_{job}", instance=instance, selection=selection).items()
            if k[0].startswith(f"widen_{job}_")}


def test_backfill_and_reconcile_metrics_equal_the_ledgers(fresh_fleet, make_config, spark, pg, tmp_path,
                                                          write_config, capsys):
    textfiles = tmp_path / "textfile"
    settings = {"backfill__chunk_hours": 1, "metrics__textfile_dir": str(textfiles), "metrics__instance": NAME}
    fresh_fleet(NAME, ships=3, channels=4, hours=3, seed=11).close()
    broken, *healthy = generate.ship_ids(3)
    with pg.cursor() as cur:
        # Something that is not a table holds the broken ship's table name: its chunks fail.
        cur.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(TGT)))
        cur.execute(sql.SQL("CREATE VIEW {} AS SELECT now() AS created_time").format(
            sql.Identifier(TGT, f"tbl_data_timeseries_{broken}")))
    with tools.pushgateway() as gateway:
        config = make_config(NAME, **settings, metrics__pushgateway=gateway)
        first = backfill.run(config, spark)
        assert first.exit_code == 1 and first.summary["chunks_failed"] > 0
        text = (textfiles / f"widen_backfill_all_{NAME}.prom").read_text()
        found = samples(text, selection="all")
        with pg.cursor() as cur:
            ledger = chunk_ledger(cur)
            cur.execute(sql.SQL("SELECT ship_id, count(*) FROM {} GROUP BY 1").format(
                sql.Identifier(SRC, "tbl_data_timeseries")))
            source_rows = dict(cur.fetchall())
        assert by_ship(found, "widen_backfill_chunks_planned") == {s: v[0] for s, v in ledger.items()}
        assert by_ship(found, "widen_backfill_chunks_done") == {s: v[1] for s, v in ledger.items()}
        assert by_ship(found, "widen_backfill_chunks_failed_total") == {s: v[2] for s, v in ledger.items()}
        assert by_ship(found, "widen_backfill_narrow_rows_total") == {s: v[3] for s, v in ledger.items()}
        assert by_ship(found, "widen_backfill_wide_rows_total") == {s: v[4] for s, v in ledger.items()}
        assert ledger[broken][1] == 0 and ledger[broken][2] > 0
        for ship in healthy:
            assert by_ship(found, "widen_backfill_narrow_rows_total")[ship] == source_rows[ship]
        assert one(found, "widen_backfill_exit_code") == 1 and one(found, "widen_backfill_running") == 0
        assert one(found, "widen_backfill_start_timestamp_seconds") <= one(found, "widen_backfill_end_timestamp_seconds")
        assert one(found, "widen_backfill_progress_ratio") == pytest.approx(
            sum(v[3] for v in ledger.values()) / sum(source_rows.values()), abs=0.01)
        # The Pushgateway holds the same figures, grouped by job and instance.
        assert pushed(gateway, "backfill", NAME) == {k: v for k, v in found.items()
                                                     if k[0].startswith("widen_backfill_")}

        # The second run, through the CLI with JSON log lines: only the broken ship's chunks are left.
        with pg.cursor() as cur:
            cur.execute(sql.SQL("DROP VIEW {}").format(sql.Identifier(TGT, f"tbl_data_timeseries_{broken}")))
        path = write_config(NAME, **settings, metrics__pushgateway=gateway)
        capsys.readouterr()
        try:
            assert cli.main(["backfill", "--config", str(path), "--log-format", "json"]) == 0
        finally:
            log.setup(False, "text")
        err = capsys.readouterr().err
        lines = [json.loads(line) for line in err.splitlines() if line.strip()]
        assert lines and all({"time", "level", "job", "message"} <= set(line) for line in lines)
        assert any(line["job"] == "backfill" and "chunks" in line["message"] for line in lines)
        found = samples((textfiles / f"widen_backfill_all_{NAME}.prom").read_text(), selection="all")
        with pg.cursor() as cur:
            after = chunk_ledger(cur)
        assert by_ship(found, "widen_backfill_chunks_done") == {s: v[0] for s, v in after.items()}
        assert by_ship(found, "widen_backfill_chunks_failed_total") == dict.fromkeys(after, 0)
        assert by_ship(found, "widen_backfill_narrow_rows_total") == {
            s: v[3] - ledger[s][3] for s, v in after.items()}
        assert one(found, "widen_backfill_exit_code") == 0
        assert pushed(gateway, "backfill", NAME)[("widen_backfill_exit_code", ())] == 0

        # Reconcile: one different and one missing cell in one ship, then --repair.
        ship = healthy[0]
        with pg.cursor() as cur:
            cur.execute(sql.SQL("SELECT table_name, column_name, value_format FROM {} WHERE ship_id = %s "
                                "ORDER BY data_channel_id").format(sql.Identifier(CAT, "channel_columns")), (ship,))
            (table, col_a, _), (table_b, col_b, _), *_ = cur.fetchall()
            assert table == table_b
            wide = sql.Identifier(TGT, table)
            cur.execute(sql.SQL("SELECT min(created_time), max(created_time) FROM {} WHERE {} IS NOT NULL "
                                "AND {} IS NOT NULL").format(wide, sql.Identifier(col_a), sql.Identifier(col_b)))
            early, late = cur.fetchone()
            cur.execute(sql.SQL("UPDATE {} SET {} = 'not the source''s value' WHERE created_time = %s").format(
                wide, sql.Identifier(col_a)), (early,))
            cur.execute(sql.SQL("UPDATE {} SET {} = NULL WHERE created_time = %s").format(
                wide, sql.Identifier(col_b)), (late,))
        checked = reconcile.run(config, spark)
        assert checked.exit_code == 1
        found = samples((textfiles / f"widen_reconcile_all_{NAME}.prom").read_text(), selection="all")
        results = reconcile_ledger(pg, checked.summary["run_id"])
        assert by_ship(found, "widen_reconcile_buckets_checked_total") == {s: r["all"] for s, r in results.items()}
        assert by_ship(found, "widen_reconcile_buckets_left") == {s: r["mismatch"] for s, r in results.items()}
        assert by_ship(found, "widen_reconcile_buckets_mismatched_total") == {
            s: r["mismatch"] for s, r in results.items()}
        assert by_ship(found, "widen_reconcile_buckets_left")[ship] >= 1
        others = dict.fromkeys(results, 0)
        assert by_ship(found, "widen_reconcile_cells_total", kind="different") == {**others, ship: 1}
        assert by_ship(found, "widen_reconcile_cells_total", kind="missing") == {**others, ship: 1}
        assert by_ship(found, "widen_reconcile_cells_total", kind="extra") == others
        assert one(found, "widen_reconcile_exit_code") == 1
        assert pushed(gateway, "reconcile", NAME) == {k: v for k, v in found.items()
                                                      if k[0].startswith("widen_reconcile_")}
        # A run over other ships is a group of its own: the full run's figures stay.
        other = healthy[1]
        assert reconcile.run(config, spark, ships=[other]).exit_code == 0
        assert by_ship(pushed(gateway, "reconcile", NAME), "widen_reconcile_buckets_left")[ship] >= 1
        assert by_ship(pushed(gateway, "reconcile", NAME, metrics.selection([other])),
                       "widen_reconcile_buckets_left") == {other: 0}
        repaired = reconcile.run(config, spark, repair=True)
        assert repaired.exit_code == 0
        found = samples((textfiles / f"widen_reconcile_all_{NAME}.prom").read_text(), selection="all")
        results = reconcile_ledger(pg, repaired.summary["run_id"])
        assert by_ship(found, "widen_reconcile_buckets_repaired_total") == {
            s: r["repaired"] for s, r in results.items()}
        assert by_ship(found, "widen_reconcile_buckets_repaired_total")[ship] >= 1
        assert by_ship(found, "widen_reconcile_buckets_left") == others
        assert one(found, "widen_reconcile_exit_code") == 0

        # The stream's own metrics are in its final push (after the query stopped).
        streamed = stream.run(replace(config, stream=replace(
            config.stream, start="earliest", checkpoint=str(tmp_path / "cp"), query_name="metrics-q")), spark,
            once=True)
        assert streamed.exit_code == 0 and streamed.summary["narrow_rows"] > 0
        final = pushed(gateway, "stream", NAME)
        assert final[("widen_stream_exit_code", ())] == 0 and final[("widen_stream_running", ())] == 0
        assert final[("widen_stream_narrow_rows_total", (("query_name", "metrics-q"),))] == \
            streamed.summary["narrow_rows"]
        assert ("widen_stream_last_batch_timestamp_seconds", (("query_name", "metrics-q"),)) in final

    # A Pushgateway that does not answer is a warning, not a failed job; the textfile is still written.
    (textfiles / f"widen_status_all_{NAME}.prom").unlink(missing_ok=True)
    down = make_config(NAME, **settings, metrics__pushgateway=f"127.0.0.1:{tools.free_port()}")
    checked = status.run(down)     # exit 1: the stream above wrote 2026-01-01 readings, a large lag
    assert one(samples((textfiles / f"widen_status_all_{NAME}.prom").read_text(), selection="all"),
               "widen_status_exit_code") == checked.exit_code == 1
    assert "did not take the status's metrics" in capsys.readouterr().err


def reconcile_ledger(pg, run_id: str) -> dict[str, dict[str, int]]:
    with pg.cursor() as cur:
        cur.execute(sql.SQL("SELECT ship_id, count(*), count(*) FILTER (WHERE status = 'mismatch'), "
                            "count(*) FILTER (WHERE status = 'repaired') FROM {} WHERE run_id = %s GROUP BY 1").format(
            sql.Identifier(CAT, "reconcile_results")), (run_id,))
        return {s: {"all": a, "mismatch": m, "repaired": r} for s, a, m, r in cur.fetchall()}


def exported_names() -> set[str]:
    """Every metric name widen's jobs export (a run's registries, without running the jobs)."""
    from widen.jobs.backfill import BackfillMetrics
    from widen.jobs.reconcile import ShipReport, _measure
    from widen.streaming.metrics import StreamMetrics

    names = set()
    for job in ("backfill", "reconcile", "stream", "rollback", "cutover", "status"):
        m = metrics.JobMetrics(job, None)
        m.finish(0)
        names |= {s.name for family in m.registry.collect() for s in family.samples}
    m = metrics.JobMetrics("backfill", None)
    BackfillMetrics(m, {"s": []}, set())
    names |= {s.name for family in m.registry.collect() for s in family.samples}
    token = metrics.open_run("reconcile", None)
    try:
        _measure({"s": ShipReport("s")})
        names |= {s.name for family in metrics.current().registry.collect() for s in family.samples}
    finally:
        metrics.close_run(token, 0)
    stream = StreamMetrics("q")
    names |= {family.name + ("_total" if family.type == "counter" else "") for family in stream.registry.collect()}
    stream.close()
    return names


def test_alert_rules_name_only_metrics_widen_exports():
    rules = yaml.safe_load(RULES.read_text())
    used = set()
    for group in rules["groups"]:
        for rule in group["rules"]:
            assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
            assert rule["annotations"]["runbook"].strip(), rule["alert"]
            used |= set(re.findall(r"\bwiden_[a-z0-9_]*[a-z0-9]\b(?![\w(])", rule["expr"]))
    used -= {"widen_job"}                   # the label WidenJobFailed adds, not a metric
    exported = exported_names()
    assert used and used <= exported, sorted(used - exported)
    # and the exit-code pattern of WidenJobFailed matches every job's exit code
    assert {n for n in exported if re.fullmatch(r"widen_[a-z]+_exit_code", n)} >= {
        "widen_backfill_exit_code", "widen_reconcile_exit_code", "widen_stream_exit_code"}


def test_alert_rules_pass_promtool_and_fire_when_their_runbooks_say():
    """promtool checks the rules and runs their unit tests, which pin when each alert fires
    (WidenStreamNoMicroBatch 15 min after the last batch, not 20; WidenBackfillStalled after 30)."""
    promtool = tools.require("promtool")
    for args in (["check", "rules", RULES.name], ["test", "rules", "widen-alerts.test.yml"]):
        done = subprocess.run([promtool, *args], cwd=RULES.parent, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr


def test_textfiles_of_two_selections_hold_distinct_series(fresh_fleet, write_config, tmp_path, capsys):
    """Two runs of one job over different --ships leave one textfile each whose series differ by
    their ``selection`` label (as their Pushgateway groups do), so node_exporter, which merges every
    *.prom file of its directory and refuses a series met twice, keeps both runs' figures."""
    name = "metrics_sel"
    fresh_fleet(name, ships=2, channels=2, hours=1, seed=5).close()
    first, second = generate.ship_ids(2)
    textfiles = tmp_path / "textfile"
    path = write_config(name, metrics__textfile_dir=str(textfiles))
    for ship in (first, second):
        assert cli.main(["plan", "--config", str(path), "--ships", ship]) == 0
    capsys.readouterr()
    files = sorted(textfiles.glob("*.prom"))
    assert [f.name for f in files] == sorted(f"widen_plan_{metrics.selection([s])}.prom" for s in (first, second))

    # node_exporter's merge: every family's samples from every file; a series twice is an error.
    series: dict[tuple[str, tuple], str] = {}
    kinds: dict[str, tuple[str, str]] = {}
    selections = {}
    for file in files:
        for family in text_string_to_metric_families(file.read_text()):
            assert kinds.setdefault(family.name, (family.type, family.documentation)) == \
                (family.type, family.documentation), family.name
            for s in family.samples:
                key = (s.name, tuple(sorted(s.labels.items())))
                assert key not in series, f"{key} in {series.get(key)} and {file.name}"
                series[key] = file.name
                selections.setdefault(file.name, set()).add(s.labels.get("selection"))
    assert selections == {f"widen_plan_{metrics.selection([s])}.prom": {metrics.selection([s])}
                          for s in (first, second)}
    # the same series in both, but for the selection label
    per_file = {file: {(n, tuple(kv for kv in labels if kv[0] != "selection"))
                       for (n, labels), f in series.items() if f == file} for file in selections}
    one_file, other_file = per_file.values()
    assert one_file == other_file and ("widen_plan_exit_code", ()) in one_file
