# Databricks notebook source
# MAGIC %md
# MAGIC # widen — 1. Plan
# MAGIC Per ship: narrow rows, time span, channels and formats, duplicates, rejects, and where each channel
# MAGIC will live (table / part / column). Writes the layout to the catalog (`wide_tables`, `channel_columns`).
# MAGIC Parameters are widgets; run locally, they fall back to `WIDEN_NB_<NAME>` or their defaults.

# COMMAND ----------

from widen import notebook
from widen.jobs import plan

p = notebook.params(globals(), config="conf/local.yaml", ships="")
config = notebook.load_config(p["config"])
spark = notebook.spark_session(globals(), config)

# COMMAND ----------

result = plan.run(config, spark, ships=notebook.ships(p["ships"]))
print(result.report)

# COMMAND ----------

# MAGIC %md One row per ship, as the JSON summary carries it.

# COMMAND ----------

import pandas as pd  # noqa: E402

ship_plan = pd.DataFrame(result.summary["plan"])
notebook.show(globals(), ship_plan)
assert result.exit_code == 0, result.summary
