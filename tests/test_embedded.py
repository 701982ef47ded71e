"""The embedded server helper: a relative home works, a second start reuses the server, stop stops it."""
import psycopg2

from widen import embedded


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
        assert embedded.stop("rel-home")
    assert embedded.status("rel-home") is None
