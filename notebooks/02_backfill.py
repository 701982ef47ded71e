# Databricks notebook source
# MAGIC %md
# MAGIC # widen — 2. Backfill
# MAGIC Migrates the history into the wide tables chunk by chunk (ship × time range), exactly once:
# MAGIC done chunks are skipped on a rerun. `end` is the hand-off cutoff when the stream runs in
# MAGIC created_time mode (see docs/operating.md, "Hand-off").

# COMMAND ----------

from widen import notebook
from widen.jobs import backfill

p = notebook.params(globals(), config="conf/local.yaml", ships="", start="", end="")
config = notebook.load_config(p["config"])
spark = notebook.spark_session(globals(), config)

# COMMAND ----------

result = backfill.run(config, spark, ships=notebook.ships(p["ships"]), start=notebook.moment(p["start"]),
                      end=notebook.moment(p["end"]))
print(result.report or "every chunk done")

# COMMAND ----------

import pandas as pd  # noqa: E402

summary = {k: v for k, v in result.summary.items() if not isinstance(v, (dict, list))}
notebook.show(globals(), pd.DataFrame([summary]))
assert result.exit_code == 0, result.summary
