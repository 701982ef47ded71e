"""widen.jvm: the archive of Spark's classes ``make setup`` writes, and the options a driver JVM
that widen starts gets. Each check starts a real JVM the way every job starts it (Spark's own
``spark-submit``, here with ``--version``), outside the test run's Spark session."""
import os
import subprocess
from dataclasses import replace
from pathlib import Path

import pyspark

from widen import jvm

ROOT = Path(__file__).resolve().parents[1]
SPARK_HOME = Path(pyspark.__file__).parent


def spark_jvm(options: list[str]) -> subprocess.CompletedProcess:
    """Spark's launcher and its JVM, with ``options`` as the driver's."""
    env = {**os.environ, "SPARK_HOME": str(SPARK_HOME), "SPARK_SUBMIT_OPTS": " ".join(options)}
    return subprocess.run([str(SPARK_HOME / "bin" / "spark-submit"), "--version"], env=env, capture_output=True,
                          text=True, timeout=120, cwd=ROOT / "build")


def test_setup_wrote_an_archive_the_jvm_maps(tmp_path):
    archive = jvm.archive_path(ROOT / "jars")
    assert jvm.usable_archive(ROOT / "jars") == archive, (
        "make setup writes jars/spark-classes.jsa and checks it with this JDK (after a JDK or pyspark "
        "change: rm jars/.archived; make setup)")
    options = jvm.driver_java_options(None, None, ROOT / "jars")
    assert f"-XX:SharedArchiveFile={archive}" in options
    # -Xshare:on refuses to start a JVM that cannot map the archive; Spark's classes come from it.
    done = spark_jvm([*options, "-Xshare:on", "-Xlog:class+load=info"])
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "org.apache.spark.deploy.SparkSubmit source: shared objects file (top)" in done.stdout


def test_an_archive_changed_since_its_check_is_never_offered(tmp_path):
    """A truncated archive kills the JVM that maps it (SIGBUS with JDK 17, seen by hand: not
    asserted here, a JDK update may change it); one of another JDK, or garbage, the JVM itself
    skips, silently."""
    copy = jvm.archive_path(tmp_path)
    with open(jvm.archive_path(ROOT / "jars"), "rb") as real:
        copy.write_bytes(real.read(1 << 20))
    jvm.seal(copy)
    assert jvm.usable_archive(tmp_path) == copy
    with open(copy, "r+b") as fh:                        # a disk that filled while it was written
        fh.truncate(1 << 19)
    assert jvm.usable_archive(tmp_path) is None
    assert jvm.driver_java_options(None, "backfill", tmp_path) == []
    # Sealed by another JDK: not offered either.
    jvm.seal(copy)
    seal = tmp_path / (copy.name + ".checked")
    seal.write_text(seal.read_text().replace(str(jvm.java_binary()), "/opt/other-jdk/bin/java"))
    assert jvm.usable_archive(tmp_path) is None
    seal.write_bytes(b"\xff\xfe not text")
    assert jvm.usable_archive(tmp_path) is None
    # Garbage that passed the check (sealed as it is now): the JVM skips it and says nothing.
    copy.write_bytes(os.urandom(1 << 16))
    jvm.seal(copy)
    options = jvm.driver_java_options(None, None, tmp_path)
    assert options and options[0] == f"-XX:SharedArchiveFile={copy}"
    done = spark_jvm(options)
    assert done.returncode == 0 and "cds" not in done.stdout + done.stderr, done.stdout + done.stderr


def test_quick_compiler_only_where_the_jvm_only_schedules(make_config, tmp_path):
    both_postgres = make_config("jvmopts")
    quick = "-XX:TieredStopAtLevel=1"
    assert quick in jvm.driver_java_options(both_postgres, "backfill", tmp_path)
    to_delta = replace(both_postgres, target=replace(both_postgres.target, kind="delta", delta_root=str(tmp_path)))
    for config, job in [(to_delta, "backfill"), (both_postgres, "stream"),
                        (both_postgres, "reconcile"), (both_postgres, None), (None, "backfill")]:
        assert quick not in jvm.driver_java_options(config, job, tmp_path), (config and config.target.kind, job)


def test_an_archive_path_spark_would_split_is_left_out(tmp_path):
    """Spark splits the driver's Java options like a shell: a jars folder whose path has a space or a
    quote gets no archive option (a split path would be an unknown option: no JVM at all)."""
    for name in ("with space", "it's", 'say "x"', "tab\there"):
        folder = tmp_path / name
        folder.mkdir()
        archive = jvm.archive_path(folder)
        archive.write_bytes(b"sealed as it is")
        jvm.seal(archive)
        assert jvm.usable_archive(folder) == archive
        assert not any("SharedArchiveFile" in o for o in jvm.driver_java_options(None, None, folder)), name
