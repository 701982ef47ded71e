# Databricks notebook source
# MAGIC %md
# MAGIC # widen — 3. Live tail
# MAGIC Starts the stream query (start / stop below), then shows what its `StreamingQueryListener`
# MAGIC reported per micro-batch: rows, ships, duration, late rows, freshness lag. On a cluster leave it
# MAGIC running and stop it with the last cell; `run_seconds` = 0 only drains what is there.

# COMMAND ----------

import time

import pandas as pd

from widen import notebook
from widen.jobs import stream

p = notebook.params(globals(), config="conf/local.yaml", run_seconds="0")
config = notebook.load_config(p["config"])
spark = notebook.spark_session(globals(), config)

# COMMAND ----------

# Start. (The job's own entry point runs until SIGTERM; here the query is kept in the notebook.)
run = stream.start(config, spark, once=float(p["run_seconds"]) <= 0)

# COMMAND ----------

if float(p["run_seconds"]) > 0:
    time.sleep(float(p["run_seconds"]))
else:
    run.query.awaitTermination()
notebook.show(globals(), pd.DataFrame(run.listener.reports))

# COMMAND ----------

# Stop (after the current batch) and summarise.
if run.query.isActive:
    run.query.stop()
summary = run.finish()
print(summary)
