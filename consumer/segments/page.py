"""`/segments` on the scorer's HTTP port: the marketing export as a web page.

A filter panel (last activities, predicted next activity, minimum churn risk), the counts,
the riskiest matching customers as a table, a CSV download of the whole segment and the
churn-risk distribution as an SVG plot. Server-rendered HTML with no script and nothing
fetched from elsewhere, so it works offline and in any browser.

The page reads the same windows as `seqscore segments` (SCAN, never KEYS, so Redis keeps
serving the hot path); one snapshot is shared by requests for `cache_seconds`, so the
table and the CSV of one filter agree and a busy page costs one scan per interval.
"""

from __future__ import annotations

import html
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import parse_qs, urlencode

import numpy as np
import redis
from numpy.typing import NDArray

from consumer.net import Response
from consumer.segments import scan as segments

TABLE_ROWS = 200
BINS = 20
SCANNED_LAST = 8  # the longest --last pattern the page accepts


@dataclass(frozen=True)
class PageContext:
    """What the page needs from the serving model: names for codes and the alert threshold."""

    vocabulary: tuple[str, ...]
    alert_threshold: float
    model_version: str


@dataclass(frozen=True)
class SegmentQuery:
    last: list[str]
    predicted: str | None
    min_churn: float

    @classmethod
    def parse(cls, query_string: str) -> SegmentQuery:
        """The page's query string; a ValueError names the field at fault."""
        params = {k: v[-1].strip() for k, v in parse_qs(query_string, keep_blank_values=True).items()}
        last = segments.parse_last(params.get("last", ""), "last")
        if len(last) > SCANNED_LAST:
            raise ValueError(f"last: at most {SCANNED_LAST} activities, got {len(last)}")
        text = params.get("min_churn", "") or "0"
        try:
            min_churn = float(text)
        except ValueError:
            raise ValueError(f"min_churn: '{text}' is not a number") from None
        if not 0.0 <= min_churn <= 1.0:
            raise ValueError(f"min_churn: {min_churn} is outside [0, 1]")
        return cls(last, params.get("predicted") or None, min_churn)

    def query_string(self) -> str:
        fields = {"last": ",".join(self.last), "predicted": self.predicted or "", "min_churn": f"{self.min_churn:g}"}
        return urlencode(fields)


