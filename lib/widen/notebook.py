"""What the notebooks in ``notebooks/`` share: widgets with local fallbacks, the session, tables.

On Databricks the parameters are widgets (``dbutils.widgets``); anywhere else ``dbutils`` does not
exist and each parameter falls back to ``WIDEN_NB_<NAME>`` from the environment, then to its
default, so the same notebook runs locally (and in the tests) unchanged.
"""
from __future__ import annotations

import datetime as dt
import os
from typing import TYPE_CHECKING

from widen import config as widen_config

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure
    from psycopg2.extensions import connection
    from pyspark.sql import DataFrame, SparkSession


def _dbutils(namespace: dict):
    return namespace.get("dbutils")


def params(namespace: dict, **defaults: str) -> dict[str, str]:
    """Declare widgets ``name=default`` and return their values (text widgets, read as strings)."""
    dbutils = _dbutils(namespace)
    values = {}
    for name, default in defaults.items():
        if dbutils is not None:
            dbutils.widgets.text(name, default)
            values[name] = dbutils.widgets.get(name)
        else:
            values[name] = os.environ.get(f"WIDEN_NB_{name.upper()}", default)
    return values


def load_config(path: str) -> widen_config.Config:
    """The config, with the embedded server started and filled in when the config says so."""
    from widen.session import resolve_connections

    return resolve_connections(widen_config.load(path))


def spark_session(namespace: dict, config: widen_config.Config) -> SparkSession:
    """Databricks' (or the caller's) ``spark`` when there is one, else a session for the config."""
    from widen.session import get_spark

    return get_spark(config, namespace.get("spark"))


def ships(text: str) -> list[str] | None:
    """A widget's comma-separated ship list (empty: every ship)."""
    return [s.strip() for s in text.split(",") if s.strip()] or None


def moment(text: str) -> dt.datetime | None:
    if not text.strip():
        return None
    value = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def show(namespace: dict, frame: DataFrame) -> None:
    """``display`` on Databricks, a printed table elsewhere (a pandas or Spark DataFrame)."""
    display = namespace.get("display")
    if display is not None:
        display(frame)
        return
    if hasattr(frame, "toPandas"):
        frame = frame.toPandas()
    print(frame.to_string(index=False) if len(frame) else "(no rows)")


def status_grid(conn: connection, catalog_schema: str, run_id: str) -> pd.DataFrame:
    """Ship x day grid of a reconcile run: per cell the worst bucket status (0 match, 1 repaired,
    2 mismatch), as a pandas DataFrame (ships as rows, days as columns)."""
    import pandas as pd
    from psycopg2 import sql

    with conn.cursor() as cur:
        cur.execute(sql.SQL(
            "SELECT ship_id, date_trunc('day', bucket_start)::date AS day, max(CASE status WHEN 'match' THEN 0 "
            "WHEN 'repaired' THEN 1 ELSE 2 END) FROM {} WHERE run_id = %s GROUP BY 1, 2 ORDER BY 1, 2").format(
            sql.Identifier(catalog_schema, "reconcile_results")), (run_id,))
        rows = cur.fetchall()
    frame = pd.DataFrame(rows, columns=["ship_id", "day", "status"])
    if frame.empty:
        return frame
    return frame.pivot(index="ship_id", columns="day", values="status")


def heatmap(grid: pd.DataFrame, path: str | None = None) -> Figure:
    """Draw the status grid (green match, amber repaired, red mismatch); saved to ``path`` if given."""
    import matplotlib

    if os.environ.get("DISPLAY") is None and "DATABRICKS_RUNTIME_VERSION" not in os.environ:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    fig, ax = plt.subplots(figsize=(max(4, 0.5 * len(grid.columns) + 2), max(2, 0.35 * len(grid.index) + 1)))
    ax.imshow(grid.fillna(-1).to_numpy(), cmap=ListedColormap(["#dddddd", "#2e7d32", "#f9a825", "#c62828"]),
              vmin=-1, vmax=2, aspect="auto")
    ax.set_xticks(range(len(grid.columns)), [str(d) for d in grid.columns], rotation=45, ha="right")
    ax.set_yticks(range(len(grid.index)), list(grid.index))
    ax.set_title("reconcile: ship x day (green match, amber repaired, red mismatch)")
    fig.tight_layout()
    if path:
        fig.savefig(path)
    return fig
