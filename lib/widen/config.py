"""Typed configuration loaded from YAML.

The YAML text is parsed first; then ``${NAME}`` and ``${NAME:-default}`` are replaced from the
environment inside the parsed string values, so a value from the environment can never change the
file's structure or show up in a parse error. Every key of every section is checked (type, range,
finite numbers, known names) and every error names the key. Passwords are never stored here: a
connection names the environment variable or the file that holds its password; ``password()``
reads it when a connection opens, and every value that came from one is registered with
``widen.secrets`` so no message, log line or summary can show it.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import ipaddress
import math
import os
import re
import types
import typing
import urllib.parse
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import yaml

from widen import secrets

if TYPE_CHECKING:
    from psycopg2.extensions import connection


class BadInput(ValueError):
    """Input the user must fix (exit code 2): a config value, an argument, a name that does not exist."""


class ConfigError(BadInput):
    """The configuration is invalid; the message names the key."""


_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(:-([^}]*))?\}")
#: libpq's sslmode values
SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")


def interpolate(text: str, env: dict[str, str] | None = None, key: str | None = None,
                secret_names: frozenset[str] = frozenset()) -> str:
    """``text`` with ``${NAME}`` / ``${NAME:-default}`` replaced from ``env`` (the environment).

    A variable in ``secret_names`` holds a password: it may only be read through ``password_env``,
    never put into a setting (where a message about the setting could show it, or part of it).
    """
    env = os.environ if env is None else env

    def substitute(match: re.Match) -> str:
        name, has_default, default = match.group(1), match.group(2), match.group(3)
        if name in secret_names:
            where = f"{key}: " if key else ""
            raise ConfigError(f"{where}${{{name}}} holds a password; a password is only read through "
                              "password_env or password_file, never put into another setting")
        value = env.get(name)
        if value is None or (value == "" and has_default):
            if has_default:
                return default or ""
            where = f"{key}: " if key else ""
            raise ConfigError(f"{where}environment variable {name} is not set and has no default")
        return value

    return _ENV_REF.sub(substitute, text)


def _interpolate_tree(value: Any, env: dict[str, str], path: str, secret_names: frozenset[str]) -> Any:
    if isinstance(value, dict):
        return {k: _interpolate_tree(v, env, f"{path}.{k}" if path else str(k), secret_names)
                for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate_tree(v, env, f"{path}[{i}]", secret_names) for i, v in enumerate(value)]
    if isinstance(value, str):
        return interpolate(value, env, path, secret_names)
    return value


def _password_variables(raw: dict, env: dict[str, str]) -> frozenset[str]:
    """PGPASSWORD and every variable a connection names as its ``password_env``."""
    names = {"PGPASSWORD"}
    for side in ("source", "target"):
        section = raw.get(side)
        if isinstance(section, dict) and isinstance(section.get("password_env"), str):
            names.add(interpolate(section["password_env"], env, f"{side}.password_env").strip())
    return frozenset(n for n in names if n)


@dataclass(frozen=True)
class Connection:
    host: str | None
    port: int
    database: str
    user: str
    password_env: str | None = "PGPASSWORD"
    password_file: str | None = None
    sslmode: str | None = None
    #: the config key this connection came from (``source``/``target``), for error messages
    key: str = "connection"
    #: seconds to wait for the server to accept a session (libpq connect_timeout, JDBC connectTimeout)
    connect_timeout_seconds: float = 10.0
    #: backfill reads: seconds a read may wait for the next rows before the socket is given up (0: never)
    socket_timeout_seconds: float = 600.0
    #: set by the job that opens it (``backfill.statement_timeout_seconds`` …), not by this section
    statement_timeout_seconds: float = 0.0

    def session_options(self) -> str:
        """Server settings every session of this connection starts with (libpq/JDBC ``options``):
        the rendering pinned whatever the server, database or role defaults say (doubles exact:
        ``extra_float_digits`` 3 prints the shortest exact text from 12 on, and pgjdbc sets it only
        on servers before 12; UTC; ISO dates), and the statement timeout."""
        options = "-c extra_float_digits=3 -c TimeZone=UTC -c DateStyle=ISO,MDY"
        if self.statement_timeout_seconds > 0:
            options += f" -c statement_timeout={round(self.statement_timeout_seconds * 1000)}"
        return options

    def password(self) -> str | None:
        if self.password_file:
            try:
                secret = Path(self.password_file).read_text(encoding="utf-8").strip()
            except OSError as err:
                raise ConfigError(f"{self.key}.password_file: cannot read {self.password_file!r} "
                                  f"({err.strerror or type(err).__name__})") from None
            secrets.remember(secret)
            return secret or None
        if self.password_env:
            secret = os.environ.get(self.password_env) or None
            secrets.remember(secret)
            return secret
        return None

    def psycopg_params(self) -> dict:
        params = {"host": self.host, "port": self.port, "dbname": self.database, "user": self.user,
                  "application_name": "widen"}
        secret = self.password()
        if secret:
            params["password"] = secret
        if self.sslmode:
            params["sslmode"] = self.sslmode
        params["connect_timeout"] = max(1, round(self.connect_timeout_seconds))
        params["options"] = self.session_options()
        return params

    def jdbc_url(self) -> str:
        """``jdbc:postgresql://host:port/database``, built by an encoder (``_jdbc_host``, quoting)."""
        database = urllib.parse.quote(self.database, safe="")
        return f"jdbc:postgresql://{_jdbc_host(self.host)}:{self.port}/{database}"

    def jdbc_properties(self) -> dict:
        props = {"user": self.user, "driver": "org.postgresql.Driver", "ApplicationName": "widen",
                 "connectTimeout": str(max(1, round(self.connect_timeout_seconds))),
                 "loginTimeout": str(max(1, round(self.connect_timeout_seconds))),
                 "socketTimeout": str(round(self.socket_timeout_seconds)), "tcpKeepAlive": "true",
                 **_jdbc_socket_properties(self)}
        secret = self.password()
        if secret:
            props["password"] = secret
        if self.sslmode:
            props["sslmode"] = self.sslmode
        props["options"] = self.session_options()
        return props

    def describe(self) -> str:
        """Safe for logs: never includes the password. No host is libpq's default, a Unix socket."""
        return f"{self.user}@{self.host or '<default Unix socket>'}:{self.port}/{self.database}"


