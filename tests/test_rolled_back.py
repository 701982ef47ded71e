"""A rolled-back ship is reported as rolled back, never checked, and turns nothing red: not the
fleet's reconcile (exit code, metrics, alerts), not ``status``, not the report page; rolling it
back again is a no-op that says so."""
from __future__ import annotations

import datetime as dt
import html
import json
import subprocess

import jobproc
import oracle
import pytest
import tools
from psycopg2 import sql
from test_metrics import RULES, samples

from widen.jobs import backfill, reconcile, report, rollback, status
from widen.sources import generate

NAME = "rolledback"
SRC, TGT, CAT = f"src_{NAME}", f"wide_{NAME}", f"cat_{NAME}"


@pytest.fixture(scope="module")
def fleet(fresh_fleet, make_config, spark, tmp_path_factory):
    textfiles = tmp_path_factory.mktemp("textfile")
    config = make_config(NAME, metrics__textfile_dir=str(textfiles), metrics__instance=NAME)
    # readings of the last hours: the report's heatmap shows the days up to today
    start = dt.datetime.now(dt.UTC).replace(minute=0, second=0, microsecond=0) - dt.timedelta(hours=3)
    conn = fresh_fleet(NAME, ships=2, channels=3, hours=2, seed=29, start=start)
    gone, kept = generate.ship_ids(2)
    assert backfill.run(config, spark).exit_code == 0
    first = reconcile.run(config, spark)            # clean: results and lifecycle facts for both ships
    assert first.exit_code == 0, first.report
    assert rollback.run(config, ships=[gone]).exit_code == 0
    yield {"config": config, "gone": gone, "kept": kept, "textfiles": textfiles}
    conn.close()


def test_fleet_reconcile_reports_the_rolled_back_ship_and_does_not_check_it(fleet, spark, pg):
    gone, kept = fleet["gone"], fleet["kept"]
    result = reconcile.run(fleet["config"], spark)
    assert result.exit_code == 0, result.report
    assert result.summary["ships_rolled_back"] == [gone]
    assert result.summary["ships_mismatched"] == []
    assert result.summary["cells_missing"] == 0
    assert f"{gone}: rolled back: not checked" in result.report
    assert f"{kept}: matches" in result.report
    with pg.cursor() as cur:
        # the kept ship really is equal to the source (the oracle, not widen's checksums)
        assert oracle.differences(cur, SRC, TGT, CAT, kept) == {f"tbl_data_timeseries_{kept}": (0, 0)}
        cur.execute(sql.SQL("SELECT count(*) FROM {} WHERE ship_id = %s AND run_id = %s").format(
            sql.Identifier(CAT, "reconcile_results")), (gone, result.summary["run_id"]))
        assert cur.fetchone()[0] == 0                # nothing recorded for a ship it did not check
    # a textfile's series name their selection (the fleet's: all)
    found = samples((fleet["textfiles"] / f"widen_reconcile_all_{NAME}.prom").read_text(), selection="all")
    assert found[("widen_reconcile_buckets_left", (("ship", gone),))] == 0
    assert found[("widen_reconcile_ship_unchecked", (("ship", gone),))] == 0
    assert found[("widen_reconcile_ship_rolled_back", (("ship", gone),))] == 1
    assert found[("widen_reconcile_ship_rolled_back", (("ship", kept),))] == 0


def test_repair_leaves_the_rolled_back_ship_alone_and_says_so(fleet, spark, caplog):
    gone = fleet["gone"]
    with caplog.at_level("INFO", logger="widen.jobs.reconcile"):
        result = reconcile.run(fleet["config"], spark, repair=True)
    assert result.exit_code == 0, result.report
    assert result.summary["repaired_ships"] == []
    assert result.summary["ships_rolled_back"] == [gone]
    assert not [r for r in caplog.records if "repaired" in r.getMessage()]