class SegmentsPage:
    def __init__(
        self, client: redis.Redis, prefix: str, context: Callable[[], PageContext | None], cache_seconds: float = 5.0
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.context = context
        self.cache_seconds = cache_seconds
        self._lock = threading.Lock()
        self._snapshot: segments.Snapshot | None = None
        self._read_at = 0.0

    def routes(self) -> dict[str, Callable[[str], Response]]:
        return {"/segments": self.page, "/segments.csv": self.csv}

    def snapshot(self) -> tuple[segments.Snapshot, float]:
        with self._lock:  # concurrent requests wait for one scan instead of each running their own
            if self._snapshot is None or time.time() - self._read_at > self.cache_seconds:
                self._snapshot = segments.scan(self.client, self.prefix, SCANNED_LAST)
                self._read_at = time.time()
            return self._snapshot, self._read_at

    def _select(self, query: SegmentQuery) -> tuple[segments.Snapshot, NDArray[np.int64], float]:
        snapshot, read_at = self.snapshot()
        view = snapshot.last(max(len(query.last), 3))  # the columns `seqscore segments` exports
        return view, segments.select(view, query.last, query.predicted, query.min_churn), read_at

    def csv(self, query_string: str) -> Response:
        context = self.context()
        try:
            query = SegmentQuery.parse(query_string)
            view, rows, _ = self._select(query)
        except ValueError as exc:
            return Response(400, f"{exc}\n".encode(), "text/plain; charset=utf-8")
        names = segments.names_by_code(context.vocabulary if context else ())
        body = segments.to_csv(segments.rows_of(view, rows, names)).encode()
        disposition = {"Content-Disposition": 'attachment; filename="segment.csv"'}
        return Response(200, body, "text/csv; charset=utf-8", disposition)

    def page(self, query_string: str) -> Response:
        context = self.context()
        error = None
        try:
            query = SegmentQuery.parse(query_string)
            view, rows, read_at = self._select(query)
        except ValueError as exc:
            error = str(exc)
            query = SegmentQuery([], None, 0.0)
            view, rows, read_at = self._select(query)
        body = render(view, rows, query, context, read_at, error)
        return Response(400 if error else 200, body.encode(), "text/html; charset=utf-8")


def risk_histogram(risk: NDArray[np.float32]) -> NDArray[np.int64]:
    counts, _ = np.histogram(risk, bins=BINS, range=(0.0, 1.0))
    return counts.astype(np.int64)


def _svg_histogram(segment: NDArray[np.int64], everyone: NDArray[np.int64], threshold: float | None) -> str:
    width, height, pad = 560, 200, 30
    bar = (width - 2 * pad) / BINS
    top = max(int(everyone.max(initial=0)), 1)
    parts = [f'<svg id="risk-plot" role="img" width="{width}" height="{height + 52}" '
             f'aria-label="churn risk distribution" xmlns="http://www.w3.org/2000/svg">']
    for i, (all_count, seg_count) in enumerate(zip(everyone.tolist(), segment.tolist(), strict=True)):
        x = pad + i * bar
        for count, css in ((all_count, "all"), (seg_count, "seg")):
            h = height * count / top
            parts.append(f'<rect class="{css}" data-bin="{i}" data-count="{count}" x="{x:.1f}" '
                         f'y="{height - h + 10:.1f}" width="{bar - 2:.1f}" height="{h:.1f}">'
                         f"<title>{i / BINS:.2f}–{(i + 1) / BINS:.2f}: {count}</title></rect>")
    for tick in range(0, 11, 2):
        x = pad + tick / 10 * (width - 2 * pad)
        parts.append(f'<text x="{x:.1f}" y="{height + 28}" text-anchor="middle">{tick / 10:.1f}</text>')
    if threshold is not None:
        x = pad + threshold * (width - 2 * pad)
        parts.append(f'<line class="threshold" x1="{x:.1f}" x2="{x:.1f}" y1="4" y2="{height + 12}"/>'
                     f'<text x="{x + 4:.1f}" y="14">alert {threshold:.2f}</text>')
    parts.append(f'<text x="{width - pad}" y="{height + 46}" text-anchor="end">churn risk (latest scoring)</text>'
                 f'<rect class="all" x="{width - pad - 150}" y="6" width="10" height="10"/>'
                 f'<text x="{width - pad - 136}" y="15">all scored</text>'
                 f'<rect class="seg" x="{width - pad - 70}" y="6" width="10" height="10"/>'
                 f'<text x="{width - pad - 56}" y="15">segment</text>')
    return "".join(parts) + "</svg>"


STYLE = """
body{font:14px system-ui,sans-serif;margin:1.5rem;color:#222}
form{display:flex;gap:1rem;align-items:end;flex-wrap:wrap;margin-bottom:1rem}
label{display:flex;flex-direction:column;font-weight:600;gap:.25rem}
input,select,button{font:inherit;padding:.3rem}
table{border-collapse:collapse;margin-top:1rem}td,th{border-bottom:1px solid #ddd;padding:.25rem .6rem;text-align:left}
td.num{text-align:right;font-variant-numeric:tabular-nums}.error{color:#b00020;font-weight:600}
rect.all{fill:#d0d7e2}rect.seg{fill:#3465a4}line.threshold{stroke:#b00020;stroke-dasharray:4 3}
svg text{font-size:11px;fill:#555}.muted{color:#666}
"""


def render(
    view: segments.Snapshot,
    rows: NDArray[np.int64],
    query: SegmentQuery,
    context: PageContext | None,
    read_at: float,
    error: str | None = None,
) -> str:
    esc = html.escape
    vocabulary = context.vocabulary if context else ()
    names = segments.names_by_code(vocabulary)
    records = segments.rows_of(view, rows[:TABLE_ROWS], names)
    scored = view.pred_ts > 0
    in_segment = rows[scored[rows]]
    plot = _svg_histogram(
        risk_histogram(view.churn_risk[in_segment]),
        risk_histogram(view.churn_risk[scored]),
        context.alert_threshold if context else None,
    )
    options = "".join(
        f'<option value="{esc(n)}"{" selected" if n == query.predicted else ""}>{esc(n)}</option>' for n in vocabulary
    )
    head = "".join(f"<th>{esc(c)}</th>" for c in segments.CSV_COLUMNS)
    body_rows = "".join(
        "<tr>" + "".join(
            f'<td class="num">{esc("" if r[c] is None else str(r[c]))}</td>' if c in ("churn_risk", "events")
            else f"<td>{esc(str(r[c]))}</td>" for c in segments.CSV_COLUMNS
        ) + "</tr>"
        for r in records
    )
    shown = f"showing the {len(records)} riskiest" if len(rows) > len(records) else "all shown"
    stamp = datetime.fromtimestamp(read_at, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    model = f"model {esc(context.model_version)}" if context else "no model loaded"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>seqscore segments</title><style>{STYLE}</style></head>
<body>
<h1>Segments</h1>
<p class="muted">Customers by their last activities, predicted next activity and churn risk; {model};
state read {stamp}.</p>
<form id="filters" method="get" action="/segments">
  <label>Last activities (oldest first, * = any)
    <input id="last" name="last" list="activities" placeholder="A,B,*,C" value="{esc(",".join(query.last))}"></label>
  <label>Predicted next
    <select id="predicted" name="predicted"><option value="">any</option>{options}</select></label>
  <label>Minimum churn risk
    <input id="min_churn" name="min_churn" type="number" min="0" max="1" step="0.05"
      value="{query.min_churn:g}"></label>
  <button id="apply" type="submit">Filter</button>
  <datalist id="activities">{"".join(f'<option value="{esc(n)}">' for n in vocabulary)}</datalist>
</form>
{f'<p id="error" class="error">{esc(error)}</p>' if error else ""}
<p id="counts"><strong id="matched">{len(rows)}</strong> of <span id="total">{len(view)}</span> customers match
(<span id="scored">{int(scored.sum())}</span> scored); {shown}.
<a id="download" href="/segments.csv?{esc(query.query_string())}" download="segment.csv">Download CSV</a></p>
{plot}
<table id="results"><thead><tr>{head}</tr></thead><tbody>{body_rows}</tbody></table>
</body></html>
"""
