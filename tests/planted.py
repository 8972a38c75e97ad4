"""A tiny Llama built by hand to contain known heads (for retrieval-head detection tests).

Residual stream (128 dims): the token as a one-hot code (dims 0-35), the previous token's code written by
layer 0 (36-71), a constant 1 (72), and the induction head's output (73-108). RoPE base 1e6, head dim 64.

- layer 0, query head 0 / KV head 0: a *previous-token head*. Its query and key come from the constant dim
  on the six fastest RoPE pairs, the key pre-rotated by one position, so the logit peaks at distance 1; its
  value copies the token code and the output writes it to the "previous token" dims.
- layer 1, query head 2 / KV head 1: an *induction head*. Query = the current token's code, key = the
  previous token's code, both on slow RoPE pairs (position-independent): position i attends to the position
  right after the previous occurrence of its own token, and copies that token to the output dims, which the
  unembedding reads: the model continues a repeated sequence.
- layer 1, query head 0 / KV head 0: an *echo head*: query and key are both the token code, so a token
  attends to its previous occurrences (and itself).
Every other weight is zero (MLPs included), so the other heads attend uniformly and write nothing.
"""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM

VOCAB, HIDDEN, HEAD_DIM = 36, 128, 64
TOK, PREV, CONST, OUT = list(range(0, 36)), list(range(36, 72)), 72, list(range(73, 109))
CONTENT = list(range(14, 32)) + list(range(46, 64))  # slow RoPE pairs: rotation < 0.1 rad over 40 tokens
FAST = range(6)  # the six fastest RoPE pairs
BASE = 1e6


def planted_model() -> LlamaForCausalLM:
    cfg = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=HEAD_DIM,
        max_position_embeddings=512,
        rope_parameters={"rope_type": "default", "rope_theta": BASE},
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" not in name:
                p.zero_()
        emb = model.model.embed_tokens.weight
        emb[torch.arange(VOCAB), torch.tensor(TOK)] = 1.0
        emb[:, CONST] = 1.0
        l0, l1 = model.model.layers[0].self_attn, model.model.layers[1].self_attn
        c = 3.0**0.5  # logit margin ~ 8 x c^2 x 0.81 = 19 between distance 1 and any other distance
        for p in FAST:
            theta = BASE ** (-2 * p / HEAD_DIM)
            l0.q_proj.weight[p, CONST] = c
            l0.k_proj.weight[p, CONST] = c * torch.cos(torch.tensor(theta))
            l0.k_proj.weight[p + HEAD_DIM // 2, CONST] = c * torch.sin(torch.tensor(theta))
        a = 2.0  # match logit ~ (6.5 a)^2 / 8 = 21
        for i in range(VOCAB):
            l0.v_proj.weight[i, TOK[i]] = 1 / 8  # RMSNorm scaled its input by 8: write a unit code
            l0.o_proj.weight[PREV[i], i] = 1.0
            # induction: query head 2 (KV head 1)
            l1.q_proj.weight[2 * HEAD_DIM + CONTENT[i], TOK[i]] = a
            l1.k_proj.weight[1 * HEAD_DIM + CONTENT[i], PREV[i]] = a
            l1.v_proj.weight[1 * HEAD_DIM + i, TOK[i]] = 1.0
            l1.o_proj.weight[OUT[i], 2 * HEAD_DIM + i] = 1.0
            # echo: query head 0 (KV head 0), writes nothing
            l1.q_proj.weight[0 * HEAD_DIM + CONTENT[i], TOK[i]] = a
            l1.k_proj.weight[0 * HEAD_DIM + CONTENT[i], TOK[i]] = a
        model.lm_head.weight[torch.arange(VOCAB), torch.tensor(OUT)] = 10.0
    model.set_attn_implementation("sdpa")
    return model
