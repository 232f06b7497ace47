"""The leaderboard as one self-contained HTML page: inline CSS, JS and SVG, no network.

Tables are ``<table class="sortable">``: clicking a header sorts the rows by that column
(numbers numerically, missing values last) and toggles the direction, shown by ``aria-sort``.
Each cell carries its raw value in ``data-value``, and each row its entry number in
``data-entry``, so tests (and people) can check the page against ``leaderboard.json``.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from typing import Any

from agentgym.eval.table import COLUMNS, cells, families

__all__ = ["render_html", "score_plot"]

_TEXT_COLUMNS = {"env", "model", "settings"}

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:2rem;color:#1b1f24}
h1{margin-top:0}h2{margin-top:2rem;border-bottom:1px solid #d0d7de;padding-bottom:.2rem}
table{border-collapse:collapse;margin:.5rem 0;font-variant-numeric:tabular-nums}
th,td{border:1px solid #d0d7de;padding:.25rem .5rem;text-align:right;white-space:nowrap}
th{background:#f6f8fa;cursor:pointer;user-select:none}
th[aria-sort=ascending]::after{content:" \\25B2"}th[aria-sort=descending]::after{content:" \\25BC"}
td.text,th.text{text-align:left}tbody tr:nth-child(even){background:#fbfbfc}
p.note{color:#57606a;max-width:60rem}svg text{font:12px system-ui,sans-serif}
"""

_JS = """
document.querySelectorAll('table.sortable').forEach(function (table) {
  var headers = table.tHead.rows[0].cells;
  Array.prototype.forEach.call(headers, function (th, col) {
    th.addEventListener('click', function () {
      var ascending = th.getAttribute('aria-sort') !== 'ascending';
      Array.prototype.forEach.call(headers, function (h) { h.removeAttribute('aria-sort'); });
      th.setAttribute('aria-sort', ascending ? 'ascending' : 'descending');
      var numeric = th.dataset.type === 'number';
      var body = table.tBodies[0];
      var rows = Array.prototype.slice.call(body.rows);
      rows.sort(function (a, b) {
        var x = a.cells[col].dataset.value, y = b.cells[col].dataset.value;
        if (numeric) {
          x = x === '' ? NaN : Number(x); y = y === '' ? NaN : Number(y);
          if (isNaN(x) || isNaN(y)) { return isNaN(x) - isNaN(y); }
          return ascending ? x - y : y - x;
        }
        return ascending ? x.localeCompare(y) : y.localeCompare(x);
      });
      rows.forEach(function (row) { body.appendChild(row); });
    });
  });
});
"""


def _value(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    return html.escape(str(value), quote=True)


def _table(table_id: str, entries: Sequence[Mapping[str, Any]],
           numbers: Mapping[int, int]) -> str:
    head = "".join(
        f'<th class="text" data-key="{k}">{html.escape(h)}</th>' if k in _TEXT_COLUMNS
        else f'<th data-key="{k}" data-type="number">{html.escape(h)}</th>' for k, h in COLUMNS)
    rows = []
    for entry in entries:
        row = cells(entry)
        tds = "".join(
            f'<td{" class=text" if k in _TEXT_COLUMNS else ""} data-key="{k}" '
            f'data-value="{_value(row[k][1])}">{html.escape(row[k][0])}</td>' for k, _ in COLUMNS)
        rows.append(f'<tr data-entry="{numbers[id(entry)]}">{tds}</tr>')
    return (f'<table class="sortable" id="{html.escape(table_id)}"><thead><tr>{head}</tr>'
            f'</thead><tbody>{"".join(rows)}</tbody></table>')


def score_plot(entries: Sequence[Mapping[str, Any]]) -> str:
    """An inline SVG: one bar per entry (mean reward) with its 95 % interval as a whisker."""
    if not entries:
        return ""
    label_w, plot_w, row_h, top = 420, 440, 22, 24
    spans = []
    for entry in entries:
        s = entry["summary"]
        mean = s["mean_reward"] if s["mean_reward"] is not None else math.nan
        ci = s["ci95"] if s["ci95"] is not None and math.isfinite(s["ci95"]) else 0.0
        spans.append((mean, ci))
    finite = [(m, c) for m, c in spans if math.isfinite(m)]
    lo = min([0.0] + [m - c for m, c in finite])
    hi = max([1.0] + [m + c for m, c in finite])

    def x(v: float) -> float:
        return label_w + (v - lo) / (hi - lo) * plot_w

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" id="score-plot" role="img" '
             f'aria-label="mean reward per entry" width="{label_w + plot_w + 20}" '
             f'height="{top + row_h * len(entries) + 10}">']
    for tick in (lo, (lo + hi) / 2, hi):
        parts.append(f'<line x1="{x(tick):.1f}" x2="{x(tick):.1f}" y1="{top - 6}" '
                     f'y2="{top + row_h * len(entries)}" stroke="#d0d7de"/>'
                     f'<text x="{x(tick):.1f}" y="{top - 10}" text-anchor="middle">{tick:g}</text>')
    for i, (entry, (mean, ci)) in enumerate(zip(entries, spans, strict=True)):
        y = top + i * row_h
        label = html.escape(f'{entry["env_id"]} · {entry["model"]} · '
                            f'{entry["summary"]["tasks"]}×{entry["k"]}')
        parts.append(f'<text x="{label_w - 8}" y="{y + 15}" text-anchor="end">{label}'
                     f'<title>{html.escape(entry["settings_label"])}</title></text>')
        if not math.isfinite(mean):
            continue
        x0, x1 = sorted((x(0.0 if lo <= 0 <= hi else lo), x(mean)))
        parts.append(f'<rect class="bar" data-entry="{i}" data-mean="{mean:.6f}" x="{x0:.1f}" '
                     f'y="{y + 4}" width="{max(x1 - x0, 1):.1f}" height="{row_h - 8}" '
                     f'fill="#4c8bf5"><title>{mean:.3f} ± {ci:.3f}</title></rect>')
        if ci > 0:
            parts.append(f'<line x1="{x(mean - ci):.1f}" x2="{x(mean + ci):.1f}" '
                         f'y1="{y + row_h / 2}" y2="{y + row_h / 2}" stroke="#1b1f24"/>')
    parts.append("</svg>")
    return "".join(parts)


def render_html(entries: Sequence[Mapping[str, Any]]) -> str:
    """The whole page: note, score plot, overall table, one table per env family."""
    numbers = {id(e): i for i, e in enumerate(entries)}
    body = [
        "<h1>agentgym leaderboard</h1>",
        '<p class="note">Mean reward over tasks with a 95 % Student-t interval (the task is the '
        "unit); pass@k is the unbiased estimator of Chen et al. (2021), pass^k the chance that "
        "k samples all pass. Failed rollouts count in the error rate, never as a score of 0. "
        "Entries with different settings are never pooled. Click a header to sort.</p>",
    ]
    if not entries:
        body.append("<p>No finished runs found.</p>")
    else:
        body += ["<h2>Scores</h2>", score_plot(entries), "<h2>Overall</h2>",
                 _table("overall", entries, numbers)]
        for family, members in families(entries).items():
            body += [f"<h2>{html.escape(family)}</h2>",
                     _table(f"family-{family}", members, numbers)]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>agentgym leaderboard</title><style>{_CSS}</style></head><body>"
            + "\n".join(body) + f"<script>{_JS}</script></body></html>\n")
