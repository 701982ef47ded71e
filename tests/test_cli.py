"""The command line: exit codes and the JSON summary as the last line."""
import json

import pytest
import yaml

from widen import cli


def last_json(capsys) -> dict:
    out = capsys.readouterr().out.strip().splitlines()
    return json.loads(out[-1])


def test_missing_config_is_bad_input(capsys, tmp_path):
    assert cli.main(["backfill", "--config", str(tmp_path / "nope.yaml")]) == 2
    summary = last_json(capsys)
    assert summary["status"] == "bad_input" and "nope.yaml" in summary["error"]


def test_bad_value_names_the_key(capsys, tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"backfill": {"parallel_chunks": 0}}))
    assert cli.main(["plan", "--config", str(path)]) == 2
    assert "backfill.parallel_chunks" in last_json(capsys)["error"]


def test_bad_arguments_are_bad_input(capsys):
    assert cli.main(["backfill", "--start", "yesterday"]) == 2
    assert "yesterday" in last_json(capsys)["error"]
    assert cli.main(["explode"]) == 2
    last_json(capsys)


@pytest.mark.parametrize("text", ["2026-01-01T00:00:00Z", "2026-01-01 00:00:00+00:00", "2026-01-01"])
def test_times_without_zone_are_utc(text):
    value = cli.parse_time(text)
    assert value.utcoffset().total_seconds() == 0 and value.year == 2026


def test_rollback_refuses_to_run_without_ships(capsys, make_config, tmp_path, pg_server):
    from conftest import raw_config

    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw_config(pg_server, "cli")))
    assert cli.main(["rollback", "--config", str(path)]) == 2
    assert "--ships" in last_json(capsys)["error"]


@pytest.mark.parametrize("job", ["plan", "backfill", "reconcile"])
def test_missing_narrow_table_is_bad_input(capsys, write_config, job):
    path = write_config("nowhere", source__table="no_such_table")
    assert cli.main([job, "--config", str(path)]) == 2
    summary = last_json(capsys)
    assert summary["status"] == "bad_input" and "src_nowhere.no_such_table does not exist" in summary["error"]