def test_reconcile_of_only_the_rolled_back_ship(fleet, spark):
    gone = fleet["gone"]
    result = reconcile.run(fleet["config"], spark, ships=[gone])
    assert result.exit_code == 0, result.report
    assert result.summary["ships_rolled_back"] == [gone]
    assert result.summary["ships"] == 0 and result.summary["buckets"] == 0
    assert f"{gone}: rolled back: not checked" in result.report


def test_status_gives_no_advice_for_the_rolled_back_ship(fleet):
    gone = fleet["gone"]
    result = status.run(fleet["config"])
    assert result.exit_code == 0, result.report
    assert result.summary["attention"] == []
    [row] = [r for r in result.summary["ship_status"] if r["ship_id"] == gone]
    assert row["state"] == "rolled_back"
    line = next(line for line in result.report.splitlines() if line.startswith(gone))
    assert "rolled back" in line and "reconcile" not in line.split("rolled_back", 1)[1]


def test_a_second_rollback_says_it_is_already_rolled_back(fleet):
    gone = fleet["gone"]
    for dry_run in (True, False):
        result = rollback.run(fleet["config"], ships=[gone], dry_run=dry_run)
        assert result.exit_code == 0, result.report
        assert result.summary["already_rolled_back"] == [gone]
        assert result.summary["ships"] == 0
        assert f"{gone!r} is already rolled back" in result.report


def test_rollback_and_status_as_processes_exit_0_for_the_rolled_back_ship(fleet, write_config):
    """As a scheduler runs them: the exit code and the one-line JSON summary on stdout."""
    gone = fleet["gone"]
    path = write_config(NAME)
    for job, args in (("rollback", ["--ships", gone]), ("status", [])):
        proc = jobproc.start(job, path, *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        summary = json.loads(out.strip().splitlines()[-1])
        assert summary["status"] == "ok", summary
        if job == "rollback":
            assert summary["already_rolled_back"] == [gone] and f"{gone!r} is already rolled back" in err
        else:
            assert summary["attention"] == [] and summary["states"]["rolled_back"] == 1


def test_the_report_page_shows_the_ship_rolled_back(fleet, tmp_path):
    gone, kept = fleet["gone"], fleet["kept"]
    out = tmp_path / "widen.html"
    assert report.run(fleet["config"], out=str(out)).exit_code == 0
    page = out.read_text()
    row = page.split(f'<tr data-ship="{html.escape(gone)}">')[1].split("</tr>")[0]
    assert "rolled_back" in row and "mismatch" not in row
    heat = page.split("id='heatmap'")[1].split("</table>")[0]
    gone_row = heat.split(f'<tr data-ship="{html.escape(gone)}"')[1].split("</tr>")[0]
    assert "rolled back" in gone_row and "match" not in gone_row
    kept_row = heat.split(f'<tr data-ship="{html.escape(kept)}"')[1].split("</tr>")[0]
    assert 'class="match"' in kept_row


def test_alert_rules_ignore_a_rolled_back_ship(tmp_path):
    """A Pushgateway group of an older selection still says the ship differs; the fleet's newer
    run says it is rolled back: no alert (conf/prometheus/widen-alerts.test.yml shows the rules fire
    for a ship that is not)."""
    promtool = tools.require("promtool")
    case = tmp_path / "rolled_back.test.yml"
    case.write_text(f"""rule_files: [{RULES}]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'widen_reconcile_buckets_left{{instance="etl1", selection="ships-1", ship="C"}}'
        values: '4x5'
      - series: 'widen_reconcile_ship_unchecked{{instance="etl1", selection="ships-1", ship="C"}}'
        values: '1x5'
      - series: 'widen_reconcile_ship_rolled_back{{instance="etl1", selection="all", ship="C"}}'
        values: '1x5'
    alert_rule_test:
      - eval_time: 2m
        alertname: WidenReconcileMismatchesLeft
        exp_alerts: []
      - eval_time: 2m
        alertname: WidenReconcileShipUnchecked
        exp_alerts: []
""")
    run = subprocess.run([promtool, "test", "rules", str(case)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
