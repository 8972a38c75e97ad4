"""Vision methods by id: one small file each."""

from __future__ import annotations

from typing import Any

from tokensieve.registry import instantiate, register_family
from tokensieve.vision.methods.base import VisionMethod
from tokensieve.vision.methods.cls import ClsAttention
from tokensieve.vision.methods.divprune import DivPrune
from tokensieve.vision.methods.downsample import Downsample
from tokensieve.vision.methods.fourier import Fourier
from tokensieve.vision.methods.hired import HiRED
from tokensieve.vision.methods.pitome import PiToMe
from tokensieve.vision.methods.random import RandomPrune
from tokensieve.vision.methods.tome import ToMe
from tokensieve.vision.methods.transprune import TransPrune
from tokensieve.vision.methods.zero_tprune import ZeroTPrune

VISION_METHODS: dict[str, type[VisionMethod]] = {
    m.id: m
    for m in (ToMe, PiToMe, ClsAttention, ZeroTPrune, DivPrune, TransPrune, Fourier, HiRED, RandomPrune, Downsample)
}
register_family("vision method", VISION_METHODS, "a vision (ViT) method: use tokensieve vision --method {id}", __name__)


def get_vision_method(method: str | VisionMethod, **params: Any) -> VisionMethod:
    """A vision method by id (``tokensieve vision --method``) with parameter overrides, or the instance itself."""
    return instantiate(VISION_METHODS, VisionMethod, "vision method", method, params)


__all__ = ["VISION_METHODS", "VisionMethod", "get_vision_method"]
