"""The HTML of ``report``: one self-contained page (inline CSS and SVG, no script, no external
asset) from what the job read from the catalog. Every name from the world (ship ids, query names,
reasons, errors) goes through ``html.escape``.
"""
from __future__ import annotations

import datetime as dt
import html
from dataclasses import dataclass, field
from typing import Any

STATE_COLOURS = {"planned": "#9aa5b1", "backfilling": "#3b82f6", "backfilled": "#6366f1", "live": "#0ea5e9",
                 "verified": "#16a34a", "switched": "#15803d", "rolled_back": "#b45309"}
HEAT = {"match": "#16a34a", "repaired": "#f59e0b", "mismatch": "#dc2626"}
CSS = """
body{font:14px/1.4 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#1f2933;background:#f7f8fa}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px}
.muted{color:#616e7c}.cards{display:flex;flex-wrap:wrap;gap:12px;margin:16px 0}
.card{background:#fff;border:1px solid #d9dee3;border-radius:8px;padding:10px 14px;min-width:120px}
.card b{display:block;font-size:20px}.bad{color:#b91c1c}.ok{color:#15803d}
table{border-collapse:collapse;background:#fff;border:1px solid #d9dee3}
th,td{padding:4px 8px;border-bottom:1px solid #eef0f2;text-align:left;white-space:nowrap}
td.n{text-align:right;font-variant-numeric:tabular-nums}
.badge{display:inline-block;border-radius:10px;padding:0 8px;color:#fff;font-size:12px}
.bar{width:140px;height:12px;background:#e4e7eb;border-radius:6px;overflow:hidden;display:inline-block;
vertical-align:middle}.bar i{display:block;height:100%;background:#3b82f6}
.heat td{padding:0;width:16px;height:16px;border:1px solid #fff}.heat th{font-weight:normal;font-size:11px}
.attention{background:#fff4f4;border:1px solid #f3c1c1;border-radius:8px;padding:8px 14px}
svg{background:#fff;border:1px solid #d9dee3}
"""


@dataclass
class Heatmap:
    """The reconcile heatmap: (ship, day) -> buckets per status, for the days ``first``..``last``
    (UTC; the window ends today, whatever the newest bucket's date), and the checked buckets
    outside it: ``before`` the window, ``after_now`` (readings dated in the future)."""
    cells: dict[tuple[str, dt.date], dict[str, int]]
    first: dt.date | None = None
    last: dt.date | None = None
    before: int = 0
    after_now: int = 0


@dataclass
class Page:
    now: dt.datetime
    ships: list[dict[str, Any]]
    states: tuple[str, ...]
    queries: list[dict[str, Any]]
    throughput: dict[str, Any]
    freshness: dict[str, list[tuple[dt.datetime, float]]]
    heatmap: Heatmap | dict[tuple[str, dt.date], dict[str, int]]
    rejects: list[tuple[str, str, int]]
    attention: dict[str, list[str]] = field(default_factory=dict)
    max_lag_seconds: float = 60.0
    refresh_seconds: float | None = None


def e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _time(value: dt.datetime | None) -> str:
    return "-" if value is None else value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _ago(now: dt.datetime, when: dt.datetime | None) -> str:
    if when is None:
        return "-"
    s = (now - when).total_seconds()
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.0f} min" if s < 7200 else f"{s / 3600:.1f} h" \
        if s < 172800 else f"{s / 86400:.0f} d"


def _seconds(s: float) -> str:
    return f"{s:.1f} s" if s < 120 else f"{s / 60:.1f} min" if s < 7200 else f"{s / 3600:.1f} h"


def render(page: Page) -> str:
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        *([f'<meta http-equiv="refresh" content="{page.refresh_seconds:g}">'] if page.refresh_seconds else []),
        "<title>widen migration report</title>", f"<style>{CSS}</style></head><body>",
        "<h1>widen migration report</h1>",
        f'<div class="muted">generated {e(_time(page.now))} from the catalog</div>',
        _summary(page), _attention(page), _ships(page), _throughput(page), _freshness(page), _heatmap(page),
        _rejects(page), "</body></html>"]
    return "\n".join(p for p in parts if p)


