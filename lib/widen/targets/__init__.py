"""Wide targets: PostgreSQL tables (``postgres``) and Delta tables (``delta``). ``open_target`` picks
the configured one; nothing outside this package asks which kind it is."""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc

from widen.catalog import ships
from widen.catalog.layouts import lock_layout, record_text_columns
from widen.config import TargetConfig
from widen.core import typed
from widen.core.layout import LayoutRules, ShipLayout
from widen.pg import db
from widen.targets.base import ChunkWrite, WideChecksums, WideTarget

if TYPE_CHECKING:
    from psycopg2.extensions import connection, cursor
    from pyspark.sql import SparkSession

log = logging.getLogger(__name__)


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


def text_columns(conn: connection, target: WideTarget, ship: str, channels: list[str]) -> ShipLayout | None:
    """Turn the typed columns of ``channels`` to text (``core.typed``: a value they cannot hold
    exactly has come), in a DDL transaction of its own; the ship's layout as recorded after it
    (None when the ship is rolled back). Every cell keeps its text."""
    def ddl(cur: cursor) -> ShipLayout | None:
        if not ships.lock_ship_for_write(cur, target.cfg.catalog_schema, ship):
            return None
        with conn.cursor() as c:
            lock_layout(c, ship)
        layout = target.layouts.load(conn, ship)
        kinds = {ch: layout.channels[ch].column_type for ch in channels
                 if ch in layout.channels and layout.channels[ch].column_type != typed.TEXT}
        if kinds:
            target.text_columns(conn, layout, kinds)
            record_text_columns(cur, target.cfg.catalog_schema, ship, sorted(kinds))
            log.warning("ship %r: %d channel(s) met readings their typed column cannot take (a value format "
                        "the survey did not see, or a value it cannot hold exactly: %s); their columns are text now",
                        ship, len(kinds), ", ".join(repr(c) for c in sorted(kinds)[:5]))
            for ch in kinds:
                layout.channels[ch].column_type = typed.TEXT
        return layout

    return db.run_ddl(conn, target.cfg, ddl, lambda: target.ddl_tables(target.layouts.load(conn, ship)),
                      f"ship {ship!r}: columns to text")


def misfit_channels(layout: ShipLayout, rows: pa.Table) -> list[str]:
    """The channels of ``rows`` (``values.ROW_COLUMNS``: ``data_channel_id``, ``value`` and, where
    known, ``value_format``) with a reading their typed column cannot take: a value it cannot hold
    exactly, or a format it was not chosen for (the survey that chose it read only some rows)."""
    typed_channels = {c: ch.column_type for c, ch in layout.channels.items() if ch.column_type != typed.TEXT}
    if not typed_channels or not rows.num_rows:
        return []
    present = [c for c in pc.unique(rows.column("data_channel_id")).to_pylist() if c in typed_channels]
    misfit = []
    for channel in present:
        mine = rows.filter(pc.equal(rows.column("data_channel_id"), channel))
        if ("value_format" in mine.column_names
                and typed.other_format(typed_channels[channel], mine.column("value_format").combine_chunks())):
            misfit.append(channel)
        elif not typed.fits(typed_channels[channel], mine.column("value").combine_chunks()):
            misfit.append(channel)
    return misfit


def typed_check_columns(rows: pa.Table) -> pa.Table:
    """The columns of ``rows`` ``misfit_channels`` reads."""
    return rows.select([c for c in ("data_channel_id", "value", "value_format") if c in rows.column_names])


def prepare_ship(conn: connection, target: WideTarget, ship: str, channels: list[str],
                 known: dict[str, ShipLayout] | None = None, rows: pa.Table | None = None) -> ShipLayout | None:
    """The ship's layout with a column for every channel in ``channels``: catalog rows, tables and
    columns made in a DDL transaction of its own when needed (``db.run_ddl``). ``known`` caches
    layouts between calls (a layout only grows). None when the ship is rolled back. With ``rows``
    (``values.ROW_COLUMNS``, the values about to be written) a typed column that cannot hold one of
    them is turned to text first."""
    layout = (known or {}).get(ship)
    if layout is not None and all(c in layout.channels for c in channels):
        misfit = misfit_channels(layout, rows) if rows is not None else []
        if not misfit:
            return layout
        return _remember(known, ship, text_columns(conn, target, ship, misfit))

    def ddl(cur: cursor) -> ShipLayout | None:
        if not ships.lock_ship_for_write(cur, target.cfg.catalog_schema, ship):
            return None
        grown = target.layouts.extend(conn, ship, {c: (None, None) for c in channels})
        target.ensure_tables(conn, grown)
        return grown

    layout = db.run_ddl(conn, target.cfg, ddl, lambda: target.ddl_tables(target.layouts.load(conn, ship)),
                        f"ship {ship!r}: tables and columns")
    _remember(known, ship, layout)
    misfit = misfit_channels(layout, rows) if layout is not None and rows is not None else []
    if misfit:
        layout = _remember(known, ship, text_columns(conn, target, ship, misfit))
    return layout


def _remember(known: dict[str, ShipLayout] | None, ship: str, layout: ShipLayout | None) -> ShipLayout | None:
    """``layout`` into the cache (a rolled-back ship, None, leaves it), and back."""
    if known is not None:
        if layout is None:
            known.pop(ship, None)
        else:
            known[ship] = layout
    return layout


__all__ = ["ChunkWrite", "WideChecksums", "WideTarget", "ensure_tables_ddl", "layout_rules", "needs_spark", "open_target",
           "misfit_channels", "prepare_ship", "text_columns", "typed_check_columns"]
