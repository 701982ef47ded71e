"""PostgreSQL sessions: the one way widen opens a connection and runs a statement.

psycopg2 applies ``%`` formatting to the *whole* text of a statement executed with parameters,
including the parts that came from ``sql.Identifier`` and ``sql.Literal``: a ship or channel named
``pct%ship`` (or ``%s``, ``%(x)s``) breaks such a statement, or worse, shifts its parameters.
``Cursor`` renders a composed statement itself and doubles every ``%`` that came from an identifier
or a literal (never one written in ``sql.SQL``, where ``%s`` is a placeholder), so every statement
with any name is safe by construction. Every connection widen opens, on the driver or in a Spark
task, comes from ``open_session`` and uses it; ``execute_values`` is the same for batched VALUES.
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator, Sequence

import psycopg2
import psycopg2.extensions
import psycopg2.extras
from psycopg2 import sql

from widen.config import Connection

#: seconds to wait for a server to accept a connection (libpq's connect_timeout)
CONNECT_TIMEOUT = 10


def render(query: sql.Composable, context, for_parameters: bool) -> str:
    """The statement's text; with ``for_parameters`` every ``%`` inside an identifier or a literal
    is doubled, because psycopg2 will %-format the text once more with the parameters."""
    if isinstance(query, sql.Composed):
        return "".join(render(part, context, for_parameters) for part in query.seq)
    text = query.as_string(context)
    if for_parameters and not isinstance(query, (sql.SQL, sql.Placeholder)):
        return text.replace("%", "%%")
    return text


class Cursor(psycopg2.extensions.cursor):
    """A cursor whose ``execute``/``mogrify`` keep ``%`` in names and literals as written."""

    def execute(self, query, vars=None):  # noqa: A002 - psycopg2's own parameter name
        return super().execute(self._text(query, vars), vars)

    def executemany(self, query, vars_list):
        return super().executemany(self._text(query, ()), vars_list)

    def mogrify(self, query, vars=None):  # noqa: A002
        return super().mogrify(self._text(query, vars), vars)

    def _text(self, query, params):
        if isinstance(query, sql.Composable):
            return render(query, self, params is not None)
        return query


def execute_values(cur, query: sql.Composable | str, rows: Sequence, template: str | None = None,
                   page_size: int = 100) -> None:
    """``psycopg2.extras.execute_values`` for a composed statement with one ``VALUES %s``."""
    text = render(query, cur, True) if isinstance(query, sql.Composable) else query
    psycopg2.extras.execute_values(cur, text, rows, template=template, page_size=page_size)


def session_params(params: dict) -> dict:
    """libpq parameters with widen's defaults: a connect timeout and TCP keepalives, so a server
    that stops answering is noticed instead of hanging a job."""
    return {"connect_timeout": CONNECT_TIMEOUT, "keepalives": 1, "keepalives_idle": 30,
            "keepalives_interval": 10, "keepalives_count": 3, **params}


def open_session(params: dict, autocommit: bool = False):
    """A connection from libpq parameters (``Connection.psycopg_params()``), in UTC, with ``Cursor``."""
    conn = psycopg2.connect(**session_params(params), cursor_factory=Cursor)
    conn.autocommit = autocommit
    with conn.cursor() as cur:
        cur.execute("SET TIME ZONE 'UTC'")
    if not autocommit:
        conn.commit()
    return conn


def connect(conn_cfg: Connection, autocommit: bool = False):
    try:
        return open_session(conn_cfg.psycopg_params(), autocommit)
    except psycopg2.OperationalError as err:
        # libpq's message never contains the password; still name the server safely.
        raise ConnectionError(f"cannot connect to PostgreSQL {conn_cfg.describe()}: "
                              f"{str(err).strip()}") from None


@contextlib.contextmanager
def connection(conn_cfg: Connection, autocommit: bool = False) -> Iterator[Any]:
    conn = connect(conn_cfg, autocommit)
    try:
        yield conn
    finally:
        conn.close()
