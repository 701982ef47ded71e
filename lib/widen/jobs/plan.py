"""``plan``: what the migration will do, per ship, before it does it.

Narrow rows, time span, channels and formats, duplicate keys, rows that will be rejected, the
estimated wide row width and the channel -> column layout (split into part tables so each row fits
with headroom). Writes ``wide_tables`` and ``channel_columns``; creates no wide table.
"""
from __future__ import annotations

import time
from collections import defaultdict

import psycopg2
from psycopg2 import sql

from widen import catalog, db, errors, render
from widen.config import Config
from widen.jobs import EXIT_OK, EXIT_PROBLEM, Result, exclusive
from widen.session import resolve_connections
from widen.sources import chunk_index_warning, source_table


def _valid_rows_of(ship_ids: list[str] | None) -> tuple[sql.Composable, list]:
    """WHERE clause and parameters: valid rows, of the given ships only when some are given."""
    filters = [render.valid_row_predicate()]
    params: list = []
    if ship_ids:
        filters.append(sql.SQL("ship_id = ANY(%s)"))
        params.append(list(ship_ids))
    return sql.SQL(" AND ").join(filters), params


def channel_stats(conn, config: Config, ship_ids: list[str] | None) -> dict[str, dict]:
    """Per ship: channel -> {format: rows}, row counts, span, average rendered value length."""
    cfg = config.source
    where, params = _valid_rows_of(ship_ids)
    query = sql.SQL(
        "SELECT ship_id, data_channel_id, value_format, count(*), min(created_time), max(created_time), "
        "avg(octet_length({value})) FROM {t} WHERE {w} GROUP BY 1, 2, 3").format(
        value=render.rendered_value(), t=source_table(cfg), w=where)
    ships: dict[str, dict] = {}
    with conn.cursor() as cur:
        cur.execute("SET jit = off")  # JIT makes wide GROUP BYs slower (DESIGN.md, Pitfalls)
        cur.execute(query, params)
        for ship, channel, fmt, rows, lo, hi, avg in cur.fetchall():
            s = ships.setdefault(ship, {"rows": 0, "start": lo, "end": hi, "channels": {}})
            s["rows"] += rows
            s["start"], s["end"] = min(s["start"], lo), max(s["end"], hi)
            ch = s["channels"].setdefault(channel, {"formats": defaultdict(int), "rows": 0, "bytes": 0.0})
            ch["formats"][fmt] += rows
            ch["rows"] += rows
            ch["bytes"] += float(avg or 0) * rows
    return ships


def reject_counts(conn, config: Config, ship_ids: list[str] | None) -> dict[str | None, dict[str, int]]:
    params: list = []
    filters = [sql.SQL("{} IS NOT NULL").format(render.reject_reason_sql())]
    if ship_ids:
        filters.append(sql.SQL("(ship_id IS NULL OR ship_id = ANY(%s))"))
        params.append(list(ship_ids))
    query = sql.SQL("SELECT ship_id, {r}, count(*) FROM {t} WHERE {w} GROUP BY 1, 2").format(
        r=render.reject_reason_sql(), t=source_table(config.source), w=sql.SQL(" AND ").join(filters))
    out: dict[str | None, dict[str, int]] = defaultdict(dict)
    with conn.cursor() as cur:
        cur.execute(query, params)
        for ship, reason, count in cur.fetchall():
            out[ship][reason] = count
    return out


def duplicate_counts(conn, config: Config, ship_ids: list[str] | None) -> dict[str, tuple[int, int]]:
    """Per ship: (keys with more than one row, rows beyond the first)."""
    where, params = _valid_rows_of(ship_ids)
    query = sql.SQL(
        "SELECT ship_id, count(*), sum(n - 1) FROM (SELECT ship_id, data_channel_id, created_time, "
        "count(*) AS n FROM {t} WHERE {w} GROUP BY 1, 2, 3 HAVING count(*) > 1) d GROUP BY 1").format(
        t=source_table(config.source), w=where)
    with conn.cursor() as cur:
        cur.execute(query, params)
        return {ship: (int(keys), int(extra)) for ship, keys, extra in cur.fetchall()}


def new_channels(stats: dict) -> dict[str, tuple[str | None, float]]:
    """channel -> (its most common format, average rendered bytes) from ``channel_stats`` of a ship."""
    out = {}
    for channel, ch in stats["channels"].items():
        fmt = max(ch["formats"].items(), key=lambda kv: (kv[1], kv[0]))[0]
        out[channel] = (fmt, ch["bytes"] / ch["rows"] if ch["rows"] else None)
    return out


