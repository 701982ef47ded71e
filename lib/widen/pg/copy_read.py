"""Rows of a query straight into Arrow: ``COPY (…) TO STDOUT`` as CSV, parsed by Arrow's CSV reader.

This is how a backfill's Spark tasks read the narrow table: the Python worker that pivots a
partition reads it itself, so no row is decoded by the JVM's JDBC driver and converted to Arrow on
the way (that decoding was the largest cost of a chunk). Every value is quoted (``FORCE_QUOTE *``),
so an unquoted empty field is NULL and a quoted one the empty string; values may hold any
character, newlines included.

A read that receives nothing for ``socket_timeout`` seconds is given up (the socket is shut down,
as the JDBC driver's ``socketTimeout`` does): a hung server or network never holds a task forever.
"""
from __future__ import annotations

import io
import os
import socket
import threading
import time
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.csv as pacsv

if TYPE_CHECKING:
    from psycopg2.extensions import cursor


class ReadTimeout(ConnectionError):
    """The server sent nothing for ``socket_timeout`` seconds (the backfill's circuit breaker counts
    it as a server that went away: ``errors.is_connection_failure``)."""


def copy_csv(cur: cursor, query: str, columns: dict[str, pa.DataType], socket_timeout: float = 0) -> pa.Table:
    """The rows of ``query`` (a SELECT, as text) as a table of ``columns`` (name → Arrow type, in
    the query's column order). ``socket_timeout`` > 0: give up when nothing arrives for that long.
    The session must send UTF-8 (``client_encoding``), which is what Arrow reads."""
    # psycopg2 writes each row with its own call: a C method keeps that cheap (a Python one cost
    # ~1 µs a row, more than parsing)
    sink = io.BytesIO()
    statement = f"COPY ({query}) TO STDOUT WITH (FORMAT csv, FORCE_QUOTE *)"
    stop = threading.Event()
    timed_out = threading.Event()

    def watch() -> None:
        seen, since = -1, time.monotonic()
        while not stop.wait(min(1.0, socket_timeout / 4)):
            now, size = time.monotonic(), sink.tell()
            if size != seen:
                seen, since = size, now
            elif now - since > socket_timeout:
                timed_out.set()
                # libpq then reads end-of-file and the COPY fails; the session is not used again
                with socket.socket(fileno=os.dup(cur.connection.fileno())) as sock:
                    sock.shutdown(socket.SHUT_RDWR)
                return

    watcher = threading.Thread(target=watch, daemon=True) if socket_timeout > 0 else None
    if watcher:
        watcher.start()
    try:
        cur.copy_expert(statement, sink, size=1 << 20)
    except Exception:
        if timed_out.is_set():
            raise ReadTimeout(f"the source sent nothing for {socket_timeout:g} s "
                              "(source.socket_timeout_seconds); the read was given up") from None
        raise
    finally:
        stop.set()
        if watcher:
            watcher.join()
    if timed_out.is_set():             # shut down just as the last rows came: the session is gone
        raise ReadTimeout(f"the source sent nothing for {socket_timeout:g} s "
                          "(source.socket_timeout_seconds); the read was given up")
    data = sink.getvalue()
    sink.close()
    names = list(columns)
    if not data:
        return pa.schema([pa.field(n, t) for n, t in columns.items()]).empty_table()
    return pacsv.read_csv(
        pa.BufferReader(data),
        # one block for all: a row longer than a block would fail to parse (a long str_v, a reject)
        read_options=pacsv.ReadOptions(column_names=names, block_size=min(max(1 << 24, len(data) + 1), (1 << 31) - 1)),
        parse_options=pacsv.ParseOptions(newlines_in_values=True),
        convert_options=pacsv.ConvertOptions(column_types=columns, null_values=[""], strings_can_be_null=True,
                                             quoted_strings_can_be_null=False))
