"""PostgreSQL connections (psycopg2) shared by the I/O modules."""
from __future__ import annotations

import contextlib
from typing import Iterator

import psycopg2

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
