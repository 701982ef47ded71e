"""One run of a job per ship at a time: PostgreSQL advisory locks in the target database.

A run over named ships holds, for its whole life, the job's lock in *shared* mode and each of its
ships' locks exclusively; a run over every ship holds the job's lock exclusively. So two runs of
the same job conflict exactly when their ships overlap, and the second one stops at once with a
message naming the ship and the other run's connection. The locks go with the session, so a run
that dies (even by SIGKILL) frees them.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

from widen.config import Connection
from widen.pg import db

if TYPE_CHECKING:
    from psycopg2.extensions import cursor

NAMESPACE = "widen.job."


class JobBusy(RuntimeError):
    """Another run of the same job holds the lock of a ship (or of the whole job)."""


def _holder(cur: cursor, key1: int, key2: int) -> str:
    cur.execute("SELECT a.pid, a.application_name, a.client_addr, a.backend_start FROM pg_locks l "
                "LEFT JOIN pg_stat_activity a ON a.pid = l.pid WHERE l.locktype = 'advisory' AND l.granted "
                "AND l.classid = (%s::int)::oid AND l.objid = (%s::int)::oid LIMIT 1", (key1, key2))
    row = cur.fetchone()
    if not row:
        return "another run"
    pid, app, addr, started = row
    return f"another run (PostgreSQL pid {pid}, {app or 'unknown app'}" + (
        f" from {addr}" if addr else "") + (f", connected {started:%Y-%m-%d %H:%M:%S %Z}" if started else "") + ")"


@contextlib.contextmanager
def job_lock(conn_cfg: Connection, job: str, keys: list[str] | None, what: str = "ship") -> Iterator[None]:
    """Hold the job's locks for ``keys`` (None: every ship) until the block ends."""
    conn = db.connect(conn_cfg, autocommit=True)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT hashtext(%s)", (NAMESPACE + job,))
            space = cur.fetchone()[0]
            if keys is None:
                cur.execute("SELECT pg_try_advisory_lock(%s, 0)", (space,))
                if not cur.fetchone()[0]:
                    raise JobBusy(f"{job} is already running ({_holder(cur, space, 0)}); this run stops "
                                  "without changing anything")
            else:
                cur.execute("SELECT pg_try_advisory_lock_shared(%s, 0)", (space,))
                if not cur.fetchone()[0]:
                    raise JobBusy(f"{job} is already running for every {what} ({_holder(cur, space, 0)}); "
                                  "this run stops without changing anything")
                for key in sorted(set(keys)):
                    cur.execute("SELECT hashtext(%s)", (key,))
                    code = cur.fetchone()[0]
                    cur.execute("SELECT pg_try_advisory_lock(%s, %s)", (space, code))
                    if not cur.fetchone()[0]:
                        raise JobBusy(f"{job} is already running for {what} {key!r} ({_holder(cur, space, code)}); "
                                      "this run stops without changing anything")
        yield
    finally:
        conn.close()            # ends the session: every advisory lock it took goes with it
