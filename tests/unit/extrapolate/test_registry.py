"""The extrapolators' registry: every built-in registered once (NExt included, whichever module is imported first),
the config's `method` choices are exactly its keys, duplicates are refused and unknown names list the valid ones."""

from __future__ import annotations

import subprocess
import sys

import pytest

from extrapolate.base import Extrapolator
from extrapolate.config import ExtrapolateConfig
from extrapolate.extrapolators import EXTRAPOLATORS


def test_config_method_literal_matches_the_registry():
    EXTRAPOLATORS.check_literal(ExtrapolateConfig.model_fields["method"].annotation)
    assert EXTRAPOLATORS.names() == ["alpharl", "growth", "next", "relex", "rl_extra"]
    assert all(EXTRAPOLATORS.get(name).name == name for name in EXTRAPOLATORS)


def test_duplicates_and_unknown_names_are_refused_clearly():
    with pytest.raises(ValueError, match="'growth' is already registered"):
        EXTRAPOLATORS.register("growth")(Extrapolator)
    with pytest.raises(KeyError, match="unknown extrapolator 'linear'; valid: alpharl, growth, next, relex, rl_extra"):
        EXTRAPOLATORS.get("linear")


@pytest.mark.parametrize("first", ["extrapolate.next", "extrapolate.predictability", "extrapolate.service"])
def test_every_builtin_is_registered_whatever_is_imported_first(first):
    code = (f"import {first}\nfrom extrapolate.extrapolators import EXTRAPOLATORS\nprint(','.join(EXTRAPOLATORS.names()))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "alpharl,growth,next,relex,rl_extra"
