"""The one place that builds the Spark session and resolves where the databases are."""
from __future__ import annotations

import glob
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from widen import jvm, log, pyfiles
from widen.config import BadInput, Config, Connection

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

#: settings every widen session needs, whoever builds it (see docs/design.md, "Engineering rules")
REQUIRED_CONF = {
    "spark.sql.session.timeZone": "UTC",
    "spark.sql.caseSensitive": "true",
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    "spark.driver.extraJavaOptions": "-Duser.timezone=UTC",
    "spark.executor.extraJavaOptions": "-Duser.timezone=UTC",
    "spark.ui.showConsoleProgress": "false",
}


#: defaults a config may override: 100k-row Arrow batches (Spark's default is 10k) made the backfill's
#: JDBC read of the time about 25 % faster; the Delta writer's and the stream's batches keep them
DEFAULT_CONF = {
    "spark.sql.execution.arrow.maxRecordsPerBatch": "100000",
    # Delta Lake (a Delta narrow source; Delta targets): its jars are fetched with the JDBC driver
    "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
    "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
    # Every ship's part table is a Delta table with a small log: rebuilding a snapshot over Delta's
    # default 50 partitions made each read or MERGE of such a table 3-5x slower (measured: a
    # 240-row MERGE 5.0 s -> 1.3 s, a count 5.2 s -> 0.7 s on 2 cores).
    "spark.databricks.delta.snapshotPartitions": "2",
}


def resolve_connections(config: Config) -> Config:
    """Fill empty hosts from the embedded server (started if needed) when the config says so."""
    if not config.uses_embedded:
        return config
    from widen import embedded

    server = embedded.ensure_running(Path(config.home))

    def fill(conn: Connection) -> Connection:
        if conn.host and config.embedded != "always":
            return conn
        # The configured database and user, made on the embedded server if missing (never
        # silently swapped for the server's own: a job would then work elsewhere than asked).
        there = embedded.provide(server, conn.database, conn.user)
        return replace(conn, host=there.host, port=there.port, user=there.user, database=there.database,
                       password_env=None, password_file=None)

    return config.with_connections(fill(config.source.connection), fill(config.target.connection))


def jar_paths(config: Config) -> list[str]:
    jars = sorted(glob.glob(os.path.join(config.jars_dir, "*.jar")))
    if not any("postgresql" in os.path.basename(j) for j in jars):
        raise BadInput(f"jars_dir: no PostgreSQL JDBC jar in {os.path.abspath(config.jars_dir)!r}: set jars_dir to "
                       "the folder holding postgresql-42.7.x.jar (and the Delta jars for Delta), or run `make setup` "
                       "in a checkout (it fetches them once from Maven Central)")
    return [os.path.abspath(j) for j in jars]


#: Spark's own console lines off (errors only) unless widen logs at DEBUG (``--verbose``)
QUIET_LOG4J = Path(__file__).with_name("log4j2-quiet.properties")


def _verbose() -> bool:
    import logging

    return logging.getLogger("widen").isEnabledFor(logging.DEBUG)


def get_spark(config: Config, spark: SparkSession | None = None, job: str | None = None) -> SparkSession:
    """Return ``spark`` if given (tests, notebooks), else build or reuse the session for ``config``
    (a JVM it starts gets ``widen.jvm``'s options for ``job``)."""
    if spark is not None:
        for key in ("spark.sql.session.timeZone", "spark.sql.caseSensitive"):
            spark.conf.set(key, REQUIRED_CONF[key])
        return spark
    os.environ.setdefault("TZ", "UTC")
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    # spark-submit.sh runs jobs that rarely need Spark as plain Python, with its --master here
    master = os.environ.get("WIDEN_SPARK_MASTER") or config.spark.master
    if master.startswith("local") and not os.environ.get("WIDEN_SUBMITTED"):
        # The Spark UI listens on SPARK_LOCAL_IP, else on every interface: a local run keeps it
        # (and the driver) on the loopback unless the environment says otherwise.
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    from pyspark.sql import SparkSession

    builder = SparkSession.builder.appName(config.spark.app_name)
    if not os.environ.get("WIDEN_SUBMITTED"):
        builder = builder.master(master)
        builder = builder.config("spark.jars", ",".join(jar_paths(config)))
    conf = {**DEFAULT_CONF, **config.spark.conf, **REQUIRED_CONF}
    if not os.environ.get("WIDEN_SUBMITTED"):
        conf["spark.driver.extraJavaOptions"] += f" {log.log4j_options()}"
        conf["spark.driver.extraJavaOptions"] = " ".join(
            [conf["spark.driver.extraJavaOptions"], *jvm.driver_java_options(config, job, config.jars_dir)])
    for key, value in conf.items():
        builder = builder.config(key, value)
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel("WARN" if _verbose() else "ERROR")
    if not os.environ.get("WIDEN_SUBMITTED"):
        # Executors elsewhere (a cluster's, or Python workers without this package) import widen from
        # the zip: the wrapper's, else one made here of the widen this driver runs (an installed
        # wheel's console command has no wrapper to ship it).
        shipped = os.environ.get("WIDEN_PY_FILES") or str(pyfiles.library_zip(Path(config.home) / "py-files"))
        session.sparkContext.addPyFile(shipped)
    return session
