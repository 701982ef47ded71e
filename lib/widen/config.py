"""Typed configuration loaded from YAML.

``${NAME}`` and ``${NAME:-default}`` are replaced from the environment before parsing. Every error
names the key that is wrong. Passwords are never stored here: a connection names the environment
variable or the file that holds its password, and ``password()`` reads it when a connection opens.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """The configuration is invalid; the message names the key."""


_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(:-([^}]*))?\}")


def interpolate(text: str, env: dict[str, str] | None = None) -> str:
    env = os.environ if env is None else env

    def substitute(match: re.Match) -> str:
        name, has_default, default = match.group(1), match.group(2), match.group(3)
        value = env.get(name)
        if value is None or (value == "" and has_default):
            if has_default:
                return default or ""
            raise ConfigError(f"environment variable {name} is not set and has no default")
        return value

    return _ENV_REF.sub(substitute, text)


@dataclass(frozen=True)
class Connection:
    host: str | None
    port: int
    database: str
    user: str
    password_env: str | None = "PGPASSWORD"
    password_file: str | None = None
    sslmode: str | None = None

    def password(self) -> str | None:
        if self.password_file:
            return Path(self.password_file).read_text().strip() or None
        if self.password_env:
            return os.environ.get(self.password_env) or None
        return None

    def psycopg_params(self) -> dict:
        params = {"host": self.host, "port": self.port, "dbname": self.database, "user": self.user,
                  "application_name": "widen"}
        secret = self.password()
        if secret:
            params["password"] = secret
        if self.sslmode:
            params["sslmode"] = self.sslmode
        return params

    def jdbc_url(self) -> str:
        return f"jdbc:postgresql://{self.host}:{self.port}/{self.database}"

    def jdbc_properties(self) -> dict:
        props = {"user": self.user, "driver": "org.postgresql.Driver", "ApplicationName": "widen"}
        secret = self.password()
        if secret:
            props["password"] = secret
        if self.sslmode:
            props["sslmode"] = self.sslmode
        return props

    def describe(self) -> str:
        """Safe for logs: never includes the password."""
        return f"{self.user}@{self.host}:{self.port}/{self.database}"


@dataclass(frozen=True)
class SourceConfig:
    connection: Connection
    schema: str = "tenant"
    table: str = "tbl_data_timeseries"
    order_column: str | None = None
    fetch_size: int = 50000
    #: ``postgres`` (the narrow table over JDBC/psycopg2) or ``delta`` (a Delta table of narrow
    #: rows, streaming only: ``readStream`` on ``delta_path`` or the catalog table ``delta_table``)
    kind: str = "postgres"
    delta_path: str | None = None
    delta_table: str | None = None


@dataclass(frozen=True)
class TargetConfig:
    connection: Connection
    schema: str = "tenant"
    catalog_schema: str = "widen"
    wide_table_template: str = "tbl_data_timeseries_{ship_id}"
    max_columns_per_table: int = 1500
    max_row_bytes: int = 6000
    #: ``postgres`` (wide tables in ``schema`` of the target database) or ``delta`` (one Delta table
    #: per ship and part under ``delta_root``, or in the metastore database ``delta_database``); the
    #: catalog and ledgers stay in the target database's ``catalog_schema`` either way
    kind: str = "postgres"
    delta_root: str | None = None
    delta_database: str | None = None

    @property
    def is_delta(self) -> bool:
        return self.kind == "delta"

    @property
    def row_byte_limit(self) -> float:
        """The row-width budget of a part table: PostgreSQL's ~8 KB page; Delta (Parquet) has none."""
        return float("inf") if self.is_delta else self.max_row_bytes

    @property
    def wide_location(self) -> str:
        """What ``wide_tables.table_schema`` records: the schema, or the Delta root / database."""
        if not self.is_delta:
            return self.schema
        return self.delta_root or self.delta_database or ""


@dataclass(frozen=True)
class BackfillConfig:
    chunk_hours: float = 24.0
    partitions_per_chunk: int = 4
    #: a chunk bigger than this many narrow rows per partition is read with more partitions, so
    #: a worker's memory stays bounded whatever the ship's size
    max_rows_per_partition: int = 500_000
    parallel_chunks: int = 2
    max_attempts: int = 3
    retry_backoff_seconds: float = 2.0
    progress_seconds: float = 10.0


@dataclass(frozen=True)
class StreamConfig:
    query_name: str = "widen-stream"
    checkpoint: str | None = None          # default: <home>/checkpoints/<query_name>
    trigger_seconds: float = 5.0
    buckets: int = 2
    settle_seconds: float = 2.0
    overlap_seconds: float = 60.0
    #: where a new query starts: ``latest`` (the live tail; the backfill covers what came before),
    #: ``earliest``, an ISO timestamp (created_time mode) or an id (order_column mode)
    start: str = "latest"
    #: rows whose created_time is more than this behind the newest seen are dropped as late,
    #: counted in ``stream_batches.late_rows`` and left for reconcile; also bounds de-dup state
    watermark_seconds: float = 600.0
    #: partitions of the de-dup state (and the stream's shuffle); fixed when the checkpoint is new
    state_partitions: int = 2
    #: Prometheus metrics: an HTTP port (0 = none) and/or a textfile for node_exporter
    metrics_port: int = 0
    metrics_host: str = "127.0.0.1"
    metrics_textfile: str | None = None


