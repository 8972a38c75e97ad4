"""Toward serving engines: a page-pool simulator fed by measured bench quality (see docs/serving.md).

Page-granular eviction itself lives in the core (``tokensieve.kv.pages``); this package is a consumer.
"""

from tokensieve.serving.simulator import Outcome, Policy, QualityTable, Request, SimulatorError, simulate
from tokensieve.serving.workload import poisson_requests

__all__ = ["Outcome", "Policy", "QualityTable", "Request", "SimulatorError", "poisson_requests", "simulate"]
