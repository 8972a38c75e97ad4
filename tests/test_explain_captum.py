"""Cross-check against Captum's gradient x input on the same input and target (skipped without Captum,
the optional extra `pip install tokensieve[explain]`)."""

from __future__ import annotations

import pytest
import torch

from conftest import optional
from test_explain import CTX, tiny
from tokensieve.explain import get_explainer

captum_attr = optional("captum.attr", "pip install 'tokensieve[explain]'")


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_grad_x_input_agrees_with_captum(arch):
    p = tiny(arch=arch)
    ours = get_explainer("grad_x_input").attribute(p)
    x = p.embed(p.ids[None]).detach()
    theirs = captum_attr.InputXGradient(p.score_embeds).attribute(x)  # [1, P, d]
    torch.testing.assert_close(ours, theirs[0, CTX].sum(-1).float(), rtol=1e-4, atol=1e-7)


def test_integrated_gradients_agrees_with_captum():
    p = tiny()
    ours = get_explainer("integrated_gradients", steps=8).attribute(p)
    x = p.embed(p.ids[None]).detach()
    base = x.clone()
    base[:, CTX] = p.embed(torch.tensor([p.baseline_id])).detach()
    ig = captum_attr.IntegratedGradients(p.score_embeds)
    theirs = ig.attribute(x, baselines=base, n_steps=8, method="riemann_middle")
    torch.testing.assert_close(ours, theirs[0, CTX].sum(-1).float(), rtol=1e-3, atol=1e-6)