def _lag_now(page: Page) -> float | None:
    newest = max((q["newest_created_time"] for q in page.queries if q.get("newest_created_time")), default=None)
    return None if newest is None else max(0.0, (page.now - newest).total_seconds())


def _summary(page: Page) -> str:
    counts = {s: sum(1 for r in page.ships if r["state"] == s) for s in page.states}
    moved = sum(r["narrow_rows"] for r in page.ships)
    rejected = sum(r["rejects"] for r in page.ships)
    lag = _lag_now(page)
    lag_text = "no batch yet" if lag is None else _seconds(lag)
    lag_class = "" if lag is None else "bad" if lag > page.max_lag_seconds else "ok"
    cards = [("ships", f"{len(page.ships):,}", "", "fleet-ships")]
    cards += [(state.replace("_", " "), f"{n:,}", "", f"state-{state}") for state, n in counts.items() if n]
    cards += [("narrow rows backfilled", f"{moved:,}", "", "narrow-rows"),
              ("rejected rows", f"{rejected:,}", "bad" if rejected else "", "rejected-rows"),
              ("stream freshness lag", lag_text, lag_class, "stream-lag")]
    return '<div class="cards" id="fleet">' + "".join(
        f'<div class="card" id="{e(key)}"><span class="muted">{e(label)}</span><b class="{cls}">{e(value)}</b></div>'
        for label, value, cls, key in cards) + "</div>"


def _attention(page: Page) -> str:
    if not page.attention:
        return ""
    items = "".join(f"<li><b>{e(ship)}</b>: {e('; '.join(why))}</li>" for ship, why in page.attention.items())
    return f'<div class="attention" id="attention"><b>Needs attention</b><ul>{items}</ul></div>'


def _ships(page: Page) -> str:
    rows = []
    for r in page.ships:
        total = r.get("backfill_chunks_total") or 0
        done = r["chunks_done"]
        pct = 100.0 * done / total if total else 0.0
        failed = f' <span class="bad">{r["chunks_failed"]} failed</span>' if r["chunks_failed"] else ""
        rec = "rolled back: not checked" if r["state"] == "rolled_back" else \
            "-" if not r.get("last_reconcile_at") else (
            f"{r['last_reconcile_result']} through {_time(r['last_reconcile_through'])}")
        colour = STATE_COLOURS.get(r["state"], "#52606d")
        rows.append(
            f'<tr data-ship="{e(r["ship_id"])}"><td class="ship">{e(r["ship_id"])}</td>'
            f'<td><span class="badge" style="background:{colour}">{e(r["state"])}</span></td>'
            f'<td>{e(_ago(page.now, r.get("since")))}</td>'
            f'<td><span class="bar" title="{pct:.0f}%"><i style="width:{pct:.1f}%"></i></span> '
            f'<span class="chunks">{done:,}/{total:,}</span>{failed}</td>'
            f'<td class="n narrow">{r["narrow_rows"]:,}</td><td class="n rejects">{r["rejects"]:,}</td>'
            f'<td>{e(_ago(page.now, r.get("last_streamed_at")))}</td><td>{e(rec)}</td>'
            f'<td>{e(_time(r["switched_at"]) if r.get("switched_at") else "-")}</td></tr>')
    if not rows:
        return "<h2>Ships</h2><p class='muted'>No ship in the catalog yet: run plan or backfill.</p>"
    return ("<h2>Ships</h2><table id='ships'><tr><th>ship</th><th>state</th><th>since</th><th>backfill chunks</th>"
            "<th>narrow rows</th><th>rejects</th><th>last streamed</th><th>last reconcile</th><th>switched</th></tr>"
            + "".join(rows) + "</table>")


