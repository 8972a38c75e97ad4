"""summary.md and PNG plots from a ``results.jsonl`` (also usable alone: ``tokensieve bench --report-only``).

One module per job: ``results`` (loading), ``aggregate`` (rows per method x keep), ``tables`` (markdown
tables), ``kvpress`` (the comparison), ``sections`` (sparse reads, costs, sample counts), ``summary`` (the prose).
"""

from tokensieve.measure.bench.report.aggregate import FIDELITY_ONLY, RETRIEVAL_ONLY, Row, aggregate, complete
from tokensieve.measure.bench.report.kvpress import kvpress_rows
from tokensieve.measure.bench.report.results import FIDELITY_KEYS, FULL, Results, fmt, half_ci, mean, sweep_samples
from tokensieve.measure.bench.report.summary import write_summary
from tokensieve.measure.bench.report.tables import compact, headline

__all__ = [
    "FIDELITY_KEYS",
    "FIDELITY_ONLY",
    "FULL",
    "RETRIEVAL_ONLY",
    "Results",
    "Row",
    "aggregate",
    "compact",
    "complete",
    "fmt",
    "half_ci",
    "headline",
    "kvpress_rows",
    "mean",
    "sweep_samples",
    "write_summary",
]
