"""PNG plots of a bench run: score versus keep per method, and needle depth x length heatmaps."""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

from tokensieve.measure.bench.report import FIDELITY_ONLY, FULL, RETRIEVAL_ONLY, Results, Row, aggregate, complete
from tokensieve.plotstyle import pyplot, save, styles

DEPTH_BINS = 5


def _plt():
    return pyplot()  # files only, never a window


PANELS = (
    ("retrieval %", lambda r: 100 * r.retrieval, False, RETRIEVAL_ONLY),
    ("fidelity top-1 %", lambda r: 100 * r.fidelity.get("top1", math.nan), False, FIDELITY_ONLY),
    ("fidelity greedy %", lambda r: 100 * r.fidelity.get("greedy", math.nan), False, FIDELITY_ONLY),
    ("KL(full ‖ cell) nats", lambda r: r.fidelity.get("kl", math.nan), True, FIDELITY_ONLY),
    ("KL, long-range tokens", lambda r: r.kl_long, True, FIDELITY_ONLY),
)


def _points(rs: list[Row], method: str, value, log: bool) -> list[tuple[float, float]]:
    pts = sorted((r.keep, value(r)) for r in rs if r.method == method)
    return [(k, v) for k, v in pts if not math.isnan(v) and (not log or v > 0)]


def panels_shown(rows: list[Row]) -> list[str]:
    """The panels of ``score_vs_keep`` that have a point for some length: a run of one task kind (retrieval only,
    or fidelity only) draws only its own panels, never empty ones."""
    lengths = sorted({r.length for r in rows})
    return [name for name, value, log, part in PANELS
            if any(_points(complete(rows, n, part), m, value, log) for n in lengths
                   for m in {r.method for r in rows} - {FULL})]  # fmt: skip


def score_vs_keep(rows: list[Row], path: Path, title: str) -> Path:
    """One row of panels per length: retrieval, fidelity top-1, greedy, KL and long-range KL versus keep (the
    panels with data only)."""
    plt = _plt()
    from matplotlib import ticker

    lengths = sorted({r.length for r in rows})
    shown_panels = set(panels_shown(rows))
    panels = [p for p in PANELS if p[0] in shown_panels] or list(PANELS[:1])
    shown = {r.method for n in lengths for *_, part in panels for r in complete(rows, n, part)}
    methods = sorted(shown - {FULL})
    style = styles(methods)  # a method looks the same in every figure
    width = 4.2 * len(panels) + 2.6  # 2.6 inches on the right for the shared legend, whatever the panel count
    fig, axes = plt.subplots(len(lengths), len(panels), figsize=(width, 3.4 * len(lengths)), squeeze=False)
    for i, length in enumerate(lengths):
        full = next((r for r in rows if r.length == length and r.method == FULL), None)
        for j, (name, value, log, part) in enumerate(panels):
            rs = complete(rows, length, part)  # the methods that ran every sample of this panel's tasks
            ax = axes[i][j]
            for m in methods:
                pts = _points(rs, m, value, log)
                if pts:
                    ax.plot(*zip(*pts, strict=True), ms=3.5, lw=1.2, label=m, **style[m])
            if full is not None and not math.isnan(value(full)) and not log:
                ax.axhline(value(full), color="black", ls="--", lw=1, label="full cache")
            ax.set_xscale("log")
            ks = sorted({r.keep for r in rs if r.method != FULL})
            ax.set_xticks(ks, [f"{k:g}" for k in ks])
            ax.minorticks_off()
            if log:
                ax.set_yscale("log")
                ax.yaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))
                ax.yaxis.set_minor_formatter(ticker.NullFormatter())
            ax.set_title(f"{length} tokens: {name}", fontsize=9)
            ax.set_xlabel("keep ratio", fontsize=8)
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
    legend: dict[str, object] = {}
    for ax in axes.ravel():
        for h, label in zip(*ax.get_legend_handles_labels(), strict=True):
            legend.setdefault(label, h)
    fig.legend(legend.values(), legend.keys(), loc="center right", fontsize=7, frameon=False)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0, 1 - 2.6 / width, 0.97))
    return save(fig, path)


