"""The JDBC side of a connection: its URL and the driver properties that say how to reach it.

Built by an encoder, never by pasting text: an IPv6 literal goes in brackets, a database name with
``?``, ``/``, ``%``, spaces or non-ASCII characters is percent-encoded (pgjdbc decodes it), and a
host that is a directory (libpq's way to name a Unix socket, e.g. ``PGHOST=/var/run/postgresql``)
goes through junixsocket's socket factory, which pgjdbc supports, to the socket file
``<dir>/.s.PGSQL.<port>``.
"""
from __future__ import annotations

import ipaddress
import os
import urllib.parse

UNIX_SOCKET_FACTORY = "org.newsclub.net.unix.AFUNIXSocketFactory$FactoryArg"


def is_unix_socket(host: str | None) -> bool:
    return bool(host) and host.startswith("/")


def _host(host: str | None) -> str:
    if not host or is_unix_socket(host):
        return "localhost"            # not used for a socket: the factory decides where to go
    try:
        if ipaddress.ip_address(host.split("%")[0]).version == 6:
            return f"[{host}]"
    except ValueError:
        pass
    return host


def url(conn) -> str:
    """``jdbc:postgresql://host:port/database`` for a ``config.Connection``."""
    database = urllib.parse.quote(conn.database, safe="")
    return f"jdbc:postgresql://{_host(conn.host)}:{conn.port}/{database}"


def socket_properties(conn) -> dict[str, str]:
    """Driver properties for a Unix-socket host (junixsocket's factory and the socket file)."""
    if not is_unix_socket(conn.host):
        return {}
    return {"socketFactory": UNIX_SOCKET_FACTORY,
            "socketFactoryArg": os.path.join(conn.host, f".s.PGSQL.{conn.port}")}