@dataclass(frozen=True)
class ReconcileConfig:
    bucket_hours: float = 1.0
    #: a differing range of at most this many timestamps is compared timestamp by timestamp
    leaf_times: int = 256
    max_reported_cells: int = 50
    #: Spark tasks running ships' bucket queries at once
    parallel_ships: int = 4


@dataclass(frozen=True)
class SparkConfig:
    master: str = "local[*]"
    app_name: str = "widen"
    conf: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Config:
    source: SourceConfig
    target: TargetConfig
    backfill: BackfillConfig = field(default_factory=BackfillConfig)
    stream: StreamConfig = field(default_factory=StreamConfig)
    reconcile: ReconcileConfig = field(default_factory=ReconcileConfig)
    spark: SparkConfig = field(default_factory=SparkConfig)
    embedded: str = "auto"
    home: str = ".local"
    jars_dir: str = "jars"

    @property
    def uses_embedded(self) -> bool:
        if self.embedded == "always":
            return True
        if self.embedded == "never":
            return False
        return not self.source.connection.host or not self.target.connection.host

    def with_connections(self, source: Connection, target: Connection) -> "Config":
        return replace(self, source=replace(self.source, connection=source),
                       target=replace(self.target, connection=target))


def _section(raw: dict, key: str) -> dict:
    value = raw.get(key) or {}
    if not isinstance(value, dict):
        raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__}")
    return value


