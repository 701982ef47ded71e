"""The archive of Spark's classes that ``make setup`` writes once (``python -m widen.class_archive
jars``): a small local Spark job runs in a JVM started with ``-XX:ArchiveClassesAtExit``, which
writes the classes it loaded as it exits; the archive is then checked with Spark's own launcher and
sealed (``widen.jvm`` offers it to later JVMs only as sealed)."""
from __future__ import annotations

import glob
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from widen import jvm

if TYPE_CHECKING:
    from collections.abc import Iterator

    import pyarrow as pa
    from pyspark.sql import SparkSession


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

    final = jvm.archive_path(jars_dir)
    partial = final.with_suffix(f".{os.getpid()}.partial")     # two setups at once write their own
    partial.unlink(missing_ok=True)
    os.environ.setdefault("TZ", "UTC")
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    conf = {**DEFAULT_CONF, **REQUIRED_CONF, "spark.ui.enabled": "false"}
    conf["spark.driver.extraJavaOptions"] += (f" -Dlog4j2.configurationFile=file:{QUIET_LOG4J}"
                                              f" -XX:ArchiveClassesAtExit={partial} {jvm.QUIET_ARCHIVE}")
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
    jvm.unseal(final)
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
    if len(argv) != 1:
        print("usage: python -m widen.class_archive JARS_DIR", file=sys.stderr)
        return 2
    path = write_archive(argv[0])
    if not check_archive(path):
        path.unlink()
        print(f"widen: this JVM cannot use the class archive it wrote; removed {path} "
              "(jobs start as they would without it)", file=sys.stderr)
        return 1
    jvm.seal(path)
    print(f"{path} ({path.stat().st_size // 2**20} MiB): Spark's classes for a quicker JVM start")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
