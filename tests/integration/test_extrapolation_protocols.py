"""Smoke version of bench/extrapolation.py's paper protocols on the default model, a few steps each: AlphaRL from
30% of the run to its end (offline) and RL-Extra's re-grounding cycles (online, outer momentum eta 2); each prints
its JSON with paired [diff, se] figures."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from itertools import pairwise

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.integration


def protocol(*args: str) -> dict:
    res = subprocess.run([sys.executable, "bench/extrapolation.py", *args, "--eval-size", "48", "--run-eval-size", "32",
                          "--target-every", "2"], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_alpharl_and_rl_extra_protocols(default_model_dir):
    alpharl = protocol("--protocol", "alpharl", "--steps", "10", "--curve")
    assert alpharl["target"] == 10 and alpharl["window"][1] == 3 and alpharl["checkpoint_every"] == 1
    curve = alpharl["plain_curve"]  # the base model, then every checkpoint, scored on the same fresh set
    assert [s for s, _ in curve] == list(range(11)) and curve[-1][1] == alpharl["acc_actual"]
    assert curve[3][1] == alpharl["acc_keep"] and alpharl["level80"] == curve[0][1] + 0.8 * (curve[-1][1] - curve[0][1])
    to_leap = alpharl["plain_steps_to_leap_acc"]  # plain's steps to the leap's accuracy, interpolated
    assert to_leap is None or to_leap == 0 or any(s0 < to_leap <= s1 and a < alpharl["acc_pred"] <= b
                                                  for (s0, a), (s1, b) in pairwise(curve))
    assert len(alpharl["pred_minus_keep"]) == 2 and alpharl["pred_minus_keep"][1] >= 0
    assert 0 <= alpharl["acc_pred"] <= 1 and 0 <= alpharl["acc_actual"] <= 1
    rl_extra = protocol("--protocol", "rl_extra", "--steps", "4", "--ks", "2")
    assert set(rl_extra["k"]) == {"2"} and len(rl_extra["k"]["2"]["minus_plain_end"]) == 2


def test_a_window_too_short_for_relex_is_refused_before_training(tmp_path):
    """RELEX fits the first 15% of the run at a checkpoint a step: 12 steps give it one checkpoint, and the bench
    says so (with the shortest run that works) before it trains or writes anything."""
    res = subprocess.run([sys.executable, "bench/extrapolation.py", "--protocol", "relex", "--workload", "arith",
                          "--steps", "12"], cwd=REPO, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "TMPDIR": str(tmp_path)})
    assert res.returncode == 1 and "needs 2" in res.stderr and "--steps 14 or more" in res.stderr, res.stderr[-2000:]
    assert not list(tmp_path.iterdir())  # no run directory was made


def test_leaps_past_the_end_of_a_finished_run(default_model_dir):
    out = protocol("--protocol", "past_end", "--steps", "3", "--multiples", "10", "--prompts", "8")
    assert out["checkpoints"] == [1, 2, 3] and 0 <= out["acc_final"] <= 1
    for method in ("relex", "alpharl"):
        leaps = out["leaps"][method]
        assert {m: leap["target"] for m, leap in leaps.items()} == {"10": 30}
        assert all(len(leap["minus_final"]) == 2 and leap["minus_final"][1] >= 0 for leap in leaps.values())
