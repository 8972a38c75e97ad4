"""Vision tokens: score, prune and merge patch tokens inside a real transformers ViT (see docs/vision.md)."""

from __future__ import annotations

from tokensieve.vision.api import Features, features, load_image, measure_flops, preprocess
from tokensieve.vision.engine import Sieve
from tokensieve.vision.methods import VISION_METHODS, VisionMethod, get_vision_method
from tokensieve.vision.model import DEFAULT_VISION_MODEL, VisionModel, load_vision, wrap

__all__ = [
    "DEFAULT_VISION_MODEL", "VISION_METHODS", "Features", "Sieve", "VisionMethod", "VisionModel", "features",
    "get_vision_method", "load_image", "load_vision", "measure_flops", "preprocess", "wrap",
]  # fmt: skip
