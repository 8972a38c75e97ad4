"""A one-process serving simulator: requests share a fixed pool of KV pages, with or without compression.

Time advances in decode iterations (one new token for every running request per step). Requests arrive
over time (``Request.arrival``), wait in a first-come-first-served queue, and are admitted when the pool
has their prefill's peak free; after the prefill they keep reserved only what their decoding can still
need (a guaranteed-no-evict scheduler: nothing is ever preempted, so the pool is never exceeded).

A request's pages follow the page-granular rule of ``tokensieve.kv.pages``. The prefill holds the whole
prompt (``prefill_peak="all"``, an engine hook after the context step) or one full layer at a time
(``"layer"``, tokensieve's layer-by-layer compression); then compression frees all but
``max(1, round(keep * L) // P)`` pages per layer (the last one being the page being filled); every decode
token fills the last page and takes a new one when it is full. Memory is conserved at every step:
``free + held + reserved == pool`` (checked).

Quality per request comes from measured bench cells (``QualityTable``), not from the simulator.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from tokensieve.errors import TokenSieveError
from tokensieve.stats import t_interval


class SimulatorError(TokenSieveError, ValueError):
    pass


@dataclass(frozen=True)
class Request:
    id: int
    arrival: int  # step at which it arrives
    context: int  # prompt tokens
    output: int  # tokens to generate


@dataclass(frozen=True)
class Policy:
    """What the server does with a prompt: ``keep`` None = no compression."""

    name: str = "full"
    keep: float | None = None
    page: int = 16
    prefill_peak: str = "all"  # "all" (whole prompt held first) or "layer" (one full layer at a time)

    def __post_init__(self) -> None:
        if self.keep is not None and not 0 < self.keep <= 1:
            raise SimulatorError(f"keep {self.keep!r} is outside (0, 1]: pass a fraction such as 0.25, or None")
        if self.page < 1 or self.prefill_peak not in ("all", "layer"):
            raise SimulatorError("page must be >= 1 and prefill_peak 'all' or 'layer'")

    def prompt_pages(self, context: int) -> int:
        return math.ceil(context / self.page)

    def kept_pages(self, context: int) -> int:
        """Pages per layer after compression: kv.pages' rule (whole pages, at most keep * L tokens)."""
        if self.keep is None:
            return self.prompt_pages(context)
        budget = max(1, min(context, round(self.keep * context)))  # Plan.mean_budget
        return min(self.prompt_pages(context), max(1, budget // self.page))

    def tail_fill(self, context: int) -> int:
        """Tokens in the last kept page (the page being filled is always kept)."""
        return context % self.page or self.page

    def peak_pages(self, req: Request, layers: int) -> int:
        """The most pages (summed over layers) the request ever holds: during prefill or at its last token."""
        full, kept = self.prompt_pages(req.context), self.kept_pages(req.context)
        prefill = layers * full if self.prefill_peak == "all" or self.keep is None else full + (layers - 1) * kept
        return max(prefill, self.decode_pages(req, layers))

    def decode_pages(self, req: Request, layers: int) -> int:
        """Pages (summed over layers) the request holds at its last token: kept pages plus those its output fills."""
        grow = max(0, math.ceil((req.output - (self.page - self.tail_fill(req.context))) / self.page))
        return layers * (self.kept_pages(req.context) + grow)


@dataclass
class Running:
    req: Request
    reserved: int  # pages reserved at admission (its peak)
    held: int  # pages it holds now (summed over layers)
    fill: int  # tokens in its last page
    made: int = 0  # tokens generated


@dataclass
class StepRecord:
    step: int
    running: int
    queued: int
    held: int
    reserved: int
    free: int
    top: int  # the most pages in use at any moment of the step (a prefill's peak included)


@dataclass
class Outcome:
    policy: Policy
    pool: int
    steps: int
    trace: list[StepRecord] = field(default_factory=list)
    finished: list[tuple[Request, int, int]] = field(default_factory=list)  # (request, admitted, done) steps
    pages_freed: int = 0  # by compression, summed over requests and layers

    @property
    def mean_running(self) -> float:
        return sum(r.running for r in self.trace) / max(1, len(self.trace))

    @property
    def max_running(self) -> int:
        return max((r.running for r in self.trace), default=0)

    @property
    def tokens(self) -> int:
        return sum(r.output for r, _, _ in self.finished)

    @property
    def mean_wait(self) -> float:
        return sum(a - r.arrival for r, a, _ in self.finished) / max(1, len(self.finished))


def simulate(requests: list[Request], policy: Policy, pool: int, layers: int, steps: int) -> Outcome:
    """Run ``steps`` decode iterations over a pool of ``pool`` pages (summed over ``layers`` layers)."""
    for r in requests:
        if policy.peak_pages(r, layers) > pool:
            raise SimulatorError(
                f"request {r.id} ({r.context} + {r.output} tokens) needs {policy.peak_pages(r, layers)} pages "
                f"at its peak, more than the whole pool ({pool}): enlarge the pool or shorten the request"
            )
    pending = sorted(requests, key=lambda r: (r.arrival, r.id))
    queue: list[Request] = []
    running: list[Running] = []
    out = Outcome(policy, pool, steps)
    free = pool
    for step in range(steps):
        while pending and pending[0].arrival <= step:
            queue.append(pending.pop(0))
        top = pool - free  # the most pages in use at any moment of this step
        while queue and policy.peak_pages(queue[0], layers) <= free:  # FCFS: the head waits, nobody skips it
            req = queue.pop(0)
            peak = policy.peak_pages(req, layers)
            full, kept = policy.prompt_pages(req.context), policy.kept_pages(req.context)
            held = layers * kept  # after the prefill and its compression
            out.pages_freed += layers * (full - kept)
            free -= peak  # the prefill's peak, held while the prompt is computed and compressed...
            top = max(top, pool - free)
            decode = policy.decode_pages(req, layers)
            free += peak - decode  # ...then only what decoding can still need stays reserved
            running.append(Running(req, decode, held, policy.tail_fill(req.context)))
        for r in running:  # one decode token each
            if r.fill == policy.page:
                r.held += layers
                r.fill = 0
            r.fill += 1
            r.made += 1
            if r.held > r.reserved:
                raise AssertionError("a request outgrew its reservation")  # the peak formula is wrong
        done = [r for r in running if r.made >= r.req.output]
        for r in done:
            free += r.reserved
            out.finished.append((r.req, step - r.made + 1, step))  # one token per step since admission
        running = [r for r in running if r.made < r.req.output]
        held = sum(r.held for r in running)
        reserved = sum(r.reserved - r.held for r in running)
        if free + held + reserved != pool or free < 0:
            raise AssertionError(f"memory not conserved at step {step}: {free} + {held} + {reserved} != {pool}")
        top = max(top, held + reserved)
        if top > pool:
            raise AssertionError(f"pool exceeded at step {step}: {top} > {pool}")
        out.trace.append(StepRecord(step, len(running), len(queue), held, reserved, free, top))
    return out


@dataclass
class QualityTable:
    """Measured quality per (method label, keep, context length): the mean and the 95% half-width over the
    bench samples (e.g. fidelity top-1 agreement with the full cache)."""

    cells: dict[tuple[str, float, int], tuple[float, float, int]]

    @classmethod
    def from_bench(cls, path, kind: str = "fidelity") -> QualityTable:
        import json

        scores: dict[tuple[str, float, int], list[float]] = {}
        with open(path) as f:
            for line in f:
                if not line.startswith('{"type": "cell"'):
                    continue
                c = json.loads(line)
                if c.get("kind") == kind:
                    scores.setdefault((c["method"], float(c["keep"]), int(c["length"])), []).append(c["score"])
        cells = {}
        for key, xs in scores.items():
            iv = t_interval(xs)  # Student-t: a normal 1.96 over 2 samples understated the interval ~6x
            cells[key] = (iv.estimate, iv.half, iv.n)
        return cls(cells)

    def lookup(self, method: str, keep: float | None, context: int) -> tuple[float, float, int]:
        """The cell at the nearest measured length (full cache = 1.0 exactly)."""
        if keep is None:
            return 1.0, 0.0, 0
        lengths = sorted({n for m, k, n in self.cells if m == method and k == keep})
        if not lengths:
            raise SimulatorError(f"no bench cells for {method!r} at keep {keep}: run `tokensieve bench` for them")
        n = min(lengths, key=lambda x: abs(x - context))
        return self.cells[(method, keep, n)]
