"""How widen reaches a server: JDBC URLs built by an encoder (a Unix-socket host, an IPv6 literal, a
database name with URL-special characters), timeouts on a server that never answers."""
from __future__ import annotations

import oracle
import psycopg2
from conftest import ROOT
from netproxy import Proxy
from psycopg2 import sql

from widen import config as widen_config
from widen.jobs import backfill
from widen.sources import generate

ODD_DATABASE = "we?ird/db name+%;x#"


def test_unix_socket_source_ipv6_target_odd_database(pg, pg_server, spark):
    with pg.cursor() as cur:
        cur.execute("SHOW unix_socket_directories")
        socket_dir = cur.fetchone()[0].split(",")[0].strip()
        cur.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(ODD_DATABASE)))
        cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(ODD_DATABASE)))
    with Proxy(pg_server["port"], listen_host="::1") as ipv6:
        base = {"database": ODD_DATABASE, "user": pg_server["user"], "password_env": "PGPASSWORD"}
        config = widen_config.parse({
            "embedded": "never",
            "source": {**base, "host": socket_dir, "port": pg_server["port"], "schema": "src"},
            "target": {**base, "host": "::1", "port": ipv6.port, "schema": "wide", "catalog_schema": "cat"},
            "backfill": {"chunk_hours": 1, "partitions_per_chunk": 2},
            "jars_dir": str(ROOT / "jars")})
        assert config.source.connection.jdbc_url().endswith("/we%3Fird%2Fdb%20name%2B%25%3Bx%23")
        generate.generate_fleet(config.source.connection, "src", ships=2, channels=3, hours=1, seed=3)
        result = backfill.run(config, spark)
        assert result.exit_code == 0, result.report
        assert result.summary["narrow_rows"] == 2 * 3 * 240
        # the target's sessions came in over IPv6, the source's over the socket
        assert ipv6.connections
    odd = psycopg2.connect(host=pg_server["host"], port=pg_server["port"], user=pg_server["user"],
                           dbname=ODD_DATABASE)
    try:
        odd.autocommit = True
        with odd.cursor() as cur:
            oracle.assert_equal_to_oracle(cur, "src", "wide", "cat")
    finally:
        odd.close()
    with pg.cursor() as cur:
        cur.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(ODD_DATABASE)))