def _typed(section: dict, key: str, prefix: str, kind: type, default: Any, positive: bool = False):
    value = section.get(key, default)
    if value is None or value == "":
        return default
    try:
        value = kind(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{prefix}.{key}: expected {kind.__name__}, got {value!r}") from None
    if positive and value <= 0:
        raise ConfigError(f"{prefix}.{key}: must be greater than 0, got {value!r}")
    return value


def _connection(section: dict, prefix: str) -> Connection:
    known = {"host", "port", "database", "user", "password_env", "password_file", "sslmode"}
    if "password" in section:
        raise ConfigError(f"{prefix}.password: passwords are not read from the config file; "
                          f"use {prefix}.password_env or {prefix}.password_file")
    extra = set(section) - known - {"schema", "table", "order_column", "fetch_size", "kind", "delta_path",
                                    "delta_table", "catalog_schema", "wide_table_template",
                                    "max_columns_per_table", "max_row_bytes", "delta_root", "delta_database"}
    if extra:
        raise ConfigError(f"{prefix}: unknown key(s) {', '.join(sorted(extra))}")
    return Connection(
        host=str(section.get("host") or "") or None,
        port=_typed(section, "port", prefix, int, 5432, positive=True),
        database=str(section.get("database") or "widen"),
        user=str(section.get("user") or "postgres"),
        password_env=section.get("password_env", "PGPASSWORD") or None,
        password_file=section.get("password_file") or None,
        sslmode=section.get("sslmode") or None,
    )


def parse(raw: dict) -> Config:
    if not isinstance(raw, dict):
        raise ConfigError("config: expected a mapping at the top level")
    known = {"source", "target", "backfill", "stream", "reconcile", "spark", "embedded", "home", "jars_dir"}
    extra = set(raw) - known
    if extra:
        raise ConfigError(f"unknown top-level key(s) {', '.join(sorted(extra))}")
    src, tgt = _section(raw, "source"), _section(raw, "target")
    source = SourceConfig(
        connection=_connection(src, "source"),
        schema=str(src.get("schema") or "tenant"),
        table=str(src.get("table") or "tbl_data_timeseries"),
        order_column=src.get("order_column") or None,
        fetch_size=_typed(src, "fetch_size", "source", int, 50000, positive=True),
        kind=str(src.get("kind") or "postgres"),
        delta_path=src.get("delta_path") or None,
        delta_table=src.get("delta_table") or None,
    )
    if source.kind not in ("postgres", "delta"):
        raise ConfigError(f"source.kind: expected postgres or delta, got {source.kind!r}")
    if source.kind == "delta" and not (source.delta_path or source.delta_table):
        raise ConfigError("source.kind is delta: set source.delta_path or source.delta_table")
    template = str(tgt.get("wide_table_template") or "tbl_data_timeseries_{ship_id}")
    if "{ship_id}" not in template:
        raise ConfigError("target.wide_table_template: must contain {ship_id}")
    max_columns = _typed(tgt, "max_columns_per_table", "target", int, 1500, positive=True)
    if max_columns > 1599:
        raise ConfigError("target.max_columns_per_table: PostgreSQL allows 1,600 columns "
                          f"including created_time; got {max_columns}")
    target = TargetConfig(
        connection=_connection(tgt, "target"),
        schema=str(tgt.get("schema") or "tenant"),
        catalog_schema=str(tgt.get("catalog_schema") or "widen"),
        wide_table_template=template,
        max_columns_per_table=max_columns,
        max_row_bytes=_typed(tgt, "max_row_bytes", "target", int, 6000, positive=True),
        kind=str(tgt.get("kind") or "postgres"),
        delta_root=tgt.get("delta_root") or None,
        delta_database=tgt.get("delta_database") or None,
    )
    if target.kind not in ("postgres", "delta"):
        raise ConfigError(f"target.kind: expected postgres or delta, got {target.kind!r}")
    if target.is_delta and bool(target.delta_root) == bool(target.delta_database):
        raise ConfigError("target.kind is delta: set exactly one of target.delta_root (a path or URI under "
                          "which each wide table is a Delta table) or target.delta_database (a metastore "
                          "database)")
    bf = _section(raw, "backfill")
    extra = set(bf) - set(BackfillConfig.__dataclass_fields__)
    if extra:
        raise ConfigError(f"backfill: unknown key(s) {', '.join(sorted(extra))}")
    backfill = BackfillConfig(
        chunk_hours=_typed(bf, "chunk_hours", "backfill", float, 24.0, positive=True),
        partitions_per_chunk=_typed(bf, "partitions_per_chunk", "backfill", int, 4, positive=True),
        max_rows_per_partition=_typed(bf, "max_rows_per_partition", "backfill", int, 500_000,
                                      positive=True),
        parallel_chunks=_typed(bf, "parallel_chunks", "backfill", int, 2, positive=True),
        max_attempts=_typed(bf, "max_attempts", "backfill", int, 3, positive=True),
        retry_backoff_seconds=_typed(bf, "retry_backoff_seconds", "backfill", float, 2.0),
        progress_seconds=_typed(bf, "progress_seconds", "backfill", float, 10.0, positive=True),
    )
    st = _section(raw, "stream")
    extra = set(st) - set(StreamConfig.__dataclass_fields__)
    if extra:
        raise ConfigError(f"stream: unknown key(s) {', '.join(sorted(extra))}")
    stream = StreamConfig(
        query_name=str(st.get("query_name") or "widen-stream"),
        checkpoint=st.get("checkpoint") or None,
        trigger_seconds=_typed(st, "trigger_seconds", "stream", float, 5.0),
        buckets=_typed(st, "buckets", "stream", int, 2, positive=True),
        settle_seconds=_typed(st, "settle_seconds", "stream", float, 2.0),
        overlap_seconds=_typed(st, "overlap_seconds", "stream", float, 60.0),
        start=str(st.get("start") or "latest"),
        watermark_seconds=_typed(st, "watermark_seconds", "stream", float, 600.0, positive=True),
        state_partitions=_typed(st, "state_partitions", "stream", int, 2, positive=True),
        metrics_port=_typed(st, "metrics_port", "stream", int, 0),
        metrics_host=str(st.get("metrics_host") or "127.0.0.1"),
        metrics_textfile=st.get("metrics_textfile") or None,
    )
    if not source.order_column and stream.watermark_seconds < stream.overlap_seconds:
        # The overlap re-reads rows the stream has seen; behind the watermark they would be
        # counted as late instead of being recognised as re-reads.
        raise ConfigError(f"stream.watermark_seconds ({stream.watermark_seconds:g}) must be at least "
                          f"stream.overlap_seconds ({stream.overlap_seconds:g}) without source.order_column")
    rc = _section(raw, "reconcile")
    extra = set(rc) - set(ReconcileConfig.__dataclass_fields__)
    if extra:
        raise ConfigError(f"reconcile: unknown key(s) {', '.join(sorted(extra))}")
    reconcile = ReconcileConfig(
        bucket_hours=_typed(rc, "bucket_hours", "reconcile", float, 1.0, positive=True),
        leaf_times=_typed(rc, "leaf_times", "reconcile", int, 256, positive=True),
        max_reported_cells=_typed(rc, "max_reported_cells", "reconcile", int, 50, positive=True),
        parallel_ships=_typed(rc, "parallel_ships", "reconcile", int, 4, positive=True),
    )
    sp = _section(raw, "spark")
    spark = SparkConfig(master=str(sp.get("master") or "local[*]"),
                        app_name=str(sp.get("app_name") or "widen"),
                        conf={str(k): str(v) for k, v in (sp.get("conf") or {}).items()})
    embedded = str(raw.get("embedded") or "auto")
    if embedded not in ("auto", "always", "never"):
        raise ConfigError(f"embedded: expected auto, always or never, got {embedded!r}")
    return Config(source=source, target=target, backfill=backfill, stream=stream, reconcile=reconcile,
                  spark=spark,
                  embedded=embedded,
                  home=str(raw.get("home") or ".local"), jars_dir=str(raw.get("jars_dir") or "jars"))


def load(path: str | os.PathLike, env: dict[str, str] | None = None) -> Config:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist")
    try:
        raw = yaml.safe_load(interpolate(path.read_text(), env))
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    return parse(raw or {})
