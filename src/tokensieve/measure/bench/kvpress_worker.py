"""Run kvpress cells for ``tokensieve bench --compare kvpress``, in kvpress's own environment.

kvpress 0.5.5 needs transformers < 5.3 (its hooks read ``cache_position``, which transformers 5.3+ no
longer passes to attention layers), so it lives in a separate virtual environment and this script runs
there as a subprocess: it imports only the standard library, torch, transformers, kvpress and the
sibling ``metrics.py`` (loaded by path), never tokensieve.

Protocol: the first stdin line is the setup ``{"model": dir, "threads": n}``; every further line is one
job ``{"sample": {...}, "cells": [{"press": name, "params": {...}, "keep": k}, ...]}``. For each cell
the worker prints one JSON line, then ``{"done": true}`` after the job. A wrapper press names its scorer as
``params["press"] = {"press": name, "params": {...}}`` (nested as deep as needed; the compression ratio goes to
the innermost press). A job ``{"scores": {"ids": [...]}, "cells": [...]}`` instead prefills the token ids under
each press and reports, per layer, the scores its scorer computed (``scores``, when it has a scorer) and the
slots each KV head keeps (``kept``: held slots found by their values, or keys where values were merged, less
the head-wise presses' masked slots), for ``benchmarks/unseen_kvpress/agreement.py``. Retrieval cells go through
kvpress's own ``KVPressTextGenerationPipeline``; fidelity cells apply the press exactly as that pipeline
does (``with press(model): model.model(context)``) and then score the continuation teacher-forced.
A ``press`` of ``null`` is the full cache.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import time
from pathlib import Path

# run as a script, this file's folder is sys.path[0]: its siblings must not shadow real packages
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]

import torch  # noqa: E402

_spec = importlib.util.spec_from_file_location("ts_bench_metrics", _HERE / "metrics.py")
metrics = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(metrics)

# presses that need the attention matrix (kvpress reads it from eager attention)
EAGER = {"ObservedAttentionPress"}


def cache_bytes(cache) -> int:
    """Bytes of the keys and values the cache holds (its tensors' own sizes; kvpress slices answers off)."""
    total = 0
    for layer in cache.layers:
        for t in (layer.keys, layer.values):
            if t is not None and t.numel():
                total += t.numel() * t.element_size()
    return total


def held(cache) -> list[int]:
    return [int(layer.keys.shape[-2]) for layer in cache.layers]


class Worker:
    def __init__(self, model_dir: str, threads: int | None) -> None:
        if threads:
            torch.set_num_threads(threads)
        import kvpress
        from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

        self.kvpress = kvpress
        self.tok = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        self.model = AutoModelForCausalLM.from_pretrained(
            model_dir, dtype=torch.float32, local_files_only=True, attn_implementation="sdpa"
        ).eval()
        self.pipe = pipeline("kv-press-text-generation", model=self.model, tokenizer=self.tok, device="cpu")
        self.version = kvpress.__version__ if hasattr(kvpress, "__version__") else _version("kvpress")

    def press(self, name: str | None, params: dict, keep: float, n_tokens: int):
        """The press at the ratio that keeps exactly tokensieve's count, round(keep * T): kvpress keeps
        int((1 - ratio) * T), which for ratio = 1 - keep can be one token fewer (2048 x 0.1: 204, not 205)."""
        if name is None:
            return None
        n = max(1, min(n_tokens, round(keep * n_tokens)))
        return self.build(name, params, max(0.0, 1.0 - (n + 0.5) / n_tokens))

    def build(self, name: str, params: dict, ratio: float):
        """A press and, for a wrapper, its scorer press (``params["press"]``), the ratio on the innermost one
        (a wrapper reads its scorer's); a press with no ``compression_ratio`` field takes only its params."""
        import dataclasses

        cls = getattr(self.kvpress, name)
        params = dict(params)
        inner = params.pop("press", None)
        if inner is not None:
            return cls(press=self.build(inner["press"], inner.get("params", {}), ratio), **params)
        fields = {f.name for f in dataclasses.fields(cls) if f.init}
        return cls(compression_ratio=ratio, **params) if "compression_ratio" in fields else cls(**params)

    def attention(self, name: str | None) -> None:
        """Set the attention a cell's press needs, and drop any head-wise masks a previous cell's press left on the
        attention modules: kvpress clears ``masked_key_indices`` only in its patched (SDPA) attention at a prefill,
        so a press that prefills with eager attention (KVComposePress switches to it) would otherwise decode with,
        and report as evicted, the last head-wise press's slots."""
        want = "eager" if name in EAGER else "sdpa"
        if self.model.config._attn_implementation != want:
            self.model.set_attn_implementation(want)
        for _, module in _attn(self.model):
            module.masked_key_indices = None

    def qa(self, sample: dict, cell: dict) -> dict:
        from transformers import DynamicCache

        pre = self.pipe.preprocess(sample["context"], questions=[""], answer_prefix="", max_context_length=10**9)
        press = self.press(cell["press"], cell.get("params", {}), cell["keep"], int(pre["context_ids"].shape[1]))
        self.attention(cell["press"])
        answers, seconds, kv, tokens = [], 0.0, 0, []
        for q in sample["questions"]:
            cache = DynamicCache()
            start = time.perf_counter()
            with torch.inference_mode():
                out = self.pipe(
                    sample["context"],
                    # tokensieve's chat prompt puts a blank line between the context and the question
                    question=sample.get("separator", "\n\n") + q["text"],
                    answer_prefix=q["answer_prefix"],
                    press=press,
                    max_new_tokens=q["max_new_tokens"],
                    cache=cache,
                )
            seconds += time.perf_counter() - start
            answers.append(out["answer"])
            kv, tokens = cache_bytes(cache), held(cache)
        return {
            "answers": answers,
            "seconds": seconds,
            "kv_bytes": kv,
            "tokens_held": tokens,
            "context_tokens": int(pre["context_ids"].shape[1]),
        }

    def fidelity(self, sample: dict, cell: dict, ref: dict) -> dict:
        from transformers import DynamicCache

        press = self.press(cell["press"], cell.get("params", {}), cell["keep"], len(sample["context_ids"]))
        self.attention(cell["press"])
        ctx = torch.tensor([sample["context_ids"]])
        cont = torch.tensor(sample["continuation"])
        t = ctx.shape[1]
        cache = DynamicCache()
        start = time.perf_counter()
        with torch.inference_mode():
            with press(self.model) if press is not None else _null():
                out = self.model.model(input_ids=ctx, past_key_values=cache)  # as the kvpress pipeline does
            kv, tokens = cache_bytes(cache), held(cache)
            last = self.model.lm_head(out.last_hidden_state[:, -1])
            inputs = cont[:-1].view(1, -1)
            true_logits = self.model(
                input_ids=inputs, past_key_values=cache, position_ids=torch.arange(t, t + inputs.shape[1])[None]
            ).logits[0]
            cache.crop(-inputs.shape[1])
            if ref.get("greedy") is None:  # the full cache: decode its greedy continuation
                g = [int(last.argmax())]
                for i in range(sample["meta"]["greedy"] - 1):
                    step = self.model(
                        input_ids=torch.tensor([[g[-1]]]),
                        past_key_values=cache,
                        position_ids=torch.tensor([[t + i]]),
                    ).logits[0, -1]
                    g.append(int(step.argmax()))
                cache.crop(-(len(g) - 1))
                ref["greedy"] = g
            g = torch.tensor(ref["greedy"])
            greedy_logits = self.model(
                input_ids=g[:-1].view(1, -1), past_key_values=cache, position_ids=torch.arange(t, t + len(g) - 1)[None]
            ).logits[0]
        seconds = time.perf_counter() - start
        if "logprobs" not in ref:  # the full cache: also find the long-range positions (no press involved)
            ref["logprobs"] = metrics.reference(true_logits)
            lead = sample["context_ids"][: sample["meta"].get("lead", 0)]
            short = [*lead, *sample["context_ids"][len(lead) :][-metrics.SHORT_CONTEXT :]]
            with torch.inference_mode():
                logits = self.model(input_ids=torch.tensor([[*short, *cont[:-1].tolist()]])).logits[0, len(short) :]
            ref["long"] = metrics.long_positions(ref["logprobs"], metrics.reference(logits), cont[1:])
        m = metrics.fidelity(true_logits, cont[1:], ref["logprobs"], greedy_logits, g[1:], ref["long"])
        return {
            "metrics": m,
            "target_logprobs": metrics.target_logprobs(true_logits, cont[1:]),
            "seconds": seconds,
            "kv_bytes": kv,
            "tokens_held": tokens,
            "context_tokens": t,
        }

    def scores(self, job: dict) -> None:
        """Prefill ``job["scores"]["ids"]`` under each cell's press; emit its scores and kept slots per layer."""
        from transformers import DynamicCache

        ids = torch.tensor([job["scores"]["ids"]])
        t = ids.shape[1]
        self.attention(None)
        full = DynamicCache()
        with torch.inference_mode():
            self.model.model(input_ids=ids, past_key_values=full)
        for cell in job["cells"]:
            try:
                press = self.press(cell["press"], cell.get("params", {}), cell["keep"], t)
                self.attention(cell["press"])
                captured: dict[int, list] = {}
                _capture_scores(press, captured)
                cache = DynamicCache()
                with torch.inference_mode(False), torch.no_grad(), press(self.model):  # kvgrad needs no inference mode
                    self.model.model(input_ids=ids, past_key_values=cache)
                kept = {i: _kept(full.layers[i], cache.layers[i], _masked(layer), t) for i, layer in _attn(self.model)}
                res = {"scores": captured, "kept": kept}
            except Exception as e:  # report, keep going
                res = {"error": f"{type(e).__name__}: {e}"}
            emit({"cell": cell, **res})
        emit({"done": True})

    def job(self, job: dict) -> None:
        if "scores" in job:
            return self.scores(job)
        sample = job["sample"]
        ref: dict = {}
        cells = sorted(job["cells"], key=lambda c: c["press"] is not None)  # the full cache first
        for cell in cells:
            reset_peak_rss()
            try:
                if sample.get("context_ids") is not None:
                    if cell["press"] is not None and not ref:
                        self.fidelity(sample, {"press": None, "keep": 1.0}, ref)
                    res = self.fidelity(sample, cell, ref)
                else:
                    res = self.qa(sample, cell)
            except Exception as e:  # report, keep going: one failing press must not sink the run
                res = {"error": f"{type(e).__name__}: {e}"}
            emit({"cell": cell, **res, "rss_peak": peak_rss()})
        emit({"done": True})


def _attn(model):
    return [(int(layer.self_attn.layer_idx), layer.self_attn) for layer in model.model.layers]


def _capture_scores(press, captured: dict) -> None:
    """Record what the press's scorer computes per layer: a ScorerPress's ``score`` output, or a KVzip-style
    press's ``score_val`` just before it compresses (the first call per layer wins: a wrapper may score twice)."""
    inner = press
    while getattr(inner, "press", None) is not None and hasattr(inner.press, "compress"):
        inner = inner.press
    if hasattr(inner, "score_val") and hasattr(inner, "compress_post"):
        post = inner.compress_post

        def compress_post(model, *a, **k):
            for i, s in enumerate(inner.score_val):
                captured.setdefault(i, s[0].float().tolist())
            return post(model, *a, **k)

        inner.compress_post = compress_post
    elif hasattr(inner, "score"):
        score = inner.score

        def scored(module, *a, **k):
            s = score(module, *a, **k)
            captured.setdefault(int(module.layer_idx), s[0].detach().float().tolist())
            return s

        inner.score = scored


def _masked(module):
    m = getattr(module, "masked_key_indices", None)
    return None if m is None else [x.tolist() for x in m]


def _nearest(full, row) -> int:
    """The slot of ``full [T, D]`` equal to ``row`` to float rounding (eager attention, which observed_attention
    needs, differs from SDPA in the last bits from the second layer on), else -1."""
    dist = (full.float() - row.float()).abs().amax(-1)
    j = int(dist.argmin())
    return j if float(dist[j]) <= 1e-4 * max(1.0, float(row.abs().max())) else -1


def _kept(full, layer, masked, t: int) -> list[list[int]]:
    """Per KV head, the context slots the compressed layer holds: each held row found in the full prefill by its
    value (merging presses change values: then by its key; re-rotation changes keys: values still match), less
    the slots a head-wise press masks."""
    out = []
    n_ctx = min(t, layer.values.shape[2])
    for h in range(full.values.shape[1]):
        got = []
        for k, v in zip(layer.keys[0, h, :n_ctx], layer.values[0, h, :n_ctx], strict=True):
            j = _nearest(full.values[0, h], v)
            got.append(_nearest(full.keys[0, h], k) if j < 0 else j)
        out.append(got)
    if masked is not None:
        _, heads, seqs = masked
        for h, j in zip(heads, seqs, strict=True):
            if j in out[h]:
                out[h].remove(j)
    return out


def reset_peak_rss() -> None:
    """Reset the kernel's peak-RSS mark (Linux); the cell's own peak is then read from VmHWM."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_rss() -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


class _null:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def _version(name: str) -> str:
    from importlib.metadata import version

    return version(name)


def emit(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def main() -> None:
    setup = json.loads(sys.stdin.readline())
    worker = Worker(setup["model"], setup.get("threads"))
    import transformers

    emit({"ready": True, "kvpress": worker.version, "transformers": transformers.__version__})
    for line in sys.stdin:
        if line.strip():
            worker.job(json.loads(line))


if __name__ == "__main__":
    main()
