"""The JVM a widen job starts itself: options for its driver, among them the archive of Spark's
classes that ``make setup`` writes (``python -m widen.class_archive jars``).

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

import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from widen.config import Config

#: the archive's file name, next to the jars
ARCHIVE_NAME = "spark-classes.jsa"

#: jobs whose JVM only schedules when the target's tables are not Spark's
SCHEDULING_JOBS = frozenset({"backfill"})

#: the JVM says nothing about an archive it cannot use (it then starts as it would without)
QUIET_ARCHIVE = "-Xlog:cds=off,cds+dynamic=off"


def archive_path(jars_dir: str | os.PathLike) -> Path:
    return Path(jars_dir).resolve() / ARCHIVE_NAME


def _seal_path(archive: Path) -> Path:
    return archive.with_name(archive.name + ".checked")


def java_binary() -> str | None:
    """The java Spark's launcher runs (``$JAVA_HOME/bin/java``, else the one on PATH), resolved."""
    home = os.environ.get("JAVA_HOME")
    found = shutil.which("java", path=os.path.join(home, "bin")) if home else shutil.which("java")
    return os.path.realpath(found) if found else None


def _stamp(archive: Path) -> str:
    """The archive's size and mtime and the JDK that checked it: another JDK (even one that could
    read the file) gets no archive options at all."""
    found = archive.stat()
    return f"{found.st_size} {found.st_mtime_ns} {java_binary()}"


def seal(archive: Path) -> None:
    """Record the archive as checked, as it is now (``usable_archive`` offers only that file)."""
    _seal_path(archive).write_text(_stamp(archive) + "\n")


def unseal(archive: Path) -> None:
    _seal_path(archive).unlink(missing_ok=True)


def usable_archive(jars_dir: str | os.PathLike) -> Path | None:
    """The archive, if it is the file ``make setup`` checked. A JVM mapping a truncated archive
    dies of SIGBUS (seen with JDK 17), so a file changed since its check is never offered."""
    archive = archive_path(jars_dir)
    try:
        return archive if _seal_path(archive).read_text().strip() == _stamp(archive) else None
    except (OSError, ValueError):           # no file, no seal, a seal that is not text
        return None


def driver_java_options(config: Config | None, job: str | None, jars_dir: str | os.PathLike) -> list[str]:
    """Options for a driver JVM this machine starts for ``job`` (None: any job) under ``config``."""
    options = []
    archive = usable_archive(jars_dir)
    # Spark splits these options like a shell: a path it would split is left out, not quoted.
    if archive and not any(c.isspace() or c in "\"'\\" for c in str(archive)):
        options += [f"-XX:SharedArchiveFile={archive}", QUIET_ARCHIVE]
    if wants_quick_compiler(config, job):
        options.append("-XX:TieredStopAtLevel=1")
    return options


def wants_quick_compiler(config: Config | None, job: str | None) -> bool:
    """Whether ``job``'s JVM only schedules: a backfill (its source is always a PostgreSQL table)
    into a target whose tables Spark does not write."""
    if config is None or job not in SCHEDULING_JOBS:
        return False
    from widen.targets import needs_spark  # pyarrow and the targets: only for these jobs

    return not needs_spark(config.target)