# --- the JDBC side of a connection -----------------------------------------------------------------
# Built by an encoder, never by pasting text: an IPv6 literal goes in brackets, a database name with
# ``?``, ``/``, ``%``, spaces or non-ASCII characters is percent-encoded (pgjdbc decodes it), and a
# host that is a directory (libpq's way to name a Unix socket, e.g. ``PGHOST=/var/run/postgresql``)
# goes through junixsocket's socket factory, which pgjdbc supports, to ``<dir>/.s.PGSQL.<port>``.

UNIX_SOCKET_FACTORY = "org.newsclub.net.unix.AFUNIXSocketFactory$FactoryArg"


def _is_unix_socket(host: str | None) -> bool:
    return bool(host) and host.startswith("/")


def _jdbc_host(host: str | None) -> str:
    if not host or _is_unix_socket(host):
        return "localhost"            # not used for a socket: the factory decides where to go
    try:
        if ipaddress.ip_address(host.split("%")[0]).version == 6:
            return f"[{host}]"
    except ValueError:
        pass
    return host


def _jdbc_socket_properties(conn: connection) -> dict[str, str]:
    """Driver properties for a Unix-socket host (junixsocket's factory and the socket file)."""
    if not _is_unix_socket(conn.host):
        return {}
    return {"socketFactory": UNIX_SOCKET_FACTORY,
            "socketFactoryArg": os.path.join(conn.host, f".s.PGSQL.{conn.port}")}


def _meta(**kwargs) -> dict:
    return kwargs


@dataclass(frozen=True)
class SourceConfig:
    connection: Connection
    schema: str = "tenant"
    table: str = "tbl_data_timeseries"
    order_column: str | None = None
    #: unused since the backfill reads by COPY; accepted so older configs still load
    fetch_size: int = field(default=50000, metadata=_meta(minimum=1))
    #: ``postgres`` (the narrow table over JDBC/psycopg2) or ``delta`` (a Delta table of narrow
    #: rows, streaming only: ``readStream`` on ``delta_path`` or the catalog table ``delta_table``)
    kind: str = field(default="postgres", metadata=_meta(choices=("postgres", "delta")))
    delta_path: str | None = None
    delta_table: str | None = None
    #: how the stream reads a PostgreSQL source: ``poll`` (new rows by ``order_column`` or
    #: created_time) or ``cdc`` (every insert, update and delete from a logical replication slot,
    #: PostgreSQL 10+ with wal_level = logical; docs/cdc.md)
    mode: str = field(default="poll", metadata=_meta(choices=("poll", "cdc")))
    #: ``cdc``: the replication slot and publication widen makes and reads (default: from
    #: ``stream.query_name``, ``widen_<name>_<hash>``)
    slot: str | None = None
    publication: str | None = None


