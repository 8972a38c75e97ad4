"""A method looks the same in every figure, and two methods never look alike in one figure."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tokensieve import plotstyle
from tokensieve.catalog import describe_all


def test_a_method_keeps_its_style_between_processes() -> None:
    # str hashes are salted per process: the style must not depend on them
    code = "import json; from tokensieve.plotstyle import style; print(json.dumps([style('snapkv'), style('kvzip')]))"
    env = {**os.environ, "PYTHONHASHSEED": "123"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert json.loads(out.stdout) == [plotstyle.style("snapkv"), plotstyle.style("kvzip")]
    assert plotstyle.style("snapkv") == plotstyle.style("snapkv")


def test_styles_of_every_registered_method_are_distinct_and_stable() -> None:
    ids = [row["id"] for row in describe_all()]
    everything = plotstyle.styles(ids)
    looks = {(s["color"], s["marker"]) for s in everything.values()}
    assert len(looks) == len(set(ids))
    # a subset drawn alone keeps each method's own style where nothing collides
    few = plotstyle.styles(["snapkv", "kvzip"])
    if (few["snapkv"]["color"], few["snapkv"]["marker"]) != (few["kvzip"]["color"], few["kvzip"]["marker"]):
        assert few == {"snapkv": plotstyle.style("snapkv"), "kvzip": plotstyle.style("kvzip")}


def test_up_to_ten_methods_get_ten_colours() -> None:
    vision = ["cls", "divprune", "downsample", "fourier", "hired", "pitome", "tome", "transprune", "zero_tprune", "x"]
    assert len({s["color"] for s in plotstyle.styles(vision).values()}) == 10
    with_random = plotstyle.styles([*vision[:9], "random"])
    assert len({s["color"] for s in with_random.values()}) == 10


def test_references_are_black_and_never_a_method_colour() -> None:
    assert plotstyle.style("full")["color"] == "black"
    assert all(plotstyle.style(m)["color"] != "black" for m in ("snapkv", "tova", "h2o"))


@pytest.mark.parametrize("label", ["snapkv", "kvpress:knorm", "span:inner=kvzip"])
def test_a_style_is_plot_keywords(label: str) -> None:
    s = plotstyle.style(label)
    assert set(s) == {"color", "marker", "linestyle"}
    assert s["color"] in plotstyle.COLOURS and s["marker"] in plotstyle.MARKERS
