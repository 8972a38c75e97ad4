"""Vision methods by id: one small file each."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from ...errors import ParameterError, UnknownMethodError
from .base import VisionMethod
from .cls import ClsAttention
from .divprune import DivPrune
from .downsample import Downsample
from .fourier import Fourier
from .hired import HiRED
from .pitome import PiToMe
from .random import RandomPrune
from .tome import ToMe
from .transprune import TransPrune
from .zero_tprune import ZeroTPrune

VISION_METHODS: dict[str, type[VisionMethod]] = {
    m.id: m
    for m in (ToMe, PiToMe, ClsAttention, ZeroTPrune, DivPrune, TransPrune, Fourier, HiRED, RandomPrune, Downsample)
}


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
