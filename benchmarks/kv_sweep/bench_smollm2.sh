#!/usr/bin/env bash
# The committed SmolLM2 sweep (benchmarks/kv_sweep/results): resumable invocations into one folder;
# each adds cells, and rerunning any of them skips what is already in results.jsonl. One thread each.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=benchmarks/kv_sweep/results
TS=.venv/bin/tokensieve
KEEP=0.5,0.25,0.1
SPARSE=quest,tokenselect,tidal,double_sparsity,fasa,hisa,token_sparse
# 1. fidelity (separates methods cleanly at this model size): every prefill-eviction method, 14 samples
$TS bench --tasks fidelity --lengths 1024,2048 --keep $KEEP --samples 14 --out $OUT
# 2. head-adaptive budgets, merging, mixed precision, evict-only EMS; attention modifiers (own prefill, keep 1)
$TS bench --tasks fidelity --lengths 1024,2048 --keep $KEEP --samples 14 \
  --methods ems:merge=false,ems,snapkv@adakv,h2o@adakv,snapkv@zipvl,mikv,zipcache_quant --out $OUT
$TS bench --tasks fidelity --lengths 1024,2048 --keep $KEEP --samples 14 --methods act,zerotuning --out $OUT
# 3. kvpress on the same samples (its own pipeline, one prefill per cell), with the matched tokensieve specs
$TS bench --tasks fidelity --lengths 1024,2048 --keep $KEEP --samples 2 --compare kvpress --out $OUT
$TS bench --tasks niah_single,niah_single:haystack=prose --lengths 1024,2048 --keep $KEEP --samples 1 \
  --compare kvpress --out $OUT
# 4. RULER-style retrieval, question unseen (the default mix: 10 task variants; stopped after sample 0 of 2
#    plus part of sample 1, see the notes in summary.md)
$TS bench --tasks retrieval --lengths 1024,2048 --keep $KEEP --samples 2 --out $OUT
# 5. query-aware retrieval (labelled separately in the summary)
$TS bench --tasks niah_single,niah_single:haystack=prose --lengths 1024,2048 --keep $KEEP --samples 2 \
  --query-aware --out $OUT
# 6. sparse decoding on the same prefills: keep = the read budget (1/8, 1/16)
$TS bench --tasks fidelity --lengths 1024,2048 --keep 0.125,0.0625 --samples 4 --methods $SPARSE --out $OUT
$TS bench --tasks niah_single,niah_single:haystack=prose --lengths 1024,2048 --keep 0.125,0.0625 --samples 2 \
  --methods $SPARSE --out $OUT