@dataclass(frozen=True)
class TargetConfig:
    connection: Connection
    schema: str = "tenant"
    catalog_schema: str = "widen"
    wide_table_template: str = "tbl_data_timeseries_{ship_id}"
    max_columns_per_table: int = field(default=1500, metadata=_meta(minimum=1, maximum=1599))
    max_row_bytes: int = field(default=6000, metadata=_meta(minimum=1))
    #: ``postgres`` (wide tables in ``schema`` of the target database) or ``delta`` (one Delta table
    #: per ship and part under ``delta_root``, or in the metastore database ``delta_database``); the
    #: catalog and ledgers stay in the target database's ``catalog_schema`` either way
    kind: str = field(default="postgres", metadata=_meta(choices=("postgres", "delta")))
    delta_root: str | None = None
    delta_database: str | None = None
    #: DDL on a table readers use (ADD COLUMN, CREATE, DROP) waits at most this long for its lock
    #: per try, so no reader ever queues behind widen for longer
    lock_timeout_seconds: float = field(default=2.0, metadata=_meta(above=0))
    #: ... and is retried with backoff for at most this long before the job reports who holds it
    ddl_max_wait_seconds: float = field(default=120.0, metadata=_meta(minimum=0))
    #: ``text`` (every wide column text: the cell is the value as PostgreSQL prints it) or ``typed``
    #: (a channel seen with one value format gets double precision / bigint / boolean / text; a value
    #: that would not print back as its text turns its column to text first: ``core.typed``)
    column_types: str = field(default="text", metadata=_meta(choices=("text", "typed")))

    @property
    def is_delta(self) -> bool:
        return self.kind == "delta"

    @property
    def typed(self) -> bool:
        return self.column_types == "typed"

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
    chunk_hours: float = field(default=24.0, metadata=_meta(above=0))
    partitions_per_chunk: int = field(default=4, metadata=_meta(minimum=1))
    #: a chunk bigger than this many narrow rows per partition is read with more partitions, so
    #: a worker's memory stays bounded whatever the ship's size
    max_rows_per_partition: int = field(default=500_000, metadata=_meta(minimum=1))
    parallel_chunks: int = field(default=2, metadata=_meta(minimum=1))
    max_attempts: int = field(default=3, metadata=_meta(minimum=1))
    retry_backoff_seconds: float = field(default=2.0, metadata=_meta(minimum=0))
    progress_seconds: float = field(default=10.0, metadata=_meta(above=0))
    #: after this many connection failures in a row the backfill stops scheduling chunks (exit 1)
    max_connection_failures: int = field(default=3, metadata=_meta(minimum=1))
    #: server-side limit for one statement of the backfill (0: none)
    statement_timeout_seconds: float = field(default=3600.0, metadata=_meta(minimum=0))
    #: what a ship's wide tables get analyzed for when its chunks are done: ``created_time`` (the
    #: channels' statistics then come from autovacuum; all columns where it is off) or ``all``
    analyze: str = field(default="created_time", metadata=_meta(choices=("created_time", "all")))


