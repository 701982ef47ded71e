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
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import psycopg2
import psycopg2.extensions
import psycopg2.extras
from psycopg2 import sql

from widen.config import Connection, TargetConfig

if TYPE_CHECKING:
    from psycopg2.extensions import connection as PgConnection, cursor

#: seconds to wait for a server to accept a connection (libpq's connect_timeout)
CONNECT_TIMEOUT = 10
log = logging.getLogger(__name__)
#: (schema, name) pairs
TableNames = Sequence[tuple[str, str]]


def render(query: sql.Composable, context: Any, for_parameters: bool) -> str:
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

    def execute(self, query: sql.Composable | str, vars: Any = None) -> None:  # noqa: A002 - psycopg2's own parameter name
        return super().execute(self._text(query, vars), vars)

    def executemany(self, query: sql.Composable | str, vars_list: Iterable) -> None:
        return super().executemany(self._text(query, ()), vars_list)

    def mogrify(self, query: sql.Composable | str, vars: Any = None) -> bytes:  # noqa: A002
        return super().mogrify(self._text(query, vars), vars)

    def _text(self, query: sql.Composable | str, params: Any) -> str:
        if isinstance(query, sql.Composable):
            return render(query, self, params is not None)
        return query


def execute_values(cur: cursor, query: sql.Composable | str, rows: Sequence, template: str | None = None,
                   page_size: int = 100) -> None:
    """``psycopg2.extras.execute_values`` for a composed statement with one ``VALUES %s``."""
    text = render(query, cur, True) if isinstance(query, sql.Composable) else query
    psycopg2.extras.execute_values(cur, text, rows, template=template, page_size=page_size)


def session_params(params: dict) -> dict:
    """libpq parameters with widen's defaults: a connect timeout and TCP keepalives, so a server
    that stops answering is noticed instead of hanging a job; text in UTF-8, as JDBC reads it."""
    return {"connect_timeout": CONNECT_TIMEOUT, "keepalives": 1, "keepalives_idle": 30,
            "keepalives_interval": 10, "keepalives_count": 3, "client_encoding": "UTF8", **params}


def open_session(params: dict, autocommit: bool = False) -> PgConnection:
    """A connection from libpq parameters (``Connection.psycopg_params()``), with ``Cursor``, its
    rendering pinned whatever the server, database or role defaults say (as
    ``Connection.session_options`` does at start-up; again here for parameters built elsewhere): UTC,
    ISO dates, and doubles printed exactly (``extra_float_digits`` 3: the shortest exact text from 12
    on, 17 digits before; ``widen.pg.render`` never depends on it)."""
    conn = psycopg2.connect(**session_params(params), cursor_factory=Cursor)
    conn.autocommit = autocommit
    with conn.cursor() as cur:
        cur.execute("SET TIME ZONE 'UTC'; SET DateStyle = 'ISO, MDY'; SET extra_float_digits = 3")
    if not autocommit:
        conn.commit()
    return conn


def connect(conn_cfg: Connection, autocommit: bool = False) -> PgConnection:
    try:
        return open_session(conn_cfg.psycopg_params(), autocommit)
    except psycopg2.OperationalError as err:
        # libpq's message never contains the password; still name the server safely.
        # One line: libpq adds its hint ("Is the server running …") on lines of their own.
        reason = " ".join(line.strip() for line in str(err).splitlines() if line.strip())
        raise ConnectionError(f"cannot connect to PostgreSQL {conn_cfg.describe()}: {reason}") from None


@contextlib.contextmanager
def connection(conn_cfg: Connection, autocommit: bool = False) -> Iterator[Any]:
    conn = connect(conn_cfg, autocommit)
    try:
        yield conn
    finally:
        conn.close()


# --- DDL on tables readers use ---------------------------------------------------------------------

class LockWaitTimeout(RuntimeError):
    """DDL could not get its lock within ``target.ddl_max_wait_seconds`` (each try bounded by
    ``target.lock_timeout_seconds``); the message names who holds the table."""
    pgcode = "55P03"           # lock_not_available: it concerns the tables at hand, not the server


