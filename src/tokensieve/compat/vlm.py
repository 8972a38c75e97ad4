"""LLaVA-style vision-language models: the language model under them, the image token, the keywords they pass."""

from __future__ import annotations

import torch

# --- vision-language models (tokensieve.vlm) ---
# the keywords LLaVA-style models hand their language model (`self.language_model(inputs_embeds=..., ...)`)
LM_EMBEDS_ARG, LM_MASK_ARG, LM_POSITIONS_ARG = "inputs_embeds", "attention_mask", "position_ids"
# relies on: releases before 5.24 also pass `cache_position` (each new token's slot in the cache); 5.24 dropped it
CACHE_POSITION_ARG = "cache_position"


def vlm_parts(model: torch.nn.Module) -> tuple[torch.nn.Module, int] | None:
    """A LLaVA-style model's language model and image-token id, or None for a model without both."""
    # relies on: `get_decoder()` finding `language_model` under LLaVA-style models (through `base_model`) and the
    # config naming the placeholder `image_token_id` (`image_token_index` before 5.x)
    config = getattr(model, "config", None)
    token = getattr(config, "image_token_id", None)
    token = getattr(config, "image_token_index", None) if token is None else token
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    if token is None or decoder is None or decoder is model or not hasattr(decoder, "layers"):
        return None
    return decoder, int(token)