@dataclass(frozen=True)
class StreamConfig:
    query_name: str = "widen-stream"
    checkpoint: str | None = None          # default: <home>/checkpoints/<query_name>
    trigger_seconds: float = field(default=5.0, metadata=_meta(minimum=0))
    buckets: int = field(default=2, metadata=_meta(minimum=1))
    settle_seconds: float = field(default=2.0, metadata=_meta(minimum=0))
    overlap_seconds: float = field(default=60.0, metadata=_meta(minimum=0))
    #: where a new query starts: ``latest`` (the live tail; the backfill covers what came before),
    #: ``earliest``, an ISO timestamp (created_time mode) or an id (order_column mode)
    start: str = "latest"
    #: rows whose created_time is more than this behind the newest seen are dropped as late,
    #: counted in ``stream_batches.late_rows`` and left for reconcile; also bounds de-dup state
    watermark_seconds: float = field(default=600.0, metadata=_meta(above=0))
    #: partitions of the de-dup state (and the stream's shuffle); fixed when the checkpoint is new
    state_partitions: int = field(default=2, metadata=_meta(minimum=1))
    #: Prometheus metrics: an HTTP port (0 = none) and/or a textfile for node_exporter
    metrics_port: int = field(default=0, metadata=_meta(minimum=0, maximum=65535))
    metrics_host: str = "127.0.0.1"
    metrics_textfile: str | None = None
    #: admission control: a micro-batch reads at most about this many narrow rows, so a backlog
    #: drains in bounded batches (one created_time holding more rows is read whole)
    max_rows_per_batch: int = field(default=100_000, metadata=_meta(minimum=1))
    #: source.mode cdc: WAL the replication slot keeps on the source (bytes) above which every
    #: batch logs a warning (also the metric ``widen_stream_slot_retained_wal_bytes``)
    slot_wal_warn_bytes: int = field(default=1 << 30, metadata=_meta(minimum=1))
    #: a failed micro-batch is retried (the query restarted from its checkpoint) this many times,
    #: with backoff, before the stream exits 1
    max_batch_attempts: int = field(default=5, metadata=_meta(minimum=1))
    retry_backoff_seconds: float = field(default=5.0, metadata=_meta(minimum=0))
    #: server-side limit for one statement of the stream (0: none)
    statement_timeout_seconds: float = field(default=600.0, metadata=_meta(minimum=0))


@dataclass(frozen=True)
class ReconcileConfig:
    bucket_hours: float = field(default=1.0, metadata=_meta(above=0))
    #: a differing range of at most this many timestamps is compared timestamp by timestamp
    leaf_times: int = field(default=256, metadata=_meta(minimum=1))
    max_reported_cells: int = field(default=50, metadata=_meta(minimum=1))
    #: Spark tasks running ships' bucket queries at once
    parallel_ships: int = field(default=4, metadata=_meta(minimum=1))
    #: --repair reads the source in pieces of at most this many narrow rows (one transaction each)
    repair_rows_per_piece: int = field(default=200_000, metadata=_meta(minimum=1))
    #: server-side limit for one statement of reconcile (0: none)
    statement_timeout_seconds: float = field(default=3600.0, metadata=_meta(minimum=0))


@dataclass(frozen=True)
class CutoverConfig:
    #: the stream's freshness lag (now - the newest created_time it wrote) above which ``status``
    #: asks for attention and ``cutover`` refuses
    max_lag_seconds: float = field(default=60.0, metadata=_meta(above=0))
    #: ``cutover`` needs a clean reconcile of the ship's whole history through a bound at most this
    #: old; when the last one is older it runs that reconcile itself
    max_verify_age_seconds: float = field(default=900.0, metadata=_meta(minimum=0))
    #: reader views (one per ship, over the narrow table until the switch, over its wide tables
    #: after): ``auto`` makes them for a PostgreSQL target that can read the narrow table, ``off``
    views: str = field(default="auto", metadata=_meta(choices=("auto", "off")))
    #: where the views live (default: ``target.schema``) and their names (the naming rules of tables)
    view_schema: str | None = None
    view_template: str = "v_data_timeseries_{ship_id}"
    #: the narrow table as the target database sees it (e.g. a postgres_fdw foreign table), when
    #: source and target are not the same database
    narrow_schema: str | None = None
    narrow_table: str | None = None


@dataclass(frozen=True)
class MetricsConfig:
    #: a Pushgateway (``http://host:9091``) every job pushes its metrics to, grouped by job and instance
    pushgateway: str | None = None
    #: a directory for node_exporter's textfile collector: each job writes ``widen_<job>[_<instance>].prom``
    textfile_dir: str | None = None
    #: the ``instance`` of the Pushgateway group and the textfile's suffix (default: the host name; give
    #: runs of one job on one host for different ships different instances, or they replace each other)
    instance: str | None = None
    #: how often a running job sends its figures (and once when it ends)
    push_seconds: float = field(default=15.0, metadata=_meta(above=0))
    push_timeout_seconds: float = field(default=5.0, metadata=_meta(above=0))


