"""Wide targets: PostgreSQL tables (``postgres``) and Delta tables (``delta``). ``open_target`` picks
the configured one; nothing outside this package asks which kind it is."""
from __future__ import annotations

from typing import TYPE_CHECKING

from widen.catalog import ships
from widen.config import TargetConfig
from widen.core.layout import LayoutRules, ShipLayout
from widen.pg import db
from widen.targets.base import ChunkWrite, WideChecksums, WideTarget

if TYPE_CHECKING:
    from psycopg2.extensions import connection, cursor
    from pyspark.sql import SparkSession


def open_target(cfg: TargetConfig, spark: SparkSession | None = None) -> WideTarget:
    if cfg.kind == "delta":
        from widen.targets.delta import DeltaTarget

        return DeltaTarget(spark, cfg)
    from widen.targets.postgres import PostgresTarget

    return PostgresTarget(cfg)


def needs_spark(cfg: TargetConfig) -> bool:
    """Whether the configured target reaches its tables through a Spark session."""
    return open_target(cfg).needs_spark


def layout_rules(cfg: TargetConfig) -> LayoutRules:
    """The configured target's layout rules (no Spark session needed)."""
    return open_target(cfg).rules


def ensure_tables_ddl(conn: connection, target: WideTarget, layout: ShipLayout, what: str,
                      max_wait: float | None = None) -> bool:
    """The ship's tables and columns made in a DDL transaction of its own (``db.run_ddl``: short
    lock timeout, retried, the holder named in the end), under the ship's write lock. False when
    the ship is rolled back (nothing is made)."""
    def ddl(cur: cursor) -> bool:
        if not ships.lock_ship_for_write(cur, target.cfg.catalog_schema, layout.ship_id):
            return False
        target.ensure_tables(conn, layout)
        return True

    return db.run_ddl(conn, target.cfg, ddl, target.ddl_tables(layout), what, max_wait)


def prepare_ship(conn: connection, target: WideTarget, ship: str, channels: list[str],
                 known: dict[str, ShipLayout] | None = None) -> ShipLayout | None:
    """The ship's layout with a column for every channel in ``channels``: catalog rows, tables and
    columns made in a DDL transaction of its own when needed (``db.run_ddl``). ``known`` caches
    layouts between calls (a layout only grows). None when the ship is rolled back."""
    layout = (known or {}).get(ship)
    if layout is not None and all(c in layout.channels for c in channels):
        return layout

    def ddl(cur: cursor) -> ShipLayout | None:
        if not ships.lock_ship_for_write(cur, target.cfg.catalog_schema, ship):
            return None
        grown = target.layouts.extend(conn, ship, {c: (None, None) for c in channels})
        target.ensure_tables(conn, grown)
        return grown

    layout = db.run_ddl(conn, target.cfg, ddl, lambda: target.ddl_tables(target.layouts.load(conn, ship)),
                        f"ship {ship!r}: tables and columns")
    if known is not None:
        if layout is None:
            known.pop(ship, None)
        else:
            known[ship] = layout
    return layout


__all__ = ["ChunkWrite", "WideChecksums", "WideTarget", "ensure_tables_ddl", "layout_rules", "needs_spark", "open_target",
           "prepare_ship"]
