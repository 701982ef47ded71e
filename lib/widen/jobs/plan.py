"""``plan``: what the migration will do, per ship, before it does it.

Narrow rows and time span per ship (an index-only count), channels and formats, the estimated wide
row width and the channel -> column layout (split into part tables so each row fits with headroom;
table names unique across the fleet). By default the channels, formats and sizes come from what is
cheap (``NarrowTable.survey``: a skip scan of an index on (ship_id, data_channel_id), else a
sample), marked as estimates, and rejected rows and duplicate keys are not counted; ``--exact``
scans the narrow table for all of them. Records ``wide_tables`` and ``channel_columns``; creates no
wide table.
"""
from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING

from widen.catalog import lifecycle, schema, ships as ship_states
from widen.config import Config
from widen.core.layout import estimated_row_bytes
from widen.jobs import EXIT_OK, EXIT_PROBLEM, Result, job
from widen.pg import db
from widen.sources import open_table
from widen.targets import open_target
from widen.targets.views import configure as reader_views

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


@dataclass(frozen=True)
class PlanOptions:
    ships: list[str] | None = None
    #: exact channel statistics, reject and duplicate counts: full scans of the narrow table
    exact: bool = False
    #: with ``exact``: the duplicate-key count (a full GROUP BY of the narrow table)
    duplicates: bool = True


@job("plan", PlanOptions)
def run(config: Config, spark: SparkSession, options: PlanOptions) -> Result:
    started = time.monotonic()
    ships = options.ships
    source = open_table(config.source, "plan")
    target = open_target(config.target, spark)
    with source.connect() as src, db.connection(config.target.connection) as tgt:
        schema.migrate(tgt, config.target.catalog_schema)
        if options.exact:
            how = "scan"
            stats = source.channel_stats(src, ships)
            rejects = source.reject_counts(src, ships)
            dups = source.duplicate_counts(src, ships) if options.duplicates else {}
        else:
            spans = source.ship_spans(src, ships)
            stats, how = source.survey(src, sorted(spans))
            for ship, (rows, lo, hi) in spans.items():
                # a ship with rejected rows only has no channel (a full-scan survey leaves it out)
                stats.setdefault(ship, {"channels": {}}).update(rows=rows, start=lo, end=hi)
            rejects, dups = {}, {}
        index_warning = source.index_warning(src)
        channel_index = source.channel_index(src)
        src.rollback()
        rolled_back = sorted(set(stats) & ship_states.ships_in_state(tgt, config.target.catalog_schema,
                                                                     ship_states.ROLLED_BACK))
        tgt.rollback()
        layouts, ship_problems = target.layouts.plan(
            tgt, {s: source.new_channels(v) for s, v in stats.items() if s not in rolled_back})
        problems = list(ship_problems.values())
        with tgt.cursor() as cur:          # every ship seen is in the lifecycle (planned, if new)
            for ship in sorted(set(stats) - set(rolled_back)):
                lifecycle.record(cur, config.target.catalog_schema, ship, "plan",
                                 {"narrow_rows": stats[ship]["rows"], "channels": len(stats[ship]["channels"])})
        tgt.commit()
        views = reader_views(target, config, source)
        if views is not None:
            view_problems = views.make(tgt, [layouts[s] for s in sorted(layouts)])
            problems += [f"ship {s!r}: {why}" for s, why in view_problems.items()]
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
                              "est_row_bytes": round(estimated_row_bytes(members))})
        mixed = sorted(c for c, ch in s["channels"].items() if len(ch["formats"]) > 1)
        column_types: dict[str, int] = defaultdict(int)
        for c in (layout.channels.values() if layout else ()):
            column_types[c.column_type] += 1
        counted = options.exact
        rows.append({
            "column_types": dict(column_types), "mixed_format_channels": mixed,
            "ship_id": ship, "narrow_rows": s["rows"] + sum(rejects.get(ship, {}).values()),
            "valid_rows": s["rows"] if counted else None, "start": s["start"], "end": s["end"],
            "channels": len(s["channels"]), "formats": dict(formats),
            "duplicate_keys": dups.get(ship, (0, 0))[0] if counted and options.duplicates else None,
            "duplicate_rows": dups.get(ship, (0, 0))[1] if counted and options.duplicates else None,
            "rejected_rows": sum(rejects.get(ship, {}).values()) if counted else None,
            "reject_reasons": rejects.get(ship, {}) if counted else None, "parts": parts,
        })
    orphan_rejects = {reason: n for ship, reasons in rejects.items() if ship is None or ship not in stats
                      for reason, n in reasons.items()}
    exact = options.exact
    summary = {
        "ships": len(rows), "narrow_rows": sum(r["narrow_rows"] for r in rows) + sum(orphan_rejects.values()),
        "rejected_rows": sum(r["rejected_rows"] for r in rows) + sum(orphan_rejects.values()) if exact else None,
        "duplicate_rows": sum(r["duplicate_rows"] for r in rows) if exact and options.duplicates else None,
        # how the channels, formats and sizes were found, and whether they are estimates
        "channels_found_by": how, "estimated": not exact, "channel_index": channel_index,
        "tables": sum(len(r["parts"]) for r in rows), "problems": problems,
        "seconds": round(time.monotonic() - started, 2), "plan": rows,
        "rejects_without_ship": orphan_rejects,
        "warnings": [index_warning] if index_warning else [],
        "ships_rolled_back": rolled_back,
    }
    report = format_report(rows, problems, config.target.typed, exact) + (
        f"\nWARNING: {index_warning}" if index_warning else "")
    if not exact:
        report += (f"\nchannels, formats and value sizes: estimates from a {how}"
                   + ("" if channel_index else " (an index on (ship_id, data_channel_id) makes it a skip scan "
                      "that finds every channel)")
                   + "; rejected rows and duplicate keys not counted: plan --exact scans for them")
    return Result("plan", EXIT_PROBLEM if problems else EXIT_OK, summary, report)


def format_report(rows: list[dict], problems: list[str], typed_columns: bool = False, exact: bool = True) -> str:
    header = (f"{'ship_id':<24} {'narrow rows':>12} {'channels':>8}{'' if exact else '~'} {'dup rows':>9} "
              f"{'rejected':>9} {'parts':>5} {'est row B':>9}  span")
    lines = [header, "-" * len(header)]

    def count(value: int | None) -> str:
        return "-" if value is None else f"{value:,}"

    for r in rows:
        widest = max((p["est_row_bytes"] for p in r["parts"]), default=0)
        lines.append(f"{r['ship_id'][:24]:<24} {r['narrow_rows']:>12,} {r['channels']:>8}{'' if exact else ' '} "
                     f"{count(r['duplicate_rows']):>9} {count(r['rejected_rows']):>9} {len(r['parts']):>5} "
                     f"{widest:>9}  {r['start']} .. {r['end']}")
    if typed_columns:
        for r in rows:
            types = ", ".join(f"{n} {t}" for t, n in sorted(r["column_types"].items()))
            lines.append(f"{r['ship_id']!r}: columns {types or 'none'}")
            if r["mixed_format_channels"]:
                shown = ", ".join(repr(c) for c in r["mixed_format_channels"][:10])
                more = len(r["mixed_format_channels"]) - 10
                lines.append(f"  text for channels seen with more than one value format: {shown}"
                             + (f" and {more} more" if more > 0 else ""))
    lines += [f"PROBLEM: {p}" for p in problems]
    return "\n".join(lines)