@dataclass(frozen=True)
class SparkConfig:
    master: str = "local[*]"
    conf: dict = field(default_factory=dict)
    app_name: str = field(default="widen", metadata=_meta(internal=True))


@dataclass(frozen=True)
class Config:
    source: SourceConfig
    target: TargetConfig
    backfill: BackfillConfig = field(default_factory=BackfillConfig)
    stream: StreamConfig = field(default_factory=StreamConfig)
    reconcile: ReconcileConfig = field(default_factory=ReconcileConfig)
    cutover: CutoverConfig = field(default_factory=CutoverConfig)
    spark: SparkConfig = field(default_factory=SparkConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
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

    def with_connections(self, source: Connection, target: Connection) -> Config:
        return replace(self, source=replace(self.source, connection=source),
                       target=replace(self.target, connection=target))

    def for_job(self, job: str) -> Config:
        """This config with the job's ``statement_timeout_seconds`` on both connections."""
        section = getattr(self, job, None)
        seconds = getattr(section, "statement_timeout_seconds", 0.0)
        return self.with_connections(replace(self.source.connection, statement_timeout_seconds=seconds),
                                     replace(self.target.connection, statement_timeout_seconds=seconds))


# --- validation ---------------------------------------------------------------------------------

def _kind_name(value: Any) -> str:
    return {dict: "a mapping", list: "a list", bool: "true/false", type(None): "nothing"}.get(
        type(value), type(value).__name__)


def _value(key: str, value: Any, kind: Any, meta: dict) -> Any:
    """``value`` checked and converted to ``kind`` (int, float, str, bool, dict, or X | None)."""
    optional = typing.get_origin(kind) in (typing.Union, types.UnionType)
    if optional:
        kind = next(k for k in typing.get_args(kind) if k is not type(None))
        if value is None or value == "":
            return None
    if kind is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of settings, got {_kind_name(value)}")
        for k, v in value.items():
            if isinstance(v, (dict, list)) or v is None:
                raise ConfigError(f"{key}.{k}: expected a single value, got {_kind_name(v)}")
        return {str(k): str(v).lower() if isinstance(v, bool) else str(v) for k, v in value.items()}
    if isinstance(value, (dict, list)):
        raise ConfigError(f"{key}: expected {kind.__name__}, got {_kind_name(value)}")
    if kind is str:
        text = str(value)
        if not text:
            raise ConfigError(f"{key}: must not be empty")
        if "choices" in meta and text not in meta["choices"]:
            raise ConfigError(f"{key}: expected one of {', '.join(meta['choices'])}, got {text!r}")
        return text
    if kind in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        try:
            number = float(value) if kind is float else _integer(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected {'a whole number' if kind is int else 'a number'}, "
                              f"got {value!r}") from None
        if kind is float and not math.isfinite(number):
            raise ConfigError(f"{key}: must be a finite number, got {value!r}")
        if "above" in meta and not number > meta["above"]:
            raise ConfigError(f"{key}: must be greater than {meta['above']}, got {value!r}")
        if "minimum" in meta and number < meta["minimum"]:
            raise ConfigError(f"{key}: must be at least {meta['minimum']}, got {value!r}")
        if "maximum" in meta and number > meta["maximum"]:
            raise ConfigError(f"{key}: must be at most {meta['maximum']}, got {value!r}")
        return number
    raise TypeError(kind)


def _integer(value: Any) -> int:
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError(value)
        return int(value)
    return int(str(value).strip())


T = TypeVar("T")


def _build(cls: type[T], raw: dict, prefix: str, **given: Any) -> T:
    """An instance of the dataclass ``cls`` from the mapping ``raw`` (keys checked, values typed)."""
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls) if f.name not in given
             and not f.metadata.get("internal")}
    values = dict(given)
    for name, value in raw.items():
        if name not in known:
            continue
        f = known[name]
        if value is None:
            continue
        values[name] = _value(f"{prefix}.{name}", value, hints[name], dict(f.metadata))
    return cls(**values)


def _section(raw: dict, key: str) -> dict:
    value = raw.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{key}: expected a mapping, got {_kind_name(value)}")
    return value


