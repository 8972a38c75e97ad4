"""Redraw every figure that comes from committed results files (no model runs), each with its own script, in the
house style (``tokensieve.plotstyle``):

    PYTHONPATH=src .venv/bin/python benchmarks/replot.py

Bench folders: ``score_vs_keep.png`` / ``needle_depth.png`` (``tokensieve.measure.bench.plots``); explanations
(``explain/explain_table.py --plot``, per run and combined); GGUF quantization (``quant_gguf/table.py --plot``);
serving, labelled a simulation (``serving_sim/serving_plot.py``). The train arms' figure is drawn by
``train/train_bench.py`` when the arms have run (no committed rows yet); vision's by ``vision/report.py``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ("unseen_kvpress/results", "unseen_bytes/results", "unseen_fidelity/results", "kv_pages/results",
         "kv_pages/results_serving30", "unseen/results/1024", "unseen/results/2048", "kv_sweep/results")  # fmt: skip
EXPLAIN = ("faith_512", "faith_1024", "faith_2048", "speed_all")


def main() -> None:
    from tokensieve.measure.bench.plots import write_plots

    for folder in BENCH:
        for p in write_plots(ROOT / "benchmarks" / folder):
            print(p.relative_to(ROOT))
    sys.path.insert(0, str(ROOT / "benchmarks/explain"))
    from explain_table import plot

    runs = [str(ROOT / "benchmarks/explain/results" / d) for d in EXPLAIN]
    for run in runs:
        print(plot([run], Path(run) / "plots.png").relative_to(ROOT))
    print(plot(runs, ROOT / "benchmarks/explain/results/explain.png").relative_to(ROOT))
    for cmd in (["benchmarks/quant_gguf/table.py", "smollm2", "gemma3-270m", "--plot",
                 "benchmarks/quant_gguf/results/quality.png"], ["benchmarks/serving_sim/serving_plot.py"]):  # fmt: skip
        subprocess.run([sys.executable, *cmd], cwd=ROOT, check=True)


if __name__ == "__main__":
    main()
