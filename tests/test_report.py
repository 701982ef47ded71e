"""``report``: the self-contained HTML page, opened in a real headless Chromium after a real
backfill, stream batch and reconcile of a fleet with hostile ship ids; its DOM holds every ship
of the catalog with the ledger's figures, and the screenshot is not blank. Names from the world
are escaped: a generated set of ship ids survives the page's HTML intact."""
from __future__ import annotations

import datetime as dt
import html.parser
import io

import nasty
import tools
from hypothesis import HealthCheck, given, settings, strategies as st
from PIL import Image
from psycopg2 import sql

from widen import dashboard
from widen.jobs import backfill, reconcile, report

NAME = "report"
SRC, TGT, CAT = f"src_{NAME}", f"wide_{NAME}", f"cat_{NAME}"
HTML_SHIPS = ["<script>document.title='owned'</script>", 'ship "><img src=x onerror=alert(1)>', "A&amp;B <b>bold</b>"]


class Dom(html.parser.HTMLParser):
    """What a test reads back from HTML: elements with ``data-ship`` / ``id``, their text, scripts."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.rows: dict[str, dict[str, str]] = {}     # ship -> {class: text} of the ships table's row
        self.ids: dict[str, str] = {}
        self.scripts = 0
        self.images = 0
        self._stack: list[tuple[str, dict]] = []
        self._ship: str | None = None
        self._table: str | None = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.scripts += tag == "script"
        self.images += tag == "img"
        if tag == "table":
            self._table = attrs.get("id")
        if tag == "tr" and "data-ship" in attrs and self._table == "ships":
            self._ship = attrs["data-ship"]
            self.rows[self._ship] = {}
        self._stack.append((tag, attrs))

    def handle_endtag(self, tag):
        while self._stack:
            open_tag, _ = self._stack.pop()
            if open_tag == tag:
                break
        if tag == "tr":
            self._ship = None

    def handle_data(self, data):
        for _tag, attrs in reversed(self._stack):
            if "id" in attrs:
                self.ids[attrs["id"]] = self.ids.get(attrs["id"], "") + data
                break
        if self._ship is not None and self._stack:
            cls = self._stack[-1][1].get("class")
            if cls:
                self.rows[self._ship][cls] = self.rows[self._ship].get(cls, "") + data


def parse(text: str) -> Dom:
    dom = Dom()
    dom.feed(text)
    return dom


def test_report_page_in_headless_chromium(fresh_fleet, make_config, spark, pg, tmp_path):
    config = make_config(NAME, backfill__chunk_hours=1)
    with pg.cursor() as cur:
        cur.execute("SELECT date_trunc('hour', now()) - interval '2 hours'")
        recent = cur.fetchone()[0]
    conn = fresh_fleet(NAME, ships=2, channels=3, hours=2, seed=21, start=recent)
    nasty.insert(conn, SRC)                 # hostile rows, dated months before the heatmap's window
    nasty.insert(conn, SRC, [(ship, "chan/1", recent + dt.timedelta(minutes=i), "Decimal", float(i), None, None, None)
                             for i, ship in enumerate(HTML_SHIPS)])
    # one reading from the future (a ship whose clock runs ahead) must not hide the fleet's days
    nasty.insert(conn, SRC, [(HTML_SHIPS[1], "chan/1", dt.datetime(2099, 1, 1, tzinfo=dt.UTC), "Decimal", 9.0,
                              None, None, None)])
    conn.close()
    assert backfill.run(config, spark).exit_code == 0
    with pg.cursor() as cur:       # one difference left for the heatmap
        cur.execute(sql.SQL("SELECT table_name, column_name FROM {} WHERE ship_id = %s").format(
            sql.Identifier(CAT, "channel_columns")), (HTML_SHIPS[0],))
        table, column = cur.fetchone()
        cur.execute(sql.SQL("UPDATE {} SET {} = '-1'").format(sql.Identifier(TGT, table), sql.Identifier(column)))
    assert reconcile.run(config, spark).exit_code == 1
    out = tmp_path / "page" / "widen.html"
    made = report.run(config, out=str(out), refresh=60)
    assert made.exit_code == 0 and made.summary["path"] == str(out)
    page = out.read_text()
    assert "http://" not in page and "https://" not in page and "src=" not in page.replace(
        "src=x", "")                       # nothing external (the one src=x is a ship id, escaped)

    dumped = tools.chromium(out.as_uri(), str(tmp_path), "--dump-dom")
    dom = parse(dumped)
    with pg.cursor() as cur:
        cur.execute(sql.SQL("SELECT l.ship_id, l.state, count(c.*) FILTER (WHERE c.status = 'done'), "
                            "l.backfill_chunks_total, coalesce(sum(c.narrow_rows) FILTER (WHERE c.status = 'done'), 0) "
                            "FROM {} l LEFT JOIN {} c USING (ship_id) GROUP BY 1, 2, 4").format(
            sql.Identifier(CAT, "ship_lifecycle"), sql.Identifier(CAT, "backfill_chunks")))
        ledger = {r[0]: r[1:] for r in cur.fetchall()}
        cur.execute(sql.SQL("SELECT ship_id, count(*) FROM {} WHERE ship_id IS NOT NULL GROUP BY 1").format(
            sql.Identifier(CAT, "rejects")))
        rejects = dict(cur.fetchall())
        cur.execute(sql.SQL("SELECT reason, count(*) FROM {} GROUP BY 1").format(sql.Identifier(CAT, "rejects")))
        reasons = dict(cur.fetchall())
    assert set(dom.rows) == set(ledger) and set(HTML_SHIPS) <= set(dom.rows)
    for ship, (state, done, total, narrow) in ledger.items():
        row = dom.rows[ship]
        assert row["ship"] == ship
        assert row["badge"] == state
        assert row["chunks"] == f"{done:,}/{total:,}"
        assert row["n narrow"] == f"{narrow:,}"
        assert row["n rejects"] == f"{rejects.get(ship, 0):,}"
    assert dom.scripts == 0 and dom.images == 0          # the hostile ids stayed text
    assert dom.ids["fleet-ships"].endswith(str(len(ledger)))
    for reason, count in reasons.items():
        assert reason in dom.ids["rejects"] and f"{count:,}" in dom.ids["rejects"]
    assert '<td class="mismatch"' in dumped and '<td class="match"' in dumped     # the heatmap
    with pg.cursor() as cur:               # its window: the 31 days up to today, the rest counted apart
        cur.execute(sql.SQL("SELECT (now() AT TIME ZONE 'UTC')::date, count(DISTINCT (ship_id, bucket_start)) FILTER "
                            "(WHERE bucket_start > now()), count(DISTINCT (ship_id, bucket_start)) FILTER (WHERE "
                            "bucket_start < (now() AT TIME ZONE 'UTC')::date - 30) FROM {}").format(
            sql.Identifier(CAT, "reconcile_results")))
        today, future, older = cur.fetchone()
    assert future == 1 and older > 0
    window = dom.ids["heatmap-window"]
    assert f"Days {today - dt.timedelta(days=30)} to {today}" in window
    assert f"{future} checked bucket dated after now" in window and f"{older:,} checked buckets before" in window
    assert f"backfill {sum(v[3] for v in ledger.values()):,} narrow rows" in dom.ids["throughput-total"]

    shot = tmp_path / "page.png"
    tools.chromium(out.as_uri(), str(tmp_path), f"--screenshot={shot}", "--window-size=1280,1600")
    image = Image.open(io.BytesIO(shot.read_bytes())).convert("RGB")
    assert image.size == (1280, 1600)
    colours = image.getcolors(maxcolors=1 << 20) or []
    assert len(colours) > 50                              # text, bars, badges: not a blank page
    assert max(n for n, _ in colours) < 0.95 * image.size[0] * image.size[1]
    # the state badges and the heatmap's red are drawn
    assert any(r > 180 and g < 80 and b < 80 for _, (r, g, b) in colours)


ship_ids = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=1,
                   max_size=40)


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(ship_ids, min_size=1, max_size=8, unique=True), st.text(max_size=30))
def test_generated_names_survive_the_page(ships, reason):
    now = dt.datetime(2026, 12, 3, tzinfo=dt.UTC)
    rows = [{"ship_id": s, "state": "backfilling", "since": now, "backfill_chunks_total": 4, "chunks_done": 1,
             "chunks_failed": 0, "narrow_rows": 10, "rejects": 0} for s in ships]
    page = dashboard.Page(now=now, ships=rows, states=("backfilling",), queries=[], throughput={"width": None, "bars": []},
                          freshness={}, heatmap={(s, now.date()): {"mismatch": 1} for s in ships},
                          rejects=[(reason, "backfill", 3)], attention={ships[0]: [reason]})
    dom = parse(dashboard.render(page))
    assert set(dom.rows) == set(ships)
    assert dom.scripts == 0 and dom.images == 0
    for s in ships:
        assert dom.rows[s]["ship"] == s