def _check_keys(section: dict, prefix: str, allowed: set[str], hint: dict[str, str] | None = None) -> None:
    extra = sorted(str(k) for k in set(section) - allowed)
    if extra:
        notes = [f"{k} ({hint[k]})" if hint and k in hint else k for k in extra]
        raise ConfigError(f"{prefix}: unknown key(s) {', '.join(notes)}; known: {', '.join(sorted(allowed))}")


_CONNECTION_KEYS = {"host", "port", "database", "user", "password_env", "password_file", "sslmode",
                    "connect_timeout_seconds", "socket_timeout_seconds"}


def _fields(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls) if not f.metadata.get("internal")} - {"connection"}


def _connection(section: dict, prefix: str, env: dict[str, str]) -> Connection:
    if "password" in section:
        raise ConfigError(f"{prefix}.password: passwords are not read from the config file; "
                          f"use {prefix}.password_env or {prefix}.password_file")

    def get(name: str, kind: type, default: Any, **meta: Any) -> Any:
        value = section.get(name)
        return default if value is None or value == "" else _value(f"{prefix}.{name}", value, kind, meta)

    conn = Connection(
        host=get("host", str, None), port=get("port", int, 5432, minimum=1, maximum=65535),
        database=get("database", str, "widen"), user=get("user", str, "postgres"),
        password_env=get("password_env", str, None) if "password_env" in section else "PGPASSWORD",
        password_file=get("password_file", str, None), sslmode=get("sslmode", str, None, choices=SSL_MODES),
        key=prefix, connect_timeout_seconds=get("connect_timeout_seconds", float, 10.0, above=0),
        socket_timeout_seconds=get("socket_timeout_seconds", float, 600.0, minimum=0))
    if conn.password_env:
        secrets.remember(env.get(conn.password_env))
    return conn


def _check_start(stream: StreamConfig, source: SourceConfig) -> None:
    start = stream.start.strip().lower()
    if start in ("latest", "earliest"):
        return
    if source.kind == "delta" or source.order_column:
        if re.fullmatch(r"-?\d+", start):
            return
        if source.kind != "delta":
            raise ConfigError(f"stream.start: expected latest, earliest or an id of {source.order_column} "
                              f"(source.order_column), got {stream.start!r}")
    try:
        dt.datetime.fromisoformat(stream.start.strip().replace("Z", "+00:00"))
    except ValueError:
        versions = " or a table version" if source.kind == "delta" else ""
        raise ConfigError(f"stream.start: expected latest, earliest{versions} or an ISO timestamp "
                          f"(e.g. 2026-11-23T04:20:00Z), got {stream.start!r}") from None


