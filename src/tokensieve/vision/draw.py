"""Which patches a vision method kept, pruned or merged, drawn over the input (``tokensieve vision --plot``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from tokensieve.vision.tokens import Tokens


def draw_patches(vm: Any, image: np.ndarray, states: list[tuple[str, Tokens | None]], out: str | Path) -> None:
    """One panel per method over the 224-px input: pruned patches dark, merged groups in one colour each."""
    from tokensieve.plotstyle import pyplot, save
    from tokensieve.vision.api import preprocess

    plt = pyplot()

    x = preprocess(vm, image)[0]
    pic = (x * torch.tensor(vm.std)[:, None, None] + torch.tensor(vm.mean)[:, None, None]).clamp(0, 1)
    pic = pic.permute(1, 2, 0).numpy()
    cols = min(4, len(states))
    rows = -(-len(states) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3.2 * rows), squeeze=False)
    rng = np.random.default_rng(0)
    palette = rng.uniform(0.2, 1.0, size=(4096, 3))
    p = vm.patch_size
    for ax, (name, st) in zip(axes.flat, states, strict=False):
        shown = pic.copy()
        if st is not None:
            gh, gw = st.grid
            ns = st.n_special
            assign = st.assign[0, ns:].numpy()
            dropped = st.dropped[0, ns:].numpy()
            counts = np.bincount(assign[~dropped], minlength=assign.max() + 1)  # merges only, not unmerge fill
            for i in range(gh * gw):
                r, c = divmod(i, gw)
                cell = shown[r * p : (r + 1) * p, c * p : (c + 1) * p]
                if dropped[i]:
                    cell *= 0.15
                elif counts[assign[i]] > 1:
                    cell[:] = 0.45 * cell + 0.55 * palette[assign[i] % len(palette)]
            title = f"{name}: {int(np.unique(st.assign[0].numpy()).size)} tokens"
        else:
            title = name
        ax.imshow(shown)
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    for ax in list(axes.flat)[len(states) :]:
        ax.axis("off")
    fig.tight_layout()
    save(fig, out)
