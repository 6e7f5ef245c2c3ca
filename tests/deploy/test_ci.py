"""CI runs `make test` on another float path than development's default (.ci/run): the switch it sets must reach
torch, or a test that holds on one float trajectory only would pass CI and fail on the next machine."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from tests.conftest import REPO

PROBE = ("import torch; torch.manual_seed(0); x = torch.randn(64, 4099); "
         "print(torch.backends.cpu.get_cpu_capability(), x.log_softmax(-1).double().sum().item().hex())")


def run_probe(env: dict) -> tuple[str, str]:
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, timeout=120, check=True)
    capability, total = out.stdout.split()
    return capability, total


def test_ci_runs_make_test_on_another_float_path():
    script = (REPO / ".ci" / "run").read_text()
    assert script.strip().splitlines()[-1].strip() == "make test"
    switch = dict(re.findall(r"^export (ATEN_CPU_CAPABILITY)=(\S+)$", script, re.M))
    assert switch == {"ATEN_CPU_CAPABILITY": "avx2"}, "CI must run the suite with ATen held to AVX2"
    base = {k: v for k, v in os.environ.items() if k != "ATEN_CPU_CAPABILITY"}
    default, ci = run_probe(base), run_probe({**base, **switch})
    assert ci[0] == "AVX2"  # torch took the switch
    if default[0] == "AVX512":  # on an AVX-512 CPU the two paths round differently
        assert ci[1] != default[1]
