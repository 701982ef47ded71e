# Databricks notebook source
# MAGIC %md
# MAGIC # widen — 4. Reconcile
# MAGIC Proves narrow == wide per ship × hour with checksums computed in both databases; lists every
# MAGIC differing cell; `repair` = `true` re-merges them from the source. The grid below shows the run
# MAGIC per ship × day (green match, amber repaired, red mismatch).

# COMMAND ----------

from widen import notebook
from widen.jobs import reconcile
from widen.pg import db

p = notebook.params(globals(), config="conf/local.yaml", ships="", repair="false", heatmap_png="")
config = notebook.load_config(p["config"])
spark = notebook.spark_session(globals(), config)

# COMMAND ----------

result = reconcile.run(config, spark, ships=notebook.ships(p["ships"]), repair=p["repair"].lower() == "true")
print(result.report)

# COMMAND ----------

with db.connection(config.target.connection) as conn:
    grid = notebook.status_grid(conn, config.target.catalog_schema, result.summary["run_id"])
notebook.show(globals(), grid.reset_index())
figure = notebook.heatmap(grid, p["heatmap_png"] or None)
