"""PostgreSQL connections (psycopg2) and small helpers shared by the I/O modules."""
from __future__ import annotations

import contextlib
from typing import Iterator

import psycopg2
from psycopg2 import sql

from widen.config import Connection


def connect(conn_cfg: Connection, autocommit: bool = False):
    try:
        conn = psycopg2.connect(**conn_cfg.psycopg_params())
    except psycopg2.OperationalError as err:
        # libpq's message never contains the password; still name the server safely.
        raise ConnectionError(f"cannot connect to PostgreSQL {conn_cfg.describe()}: "
                              f"{str(err).strip()}") from None
    conn.autocommit = autocommit
    with conn.cursor() as cur:
        cur.execute("SET TIME ZONE 'UTC'")
    if not autocommit:
        conn.commit()
    return conn


@contextlib.contextmanager
def connection(conn_cfg: Connection, autocommit: bool = False) -> Iterator:
    conn = connect(conn_cfg, autocommit)
    try:
        yield conn
    finally:
        conn.close()


def qualified(schema: str, table: str) -> sql.Composable:
    return sql.Identifier(schema, table)


def server_version(conn) -> int:
    return conn.server_version


def literal(conn, value) -> str:
    """A value safely quoted for SQL text that cannot take parameters (a JDBC ``dbtable``)."""
    return sql.Literal(value).as_string(conn)
