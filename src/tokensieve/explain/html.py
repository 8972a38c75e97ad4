"""One self-contained HTML file (inline CSS and script, no network): the context with token or word
highlighting, the value on hover, a switch between methods, the verbalization and the faithfulness table.
``#method=ID`` in the address opens a given method."""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from typing import Any, Protocol


class Shown(Protocol):
    """What the page shows of an ``explain.result.Explanation`` (read structurally: ``result`` imports this
    module to render itself, so this one does not import ``result``)."""

    tokens: list[str]
    question: str
    answer: str
    target: Any  # its ``kind`` is shown beside the answer
    scores: dict[str, Any]  # method id -> [n_tokens]
    seconds: dict[str, float]
    faithfulness: dict[str, dict[str, float]]
    agreement: list[dict[str, Any]]

    @property
    def methods(self) -> list[str]: ...

    def units(self, method: str | None = None) -> Sequence[Any]: ...

    def verbalize(self, method: str | None = None, n: int = 3) -> str: ...

_CSS = """
body{font-family:system-ui,sans-serif;margin:24px;max-width:1100px;color:#222}
#context{white-space:pre-wrap;font-family:ui-monospace,monospace;font-size:13px;line-height:1.7;
border:1px solid #ccc;padding:12px;border-radius:6px;max-height:520px;overflow:auto}
.tok{border-radius:2px}
table{border-collapse:collapse;margin:12px 0;font-size:13px}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
td:first-child,th:first-child{text-align:left}
tr.sel{background:#fff3c4}
#verbalization{font-size:15px;margin:12px 0;padding:8px;background:#f4f6fa;border-radius:6px}
"""

_JS = """
const D = JSON.parse(document.getElementById('data').textContent);
const toks = document.querySelectorAll('#context .tok');
function show(m) {
  const d = D.methods[m]; if (!d) return;
  const byWord = document.getElementById('words').checked;
  const vals = new Array(toks.length).fill(0), label = new Array(toks.length).fill('');
  for (const u of d.units) for (let t = u.start; t < u.end; t++) {
    vals[t] = byWord ? u.share : Math.max(0, d.scores[t]) / d.positive;
    label[t] = `${m}: token ${d.scores[t].toPrecision(3)}; word '${u.text}' ${(100 * u.share).toFixed(1)}%`;
  }
  const peak = Math.max(...vals) || 1;
  toks.forEach((el, i) => {
    const a = vals[i] / peak;
    el.style.backgroundColor = a > 0.02 ? `rgba(220,30,30,${a.toFixed(3)})` : '';
    el.dataset.value = vals[i].toFixed(6);
    el.title = label[i];
  });
  document.getElementById('verbalization').textContent = d.verbalization;
  document.querySelectorAll('#faithfulness tbody tr').forEach(r => r.classList.toggle('sel', r.dataset.method === m));
  document.getElementById('method').value = m;
  document.body.dataset.method = m;
}
const sel = document.getElementById('method');
sel.addEventListener('change', () => show(sel.value));
document.getElementById('words').addEventListener('change', () => show(sel.value));
const h = new URLSearchParams(location.hash.slice(1)).get('method');
show(h && D.methods[h] ? h : D.order[0]);
"""

_FAITH = [
    ("comprehensiveness", "comp"),
    ("comprehensiveness_ratio", "comp/random"),
    ("sufficiency", "suff"),
    ("sufficiency_ratio", "suff/random"),
    ("soft_nc", "soft-NC"),
    ("soft_ns", "soft-NS"),
]


def _data(ex: Shown) -> dict:
    methods = {}
    for m in ex.methods:
        units = ex.units(m)
        scores = [float(x) for x in ex.scores[m]]
        methods[m] = {
            "scores": scores,
            "positive": sum(max(0.0, s) for s in scores) or 1.0,
            "units": [{"start": u.start, "end": u.end, "text": u.text, "share": u.share} for u in units],
            "verbalization": ex.verbalize(m),
        }
    return {"order": ex.methods, "methods": methods}


def render(ex: Shown) -> str:
    e = html.escape
    toks = "".join(f'<span class="tok" data-i="{i}">{e(t)}</span>' for i, t in enumerate(ex.tokens))
    options = "".join(f'<option value="{e(m)}">{e(m)}</option>' for m in ex.methods)
    head = "".join(f"<th>{e(label)}</th>" for _, label in _FAITH)
    rows = ""
    for m, r in ex.faithfulness.items():
        cells = "".join(f"<td>{r[k]:.3f}</td>" for k, _ in _FAITH)
        rows += f'<tr data-method="{e(m)}"><td>{e(m)}</td>{cells}<td>{ex.seconds[m]:.1f}</td></tr>'
    faith = (
        (
            f'<table id="faithfulness"><thead><tr><th>method</th>{head}<th>seconds</th></tr></thead>'
            f"<tbody>{rows}</tbody></table>"
        )
        if rows
        else "<p>faithfulness not measured</p>"
    )
    agree = "".join(
        f"<tr><td>{e(a['a'])} / {e(a['b'])}</td><td>{a['spearman']:.3f}</td><td>{a['kendall']:.3f}</td></tr>"
        for a in ex.agreement
    )
    agree_table = ""
    if agree:
        agree_table = (
            "<h3>Rank agreement between methods</h3><p>Agreement alone is not validity.</p>"
            '<table id="agreement"><thead><tr><th>methods</th><th>Spearman</th><th>Kendall</th></tr></thead>'
            f"<tbody>{agree}</tbody></table>"
        )
    data = json.dumps(_data(ex)).replace("</", "<\\/")
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>tokensieve explain</title><style>{_CSS}</style></head>
<body>
<h2>tokensieve explain</h2>
<p><b>Question</b>: {e(ex.question)}<br><b>Answer</b> ({e(ex.target.kind)}): <span id="answer">{e(ex.answer)}</span></p>
<p><label>method <select id="method">{options}</select></label>
<label><input type="checkbox" id="words" checked> aggregate to words</label></p>
<div id="verbalization"></div>
<div id="context">{toks}</div>
<h3>Faithfulness</h3>
<p>AOPC over k = 1, 5, 10, 20, 50% of the context tokens, removed by replacement; ratio = method / random
ranking (comprehensiveness: higher is better; sufficiency: lower is better).</p>
{faith}
{agree_table}
<script type="application/json" id="data">{data}</script>
<script>{_JS}</script>
</body></html>
"""
