"""Each notebook in notebooks/ runs locally (no dbutils: widgets fall back to WIDEN_NB_*), in order,
against the embedded server; the wide tables they leave equal the oracle."""
from __future__ import annotations

import runpy
from pathlib import Path

import nasty
import oracle
from psycopg2 import sql

NAME = "nb"
SRC, TGT, CAT = f"src_{NAME}", f"wide_{NAME}", f"cat_{NAME}"
NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def run_notebook(name: str, spark) -> dict:
    text = (NOTEBOOKS / name).read_text()
    assert text.startswith("# Databricks notebook source\n") and "# COMMAND ----------" in text
    return runpy.run_path(str(NOTEBOOKS / name), init_globals={"spark": spark})


def test_notebooks_in_order(fresh_fleet, write_config, spark, pg, tmp_path, monkeypatch):
    fresh_fleet(NAME, ships=2, channels=5, hours=2, seed=8).close()
    config_path = write_config(NAME, stream__checkpoint=str(tmp_path / "cp"), stream__start="earliest",
                               stream__query_name="nb")
    monkeypatch.setenv("WIDEN_NB_CONFIG", str(config_path))
    monkeypatch.setenv("WIDEN_NB_HEATMAP_PNG", str(tmp_path / "grid.png"))

    planned = run_notebook("01_plan.py", spark)
    assert len(planned["ship_plan"]) == 2
    backfilled = run_notebook("02_backfill.py", spark)
    assert backfilled["result"].summary["chunks_done"] > 0
    with pg.cursor() as cur:
        oracle.assert_equal_to_oracle(cur, SRC, TGT, CAT)

    # New readings (a new ship among them) for the stream notebook to take.
    nasty.insert(pg, SRC, nasty.minute("ship from the stream", 0, ["rpm", "mode"]))
    streamed = run_notebook("03_stream.py", spark)
    assert streamed["summary"]["narrow_rows"] > 0 and len(streamed["run"].listener.reports) > 0
    with pg.cursor() as cur:
        oracle.assert_equal_to_oracle(cur, SRC, TGT, CAT)

    reconciled = run_notebook("04_reconcile.py", spark)
    assert reconciled["result"].exit_code == 0
    grid = reconciled["grid"]
    assert set(grid.index) == oracle.valid_ships(pg.cursor(), SRC) and "ship from the stream" in grid.index
    assert (grid.fillna(0) == 0).all().all()
    assert (tmp_path / "grid.png").stat().st_size > 1000
    with pg.cursor() as cur:
        cur.execute(sql.SQL("SELECT count(*) FROM {} WHERE run_id = %s").format(
            sql.Identifier(CAT, "reconcile_results")), (reconciled["result"].summary["run_id"],))
        assert cur.fetchone()[0] > 0
