import pytest

from widen import config


def test_env_interpolation_with_defaults():
    env = {"PGHOST": "db.example", "EMPTY": ""}
    assert config.interpolate("${PGHOST}:${PGPORT:-5432}/${EMPTY:-fallback}", env) == "db.example:5432/fallback"
    with pytest.raises(config.ConfigError, match="MISSING"):
        config.interpolate("${MISSING}", env)


def test_errors_name_the_key(tmp_path):
    cases = {
        "backfill:\n  chunk_hours: -1\n": "backfill.chunk_hours",
        "source:\n  port: abc\n": "source.port",
        "target:\n  max_columns_per_table: 2000\n": "target.max_columns_per_table",
        "target:\n  wide_table_template: wide\n": "target.wide_table_template",
        "source:\n  password: hunter2\n": "source.password",
        "surprise: 1\n": "surprise",
        "embedded: sometimes\n": "embedded",
        "target:\n  kind: parquet\n": "target.kind",
        "target:\n  kind: delta\n": "target.delta_root",
        "target:\n  kind: delta\n  delta_root: /lake\n  delta_database: db\n": "target.delta_database",
    }
    for text, key in cases.items():
        path = tmp_path / "c.yaml"
        path.write_text(text)
        with pytest.raises(config.ConfigError, match=key.replace(".", r"\.")) as err:
            config.load(path, env={})
        assert "hunter2" not in str(err.value)


def test_password_comes_from_env_or_file_and_is_never_shown(tmp_path, monkeypatch):
    secret_file = tmp_path / "pw"
    secret_file.write_text("from-file\n")
    monkeypatch.setenv("MY_PW", "from-env")
    env_conn = config.Connection("h", 5432, "d", "u", password_env="MY_PW")
    file_conn = config.Connection("h", 5432, "d", "u", password_env=None, password_file=str(secret_file))
    assert env_conn.psycopg_params()["password"] == "from-env"
    assert file_conn.jdbc_properties()["password"] == "from-file"
    for conn in (env_conn, file_conn):
        assert "from-" not in repr(conn) and "from-" not in conn.describe() and "from-" not in conn.jdbc_url()


def test_local_yaml_uses_libpq_variables_when_set_and_embedded_otherwise():
    from pathlib import Path

    local = Path(__file__).resolve().parents[1] / "conf" / "local.yaml"
    env = {"PGHOST": "db.internal", "PGPORT": "6543", "PGDATABASE": "fleet", "PGUSER": "migrator"}
    cfg = config.load(local, env=env)
    assert not cfg.uses_embedded
    for conn in (cfg.source.connection, cfg.target.connection):
        assert (conn.host, conn.port, conn.database, conn.user) == ("db.internal", 6543, "fleet", "migrator")
        assert conn.password_env == "PGPASSWORD"
    assert config.load(local, env={}).uses_embedded
    assert config.load(Path(local).with_name("example-cluster.yaml"),
                       env={"WIDEN_SOURCE_HOST": "a", "WIDEN_TARGET_HOST": "b"}).source.connection.host == "a"


def test_delta_target_has_no_row_width_limit_and_folds_case():
    from widen.core.layout import ShipLayout
    from widen.targets import layout_rules

    delta = config.parse({"target": {"kind": "delta", "delta_root": "s3a://lake/wide"}}).target
    postgres = config.parse({}).target
    assert delta.is_delta and delta.wide_location == "s3a://lake/wide" and not postgres.is_delta
    wide = {f"channel {i}": ("String", 1900.0) for i in range(4)}      # 4 x 1.9 KB: over a PG row budget
    in_delta, in_postgres = ShipLayout("ship"), ShipLayout("ship")
    layout_rules(delta).grow(in_delta, wide)
    layout_rules(postgres).grow(in_postgres, wide)
    assert len(in_delta.parts) == 1 and len(in_postgres.parts) == 2
    layout_rules(delta).grow(in_delta, {"Case": (None, None), "case": (None, None)})
    layout_rules(postgres).grow(in_postgres, {"Case": (None, None), "case": (None, None)})
    assert in_delta.channels["Case"].part != in_delta.channels["case"].part     # unique regardless of case
    assert in_postgres.channels["Case"].part == in_postgres.channels["case"].part


@pytest.mark.parametrize("gateway", ["http://user:s3cr3t-pw@gw:9091", "user:s3cr3t-pw@gw:9091",
                                     "http:////user:s3cr3t-pw@gw:9091", "ftp://gw:9091", "gw: 9091",
                                     "http://gw:99999"])
def test_pushgateway_address_checked_and_never_echoes_a_password(tmp_path, gateway):
    path = tmp_path / "c.yaml"
    path.write_text(f"metrics:\n  pushgateway: '{gateway}'\n")
    with pytest.raises(config.ConfigError, match=r"metrics\.pushgateway") as err:
        config.load(path, env={})
    assert "s3cr3t" not in str(err.value)


def test_metrics_defaults_and_a_good_pushgateway(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("metrics:\n  pushgateway: http://gw.example:9091/\n  textfile_dir: /var/lib/node_exporter\n")
    loaded = config.load(path, env={})
    assert (loaded.metrics.pushgateway, loaded.metrics.textfile_dir, loaded.metrics.push_seconds) == (
        "http://gw.example:9091/", "/var/lib/node_exporter", 15.0)
    assert config.load(tmp_path / "c.yaml", env={}).metrics.instance is None