def update_layouts(conn, config: Config,
                   stats: dict[str, dict]) -> tuple[dict[str, catalog.ShipLayout], dict[str, str]]:
    """Load each ship's layout, place its new channels, save (commits per ship).

    New tables are named under the fleet-wide names lock, held for the whole call, so every name
    is unique across the fleet (``naming.TableNamer``); the natural main-table names of all ships
    in ``stats`` are reserved for them. Returns the layouts and, per ship that cannot be laid out,
    why: one impossible ship does not stop the others.
    """
    tgt = config.target
    layouts, problems = {}, {}
    with conn.cursor() as cur:
        catalog.lock_table_names(cur, session=True)
    try:
        namer = catalog.fleet_namer(conn, tgt, reserved_ships=sorted(stats))
        conn.commit()
        for ship in sorted(stats):
            try:
                with conn.cursor() as cur:
                    catalog.lock_layout(cur, ship)
                layout = catalog.load_layout(conn, tgt.catalog_schema, ship)
                catalog.grow_layout(layout, new_channels(stats[ship]), tgt, namer)
                catalog.record_layout(conn, tgt, layout)
                conn.commit()
            except (catalog.LayoutError, ValueError, psycopg2.Error) as err:
                conn.rollback()
                problems[ship] = errors.describe(err)
                continue
            layouts[ship] = layout
    finally:
        with conn.cursor() as cur:
            catalog.unlock_table_names(cur)
        conn.commit()
    return layouts, problems


@exclusive("plan")
def run(config: Config, spark=None, ships: list[str] | None = None, duplicates: bool = True,
        **_ignored) -> Result:
    started = time.monotonic()
    config = resolve_connections(config)
    with db.connection(config.source.connection) as src, db.connection(config.target.connection) as tgt:
        catalog.ensure_catalog(tgt, config.target.catalog_schema)
        stats = channel_stats(src, config, ships)
        rejects = reject_counts(src, config, ships)
        dups = duplicate_counts(src, config, ships) if duplicates else {}
        index_warning = chunk_index_warning(src, config.source)
        src.rollback()
        rolled_back = sorted(set(stats) & catalog.ships_in_state(tgt, config.target.catalog_schema,
                                                                  catalog.ROLLED_BACK))
        tgt.rollback()
        layouts, ship_problems = update_layouts(tgt, config, {s: v for s, v in stats.items() if s not in rolled_back})
        problems = list(ship_problems.values())
    rows = []
    for ship in sorted(stats):
        s = stats[ship]
        layout = layouts.get(ship)
        formats: dict[str, int] = defaultdict(int)
        for ch in s["channels"].values():
            for fmt, n in ch["formats"].items():
                formats[fmt] += n
        parts = []
        if layout:
            for part in layout.parts:
                members = layout.part_channels(part)
                parts.append({"part": part, "table": layout.tables[part], "columns": len(members),
                              "est_row_bytes": round(catalog.estimated_row_bytes(members))})
        rows.append({
            "ship_id": ship, "narrow_rows": s["rows"] + sum(rejects.get(ship, {}).values()),
            "valid_rows": s["rows"], "start": s["start"], "end": s["end"],
            "channels": len(s["channels"]), "formats": dict(formats),
            "duplicate_keys": dups.get(ship, (0, 0))[0], "duplicate_rows": dups.get(ship, (0, 0))[1],
            "rejected_rows": sum(rejects.get(ship, {}).values()),
            "reject_reasons": rejects.get(ship, {}), "parts": parts,
        })
    orphan_rejects = {reason: n for ship, reasons in rejects.items() if ship is None or ship not in stats
                      for reason, n in reasons.items()}
    summary = {
        "ships": len(rows), "narrow_rows": sum(r["narrow_rows"] for r in rows) + sum(orphan_rejects.values()),
        "rejected_rows": sum(r["rejected_rows"] for r in rows) + sum(orphan_rejects.values()),
        "duplicate_rows": sum(r["duplicate_rows"] for r in rows),
        "tables": sum(len(r["parts"]) for r in rows), "problems": problems,
        "seconds": round(time.monotonic() - started, 2), "plan": rows,
        "rejects_without_ship": orphan_rejects,
        "warnings": [index_warning] if index_warning else [],
        "ships_rolled_back": rolled_back,
    }
    report = format_report(rows, problems) + (f"\nWARNING: {index_warning}" if index_warning else "")
    return Result("plan", EXIT_PROBLEM if problems else EXIT_OK, summary, report)


def format_report(rows: list[dict], problems: list[str]) -> str:
    header = (f"{'ship_id':<24} {'narrow rows':>12} {'channels':>8} {'dup rows':>9} {'rejected':>9} "
              f"{'parts':>5} {'est row B':>9}  span")
    lines = [header, "-" * len(header)]
    for r in rows:
        widest = max((p["est_row_bytes"] for p in r["parts"]), default=0)
        lines.append(f"{r['ship_id'][:24]:<24} {r['narrow_rows']:>12,} {r['channels']:>8} "
                     f"{r['duplicate_rows']:>9,} {r['rejected_rows']:>9,} {len(r['parts']):>5} "
                     f"{widest:>9}  {r['start']} .. {r['end']}")
    lines += [f"PROBLEM: {p}" for p in problems]
    return "\n".join(lines)
