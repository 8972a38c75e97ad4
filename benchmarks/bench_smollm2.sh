#!/usr/bin/env bash
# The committed SmolLM2 sweep (benchmarks/results/bench_smollm2), as four resumable invocations into one
# folder: each adds cells; rerunning any of them skips what is already in results.jsonl. One thread.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=benchmarks/results/bench_smollm2
TS=.venv/bin/tokensieve
KEEP=0.5,0.25,0.1
# 1. fidelity (separates methods cleanly at this model size): every prefill-eviction method, 10 samples
$TS bench --tasks fidelity --lengths 1024,2048 --keep $KEEP --samples 10 --out $OUT
# 2. kvpress on the same samples (its own pipeline, one prefill per cell), with the matched tokensieve specs
$TS bench --tasks fidelity --lengths 1024,2048 --keep $KEEP --samples 2 --compare kvpress --out $OUT
$TS bench --tasks niah_single,niah_single:haystack=prose --lengths 1024,2048 --keep $KEEP --samples 1 \
  --compare kvpress --out $OUT
# 3. RULER-style retrieval, question unseen (the default mix: 10 task variants)
$TS bench --tasks retrieval --lengths 1024,2048 --keep $KEEP --samples 2 --out $OUT
# 4. query-aware retrieval (labelled separately in the summary)
$TS bench --tasks niah_single,niah_single:haystack=prose --lengths 1024,2048 --keep $KEEP --samples 2 \
  --query-aware --out $OUT