def parse(raw: dict, env: dict[str, str] | None = None) -> Config:
    if not isinstance(raw, dict):
        raise ConfigError(f"config: expected a mapping at the top level, got {_kind_name(raw)}")
    env = dict(os.environ) if env is None else env
    secret_names = _password_variables(raw, env)
    for name in secret_names:
        secrets.remember(env.get(name))
    raw = _interpolate_tree(raw, env, "", secret_names)
    top = {"source", "target", "backfill", "stream", "reconcile", "cutover", "spark", "metrics", "embedded",
           "home", "jars_dir"}
    _check_keys(raw, "config", top)
    src, tgt = _section(raw, "source"), _section(raw, "target")
    _check_keys(src, "source", _CONNECTION_KEYS | _fields(SourceConfig) | {"password"},
                {k: "a target key" for k in _fields(TargetConfig)})
    _check_keys(tgt, "target", _CONNECTION_KEYS | _fields(TargetConfig) | {"password"},
                {k: "a source key" for k in _fields(SourceConfig)})
    source = _build(SourceConfig, src, "source", connection=_connection(src, "source", env))
    if source.kind == "delta" and not (source.delta_path or source.delta_table):
        raise ConfigError("source.kind is delta: set source.delta_path or source.delta_table")
    if source.mode == "cdc" and source.kind != "postgres":
        raise ConfigError("source.mode cdc reads a PostgreSQL replication slot: source.kind must be postgres")
    if source.slot is not None and not re.fullmatch(r"[a-z0-9_]{1,63}", source.slot):
        raise ConfigError(f"source.slot: a replication slot name is 1-63 lower-case letters, digits and "
                          f"underscores, got {source.slot!r}")
    target = _build(TargetConfig, tgt, "target", connection=_connection(tgt, "target", env))
    if source.mode == "cdc" and target.is_delta:
        raise ConfigError("source.mode cdc writes updates and deletes into PostgreSQL wide tables; a Delta "
                          "target (target.kind delta) takes source.mode poll for now")
    if "{ship_id}" not in target.wide_table_template:
        raise ConfigError("target.wide_table_template: must contain {ship_id}")
    if target.is_delta and bool(target.delta_root) == bool(target.delta_database):
        raise ConfigError("target.kind is delta: set exactly one of target.delta_root (a path or URI under "
                          "which each wide table is a Delta table) or target.delta_database (a metastore "
                          "database)")
    sections = {}
    for name, cls in (("backfill", BackfillConfig), ("stream", StreamConfig), ("reconcile", ReconcileConfig),
                      ("cutover", CutoverConfig), ("spark", SparkConfig), ("metrics", MetricsConfig)):
        section = _section(raw, name)
        _check_keys(section, name, _fields(cls))
        sections[name] = _build(cls, section, name)
    stream: StreamConfig = sections["stream"]
    _check_start(stream, source)
    if not source.order_column and stream.watermark_seconds < stream.overlap_seconds:
        # The overlap re-reads rows the stream has seen; behind the watermark they would be
        # counted as late instead of being recognised as re-reads.
        raise ConfigError(f"stream.watermark_seconds ({stream.watermark_seconds:g}) must be at least "
                          f"stream.overlap_seconds ({stream.overlap_seconds:g}) without source.order_column")
    cutover: CutoverConfig = sections["cutover"]
    if "{ship_id}" not in cutover.view_template:
        raise ConfigError(f"cutover.view_template: must contain {{ship_id}}, got {cutover.view_template!r}")
    if (cutover.view_schema or target.schema) == target.schema and cutover.view_template == target.wide_table_template:
        raise ConfigError("cutover.view_template: the views would take the wide tables' names "
                          "(target.wide_table_template) in the same schema; give them another template or schema")
    if bool(cutover.narrow_schema) != bool(cutover.narrow_table):
        raise ConfigError("cutover.narrow_schema and cutover.narrow_table: set both or neither")
    _check_pushgateway(sections["metrics"].pushgateway)
    embedded = _value("embedded", raw.get("embedded") or "auto", str, {"choices": ("auto", "always", "never")})
    return Config(source=source, target=target, **sections, embedded=embedded,
                  home=_value("home", raw.get("home") or ".local", str, {}),
                  jars_dir=_value("jars_dir", raw.get("jars_dir") or "jars", str, {}))


def _check_pushgateway(gateway: str | None) -> None:
    if not gateway:
        return
    parts = urllib.parse.urlsplit(gateway if "://" in gateway else f"http://{gateway}")
    if parts.username is not None or parts.password is not None or "@" in gateway:
        raise ConfigError("metrics.pushgateway: a user or password in the address is not supported (it would "
                          "show in logs); give the Pushgateway's host:port")
    try:
        port_ok = parts.port is None or 0 < parts.port
    except ValueError:
        port_ok = False
    if parts.scheme not in ("http", "https") or not parts.hostname or not port_ok or any(c.isspace() for c in gateway):
        raise ConfigError(f"metrics.pushgateway: expected host:port or http(s)://host:port[/path], got {gateway!r}")


def load(path: str | os.PathLike, env: dict[str, str] | None = None) -> Config:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"config file {path} cannot be read ({getattr(err, 'strerror', None) or err})") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(yaml_error(path, err)) from None
    if raw is None or raw == {}:
        # Not "all defaults": an empty file is a mistake (a failed template, a wrong path), and
        # running it would silently work on the embedded server instead of the intended one.
        raise ConfigError(f"config file {path} is empty: it needs at least the source and target "
                          "connections (see conf/local.yaml)")
    return parse(raw, env)


def yaml_error(path: Path, err: yaml.YAMLError) -> str:
    """``file:line:column: not valid YAML (what is wrong)`` on one line, without the text of the
    line (which may hold a password): PyYAML's message quotes it, so only its words are kept."""
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
    problem = getattr(err, "problem", None) or "syntax error"
    problem = " ".join(re.sub(r"'[^']*'|\"[^\"]*\"", "…", problem).split())
    return f"{where}: not valid YAML ({problem})"
