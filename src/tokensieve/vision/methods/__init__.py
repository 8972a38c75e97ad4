"""Vision methods by id: one small file each."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from tokensieve.errors import ParameterError, UnknownMethodError
from tokensieve.registry import register_family
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
register_family("vision method", VISION_METHODS, "a vision (ViT) method: use tokensieve vision --method {id}")


def get_vision_method(name: str, **params: Any) -> VisionMethod:
    if name not in VISION_METHODS:
        raise UnknownMethodError(f"unknown vision method {name!r}: choose one of {', '.join(VISION_METHODS)}")
    cls = VISION_METHODS[name]
    known = {f.name for f in fields(cls)}
    bad = set(params) - known
    if bad:
        raise ParameterError(f"{name} has no parameter {sorted(bad)[0]!r}: it takes {', '.join(sorted(known))}")
    return cls(**params)


__all__ = ["VISION_METHODS", "VisionMethod", "get_vision_method"]