def lock_holders(conn: PgConnection, tables: Sequence[tuple[str, str]]) -> str:
    """Who holds a lock on any of ``tables`` ((schema, name) pairs): pid, application, state, since."""
    if not tables:
        return "another session"
    schemas, names = [t[0] for t in tables], [t[1] for t in tables]
    with conn.cursor() as cur:
        cur.execute(
            "SELECT DISTINCT ON (a.pid) a.pid, a.application_name, a.state, a.xact_start, n.nspname, c.relname "
            "FROM pg_locks l JOIN pg_class c ON c.oid = l.relation JOIN pg_namespace n ON n.oid = c.relnamespace "
            "JOIN pg_stat_activity a ON a.pid = l.pid WHERE l.granted AND l.pid <> pg_backend_pid() "
            "AND (n.nspname, c.relname) IN (SELECT * FROM unnest(%s::text[], %s::text[])) ORDER BY a.pid",
            (schemas, names))
        rows = cur.fetchall()
    conn.rollback()
    if not rows:
        return "another session (gone by now)"
    return "; ".join(
        f"{sql.Identifier(schema, rel).as_string(conn)} by PostgreSQL pid {pid} ({app or 'no application_name'}, "
        f"{state or 'unknown state'}" + (f", transaction open since {since:%Y-%m-%d %H:%M:%S %Z}" if since else "") + ")"
        for pid, app, state, since, schema, rel in rows[:3])


def set_lock_timeout(cur: cursor, seconds: float) -> None:
    """``SET LOCAL lock_timeout`` for the rest of the transaction: a lock not granted within
    ``seconds`` fails the statement instead of queueing readers behind it (at least 1 ms: 0 would
    mean no timeout)."""
    cur.execute(f"SET LOCAL lock_timeout = {max(1, round(seconds * 1000))}")


def run_ddl(conn: PgConnection, target: TargetConfig, action: Callable[[Any], Any],
            tables: TableNames | Callable[[], TableNames], what: str, max_wait: float | None = None,
            holders: Callable[[], str] | None = None) -> Any:
    """``action(cursor)`` in a transaction of its own with ``lock_timeout`` = the target's
    ``lock_timeout_seconds``, committed; a lock it cannot get in time is tried again with backoff
    for up to ``ddl_max_wait_seconds``. A reader never waits behind it for longer than one try,
    and the job never waits forever: it gives up with the session that holds ``tables`` ((schema,
    name) pairs, or a function returning them; ``holders`` adds who else holds what it waits for).
    ``max_wait`` overrides ``ddl_max_wait_seconds``."""
    max_wait = target.ddl_max_wait_seconds if max_wait is None else max_wait
    deadline = time.monotonic() + max_wait
    delay, tries = 0.05, 0
    while True:
        tries += 1
        try:
            with conn.cursor() as cur:
                set_lock_timeout(cur, target.lock_timeout_seconds)
                result = action(cur)
            conn.commit()
            return result
        except psycopg2.errors.LockNotAvailable:
            conn.rollback()
            if time.monotonic() + delay > deadline:
                held = lock_holders(conn, tables() if callable(tables) else tables)
                if holders is not None:
                    held = f"{held}; {holders()}"
                raise LockWaitTimeout(f"{what}: gave up after {tries} tries in {max_wait:g} s waiting for a lock "
                                      f"held on {held}") from None
            if tries == 1:
                log.info("%s waits for a lock (each try at most %g s; readers are not held up)", what,
                         target.lock_timeout_seconds)
            time.sleep(delay)
            delay = min(delay * 2, 2.0)


def advisory_holders(conn: PgConnection, namespace: str, key: str, what: str) -> str:
    """Who holds the advisory lock (hashtext(namespace), hashtext(key)) in any mode."""
    with conn.cursor() as cur:
        cur.execute("SELECT DISTINCT ON (a.pid) a.pid, a.application_name, a.state, a.xact_start FROM pg_locks l "
                    "JOIN pg_stat_activity a ON a.pid = l.pid WHERE l.locktype = 'advisory' AND l.granted "
                    "AND l.pid <> pg_backend_pid() AND l.classid = (hashtext(%s))::oid "
                    "AND l.objid = (hashtext(%s))::oid ORDER BY a.pid", (namespace, key))
        rows = cur.fetchall()
    conn.rollback()
    if not rows:
        return f"no one holds {what} now"
    return f"{what} is held by " + "; ".join(
        f"PostgreSQL pid {pid} ({app or 'no application_name'}, {state or 'unknown state'}"
        + (f", transaction open since {since:%Y-%m-%d %H:%M:%S %Z}" if since else "") + ")"
        for pid, app, state, since in rows[:3])
