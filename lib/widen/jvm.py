"""The JVM a widen job starts itself: options for its driver, and the archive of Spark's classes
that ``make setup`` writes (``python -m widen.jvm archive jars``).

On few cores Spark's own start is most of a small job (measured on 2 cores, a 5M-row backfill
through ``spark-submit.sh``: ~3 s to the Python driver, ~4 s more to a ready session, and the JIT
compilers busy for ~6 s of CPU beside the first chunks, CPU the source server and the Python
workers wanted). Two options cut it, both only for a JVM that widen or ``spark-submit.sh`` launches
on this machine (never a notebook's session, never a cluster's executors):

- **class data sharing**: the JDK maps Spark's classes from an archive written once at setup
  instead of reading, parsing and verifying ~10,000 of them on every start. An archive the JVM
  cannot use (another JDK, a reinstalled pyspark) is skipped silently and costs nothing;
- **the quick compiler only** (``-XX:TieredStopAtLevel=1``) for a backfill from PostgreSQL to
  PostgreSQL, whose JVM only schedules: its tasks read, pivot and write in Python, so the
  optimising compiler's work never pays back. Jobs whose JVM does the work (Delta, the stream)
  keep both compilers.
"""
from __future__ import annotations

import glob
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterator

    import pyarrow as pa
    from pyspark.sql import SparkSession

    from widen.config import Config

#: the archive's file name, next to the jars
ARCHIVE_NAME = "spark-classes.jsa"

#: jobs whose JVM only schedules when both ends are PostgreSQL
SCHEDULING_JOBS = frozenset({"backfill"})

#: the JVM says nothing about an archive it cannot use (it then starts as it would without)
QUIET_ARCHIVE = "-Xlog:cds=off,cds+dynamic=off"


def archive_path(jars_dir: str | os.PathLike) -> Path:
    return Path(jars_dir).resolve() / ARCHIVE_NAME


def _seal_path(archive: Path) -> Path:
    return archive.with_name(archive.name + ".checked")


def _stamp(archive: Path) -> str:
    found = archive.stat()
    return f"{found.st_size} {found.st_mtime_ns}"


def usable_archive(jars_dir: str | os.PathLike) -> Path | None:
    """The archive, if it is the file ``make setup`` checked. A JVM mapping a truncated archive
    dies of SIGBUS (seen with JDK 17), so a file changed since its check is never offered."""
    archive = archive_path(jars_dir)
    try:
        return archive if _seal_path(archive).read_text().strip() == _stamp(archive) else None
    except OSError:
        return None


def driver_java_options(config: Config | None, job: str | None, jars_dir: str | os.PathLike) -> list[str]:
    """Options for a driver JVM this machine starts for ``job`` (None: any job) under ``config``."""
    options = []
    archive = usable_archive(jars_dir)
    # Spark splits these options like a shell: a path it would split is left out, not quoted.
    if archive and not any(c.isspace() or c in "\"'\\" for c in str(archive)):
        options += [f"-XX:SharedArchiveFile={archive}", QUIET_ARCHIVE]
    if (job in SCHEDULING_JOBS and config is not None
            and config.source.kind == "postgres" and config.target.kind == "postgres"):
        options.append("-XX:TieredStopAtLevel=1")
    return options


def _exercise(spark: SparkSession) -> None:
    """What a job's JVM loads on its way: SQL, Arrow to and from Python workers, Parquet."""
    import pyarrow as pa

    def passthrough(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            yield pa.RecordBatch.from_arrays([batch.column(0)], names=["id"])

    spark.range(0, 4, 1, 4).mapInArrow(passthrough, "id long").collect()
    frame = spark.createDataFrame([(1, "a", 1.5)], "n long, s string, d double")
    frame.groupBy("s").count().collect()
    with tempfile.TemporaryDirectory() as folder:
        frame.write.parquet(folder + "/t")
        spark.read.parquet(folder + "/t").collect()


def write_archive(jars_dir: str | os.PathLike) -> Path:
    """Run a small local Spark job in a JVM that archives the classes it loaded when it exits."""
    from pyspark import SparkContext
    from pyspark.sql import SparkSession

    from widen.session import DEFAULT_CONF, QUIET_LOG4J, REQUIRED_CONF

    final = archive_path(jars_dir)
    partial = final.with_suffix(".partial")
    partial.unlink(missing_ok=True)
    os.environ.setdefault("TZ", "UTC")
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    conf = {**DEFAULT_CONF, **REQUIRED_CONF, "spark.ui.enabled": "false"}
    conf["spark.driver.extraJavaOptions"] += (f" -Dlog4j2.configurationFile=file:{QUIET_LOG4J}"
                                              f" -XX:ArchiveClassesAtExit={partial} {QUIET_ARCHIVE}")
    builder = SparkSession.builder.master("local[2]").appName("widen-class-archive")
    builder = builder.config("spark.jars", ",".join(sorted(glob.glob(os.path.join(jars_dir, "*.jar")))))
    for key, value in conf.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    try:
        _exercise(spark)
    finally:
        spark.stop()
        # The JVM writes the archive as it exits, which it does once its stdin closes.
        gateway = SparkContext._gateway
        process = getattr(gateway, "proc", None)
        if process is not None:
            process.stdin.close()
            process.wait(timeout=300)
    if not partial.is_file():
        raise RuntimeError(f"the JVM wrote no class archive to {partial}")
    _seal_path(final).unlink(missing_ok=True)
    os.replace(partial, final)
    return final


def check_archive(path: Path) -> bool:
    """Whether Spark's JVM, started as every job starts it, can use the archive (``-Xshare:on``
    refuses to start where it cannot: another JDK, another class path)."""
    import pyspark

    home = Path(pyspark.__file__).parent
    env = {**os.environ, "SPARK_HOME": str(home), "SPARK_SUBMIT_OPTS": f"-XX:SharedArchiveFile={path} -Xshare:on"}
    done = subprocess.run([str(home / "bin" / "spark-submit"), "--version"], env=env, capture_output=True,
                          text=True, timeout=120)
    return done.returncode == 0


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] != "archive":
        print("usage: python -m widen.jvm archive JARS_DIR", file=sys.stderr)
        return 2
    path = write_archive(argv[1])
    if not check_archive(path):
        path.unlink()
        print(f"widen: this JVM cannot use the class archive it wrote; removed {path} "
              "(jobs start as they would without it)", file=sys.stderr)
        return 1
    _seal_path(path).write_text(_stamp(path) + "\n")
    print(f"{path} ({path.stat().st_size // 2**20} MiB): Spark's classes for a quicker JVM start")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