def needle_heatmaps(res: Results, path: Path, title: str) -> Path | None:
    """Per method: fraction of needle items retrieved, by needle depth (rows) and length x keep (columns),
    over every retrieval task whose items have a depth (question unseen)."""
    plt = _plt()
    hits: dict[str, dict[tuple, list[float]]] = defaultdict(lambda: defaultdict(list))
    for c in res.select(engine="tokensieve", setting="agnostic", kind="retrieval"):
        for depth, hit in c.get("items", []):
            if depth is None:
                continue
            b = min(DEPTH_BINS - 1, int(depth * DEPTH_BINS))
            hits[c["method"]][(c["length"], c["keep"], b)].append(float(hit))
    if not hits:
        return None
    methods = [FULL, *sorted(set(hits) - {FULL})] if FULL in hits else sorted(hits)
    cols = sorted({(length, keep) for h in hits.values() for length, keep, _ in h}, key=lambda x: (x[0], -x[1]))
    n = len(methods)
    ncol = min(4, n)
    nrow = math.ceil(n / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.3 * ncol, 2.6 * nrow), squeeze=False)
    im = None
    for idx, m in enumerate(methods):
        ax = axes[idx // ncol][idx % ncol]
        my_cols = [c for c in cols if any((c[0], c[1], b) in hits[m] for b in range(DEPTH_BINS))]
        grid = [[math.nan] * len(my_cols) for _ in range(DEPTH_BINS)]
        for j, (length, keep) in enumerate(my_cols):
            for b in range(DEPTH_BINS):
                v = hits[m].get((length, keep, b))
                if v:
                    grid[b][j] = sum(v) / len(v)
        im = ax.imshow(grid, vmin=0, vmax=1, cmap="RdYlGn", aspect="auto", origin="upper")
        for b in range(DEPTH_BINS):
            for j in range(len(my_cols)):
                if not math.isnan(grid[b][j]):
                    ax.text(j, b, f"{100 * grid[b][j]:.0f}", ha="center", va="center", fontsize=6)
        ax.set_xticks(range(len(my_cols)), [f"{length}\n{keep:g}" for length, keep in my_cols], fontsize=6)
        edges = [f"{b / DEPTH_BINS:.1f}-{(b + 1) / DEPTH_BINS:.1f}" for b in range(DEPTH_BINS)]
        ax.set_yticks(range(DEPTH_BINS), edges, fontsize=6)
        ax.set_title(m, fontsize=8)
    for idx in range(n, nrow * ncol):
        axes[idx // ncol][idx % ncol].axis("off")
    fig.suptitle(title + " (rows: needle depth; columns: length / keep; % of needles retrieved)", fontsize=9)
    fig.tight_layout(rect=(0, 0, 0.93, 0.96))
    if im is not None:
        fig.colorbar(im, ax=axes.ravel().tolist(), fraction=0.02, pad=0.01)
    save(fig, path)
    return path


def kvpress_agreement(res: Results, path: Path) -> Path | None:
    """Per-cell scores of kvpress presses against their matched tokensieve specs (same samples)."""
    from tokensieve.measure.bench.methods import PRESSES

    plt = _plt()
    ts = {
        (c["task"], c["length"], c["sample"], c["method"], c["keep"]): c
        for c in res.select(engine="tokensieve", setting="agnostic")
    }
    pts: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for c in res.select(engine="kvpress", setting="agnostic", kind="fidelity"):
        name = c["method"].split(":", 1)[-1]
        press = PRESSES.get(name)
        spec = FULL if c["method"] == FULL else (press.matched if press else None)
        other = ts.get((c["task"], c["length"], c["sample"], spec, c["keep"])) if spec else None
        if other is not None:
            pts[name].append((c["metrics"]["nll"], other["metrics"]["nll"]))
    if not pts:
        return None
    fig, ax = plt.subplots(figsize=(4.6, 4.2))
    lo = min(min(a, b) for v in pts.values() for a, b in v)
    hi = max(max(a, b) for v in pts.values() for a, b in v)
    ax.plot([lo, hi], [lo, hi], color="grey", lw=0.8)
    for name, v in sorted(pts.items()):
        ax.scatter(*zip(*v, strict=True), s=9, label=name)
    ax.set_xlabel("kvpress NLL (nats/token)", fontsize=8)
    ax.set_ylabel("tokensieve matched spec NLL", fontsize=8)
    ax.set_title("fidelity cells: kvpress vs tokensieve, same samples", fontsize=9)
    ax.legend(fontsize=7)
    ax.tick_params(labelsize=7)
    fig.tight_layout()
    save(fig, path)
    return path


def write_plots(out: Path) -> list[Path]:
    res = Results.load(out / "results.jsonl")
    model = res.meta[-1].get("model", "") if res.meta else ""
    rows = aggregate(res)
    shown = panels_shown(rows)
    kinds = []  # the title names what ran: a fidelity-only run is not "question unseen"
    if "retrieval %" in shown:
        kinds.append("retrieval, question unseen")  # aggregate() keeps the query-agnostic cells only
    if any(name != "retrieval %" for name in shown):
        kinds.append("fidelity along the true continuation")
    made = [score_vs_keep(rows, out / "score_vs_keep.png", f"{model}: score vs keep ({'; '.join(kinds)})")]
    for maker, name in ((needle_heatmaps, "needle_depth.png"),):
        p = maker(res, out / name, model)
        if p:
            made.append(p)
    p = kvpress_agreement(res, out / "kvpress_agreement.png")
    if p:
        made.append(p)
    return made