def _throughput(page: Page) -> str:
    bars, width = page.throughput["bars"], page.throughput["width"]
    if not bars:
        return "<h2>Throughput</h2><p class='muted'>Nothing in the ledgers yet.</p>"
    w, h, pad = 720, 180, 30
    top = max(b["backfill"] + b["stream"] for _, b in bars) or 1
    first = bars[0][0]
    slots = int((bars[-1][0] - first).total_seconds() // width) + 1      # quiet intervals stay empty
    step = (w - 2 * pad) / slots
    shapes = []
    for at, b in bars:
        x = pad + int((at - first).total_seconds() // width) * step
        y = h - pad
        for job_name, colour in (("backfill", "#3b82f6"), ("stream", "#16a34a")):
            height = (h - 2 * pad) * b[job_name] / top
            if height > 0:
                shapes.append(f'<rect x="{x:.1f}" y="{y - height:.1f}" width="{max(step - 2, 1):.1f}" '
                              f'height="{height:.1f}" fill="{colour}"><title>{e(_time(at))} {e(job_name)}: '
                              f'{b[job_name]:,} narrow rows</title></rect>')
                y -= height
    label = lambda x, y, text, anchor="start": (  # noqa: E731
        f'<text x="{x}" y="{y}" font-size="11" text-anchor="{anchor}" fill="#52606d">{e(text)}</text>')
    shapes += [label(pad, 14, f"{top:,} narrow rows per {_seconds(width)}"),
               label(pad, h - 10, _time(first)), label(w - pad, h - 10, _time(bars[-1][0]), "end"),
               f'<text x="{w - pad}" y="14" font-size="11" text-anchor="end" fill="#52606d">'
               '<tspan fill="#3b82f6">■</tspan> backfill <tspan fill="#16a34a">■</tspan> stream</text>']
    total = {j: sum(b[j] for _, b in bars) for j in ("backfill", "stream")}
    return (f"<h2>Throughput</h2><div class='muted' id='throughput-total'>{slots} intervals of "
            f"{_seconds(width)} up to the newest ledger row: backfill {total['backfill']:,} narrow rows, "
            f"stream {total['stream']:,}</div>"
            f'<svg id="throughput" width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img">{"".join(shapes)}</svg>')


def _freshness(page: Page) -> str:
    if not page.queries:
        return "<h2>Stream freshness</h2><p class='muted'>No stream batch recorded yet.</p>"
    rows = []
    for q in page.queries:
        lag = None if not q.get("newest_created_time") else max(
            0.0, (page.now - q["newest_created_time"]).total_seconds())
        cls = "" if lag is None else "bad" if lag > page.max_lag_seconds else "ok"
        rows.append(f'<tr data-query="{e(q["query_name"])}"><td>{e(q["query_name"])}</td>'
                    f'<td class="n">{q["last_batch"]:,}</td><td>{e(_time(q["committed_at"]))}</td>'
                    f'<td class="{cls}">{e("-" if lag is None else _seconds(lag))}</td>'
                    f"<td>{_sparkline(page.freshness.get(q['query_name'], []), page.max_lag_seconds)}</td></tr>")
    return ("<h2>Stream freshness</h2><table id='streams'><tr><th>query</th><th>last batch</th><th>committed</th>"
            f"<th>lag now</th><th>lag at commit, last batches (line: {page.max_lag_seconds:g} s)</th></tr>"
            + "".join(rows) + "</table>")


def _sparkline(points: list[tuple[dt.datetime, float]], limit: float) -> str:
    if not points:
        return ""
    w, h = 300, 40
    top = max(max(lag for _, lag in points), limit) * 1.1
    step = w / max(len(points) - 1, 1)
    xy = [(4 + i * step * (w - 8) / w, h - 3 - (h - 6) * lag / top) for i, (_, lag) in enumerate(points)]
    line = " ".join(f"{x:.1f},{y:.1f}" for x, y in xy)
    dots = "".join(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2" fill="#0ea5e9"/>' for x, y in xy) if len(xy) <= 60 else ""
    y = h - 3 - (h - 6) * limit / top
    return (f'<svg class="spark" width="{w}" height="{h}" viewBox="0 0 {w} {h}">'
            f'<line x1="0" x2="{w}" y1="{y:.1f}" y2="{y:.1f}" stroke="#dc2626" stroke-dasharray="3 3"/>'
            f'<polyline fill="none" stroke="#0ea5e9" stroke-width="1.5" points="{line}"/>{dots}</svg>')


def _heatmap(page: Page) -> str:
    heat = page.heatmap if isinstance(page.heatmap, Heatmap) else Heatmap(page.heatmap)
    if not heat.cells and not heat.before and not heat.after_now:
        return "<h2>Reconcile</h2><p class='muted'>No reconcile has run yet.</p>"
    window = ""
    if heat.first and heat.last:
        outside = [f"{n:,} checked bucket{'s' * (n != 1)} {where} not shown" for n, where in (
            (heat.before, "before these days"), (heat.after_now, "dated after now (readings from the future)")) if n]
        window = (f"<p class='muted' id='heatmap-window'>Days {heat.first.isoformat()} to {heat.last.isoformat()} "
                  f"(UTC, up to today){': ' + '; '.join(outside) if outside else ''}.</p>")
    if not heat.cells:
        return f"<h2>Reconcile</h2>{window}<p class='muted'>No bucket of these days has been checked.</p>"
    cells_of = heat.cells
    days = sorted({day for _, day in cells_of})
    ships = sorted({ship for ship, _ in cells_of})
    head = "".join(f"<th>{e(day.strftime('%m-%d'))}</th>" for day in days)
    rows = []
    rolled_back = {r["ship_id"] for r in page.ships if r["state"] == "rolled_back"}
    for ship in ships:
        if ship in rolled_back:     # its tables are gone on purpose: its old checks say nothing
            rows.append(f'<tr data-ship="{e(ship)}" class="rolled-back"><th>{e(ship)}</th>'
                        f'<td colspan="{len(days)}" class="muted">rolled back: not checked</td></tr>')
            continue
        cells = []
        for day in days:
            counts = cells_of.get((ship, day))
            if not counts:
                cells.append("<td></td>")
                continue
            worst = next(s for s in ("mismatch", "repaired", "match") if counts.get(s)) \
                if any(counts.get(s) for s in HEAT) else None
            text = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
            colour = HEAT.get(worst or "", "#9aa5b1")
            cells.append(f'<td class="{e(worst or "other")}" style="background:{colour}" '
                         f'title="{e(ship)} {day.isoformat()}: {e(text)}"></td>')
        rows.append(f'<tr data-ship="{e(ship)}"><th>{e(ship)}</th>{"".join(cells)}</tr>')
    legend = " ".join(f'<span class="badge" style="background:{c}">{s}</span>' for s, c in HEAT.items())
    return (f"<h2>Reconcile: ship × day (latest check of every bucket)</h2>{window}<div>{legend}</div>"
            f"<table class='heat' id='heatmap'><tr><th></th>{head}</tr>{''.join(rows)}</table>")


def _rejects(page: Page) -> str:
    if not page.rejects:
        return "<h2>Rejects</h2><p class='muted'>No rejected rows.</p>"
    top = max(n for _, _, n in page.rejects)
    rows = "".join(f'<tr><td>{e(reason)}</td><td>{e(job)}</td><td class="n">{n:,}</td><td><span class="bar">'
                   f'<i style="width:{100 * n / top:.1f}%;background:#dc2626"></i></span></td></tr>'
                   for reason, job, n in page.rejects)
    return ("<h2>Rejects by reason</h2><table id='rejects'><tr><th>reason</th><th>job</th><th>rows</th><th></th></tr>"
            + rows + "</table>")
