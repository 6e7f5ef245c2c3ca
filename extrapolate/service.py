"""The extrapolation service (docs/methods.md#leap-protocol, docs/architecture.md#data-flow-of-a-leap): watches a
run's checkpoints, keeps the rank-1 trajectory and the predictability figures up to date, and writes leap candidates
on request. A plain class, used in the single-process runner as is and on Ray as an actor.

It holds no protocol state: the horizon, the failures, the gates of the leap policy and the proposal count live in
the driver's LeapState (services/leap_protocol.py), which is checkpointed with the run, and come here as arguments.
What it keeps is a cache of what it has read (the rank-1 analysis of each checkpoint, a full run's base weights), which
a new service rebuilds from the run directory. Its one gate is the backtest: the chosen extrapolator forecasts the
newest checkpoint from the window that ends one horizon earlier; below `backtest_threshold` (cosine of predicted vs
actual displacement) it says why it is not leaping instead.

LoRA runs leap as adapters of the learner's own shape; full-parameter runs (learner.lora: null) read each
checkpoint's update W_t - W_0 against the base model `base` as exact dense factors and leap as full model
directories.
"""

from __future__ import annotations

import time
from pathlib import Path

from common.run_dir import LEAPS
from extrapolate.analyze import RunAnalysis
from extrapolate.checkpoints import (
    find_run_checkpoints,
    full_base_dir,
    read_full,
    read_full_update,
    read_lora,
)
from extrapolate.config import ExtrapolateConfig
from extrapolate.extrapolators import EXTRAPOLATORS
from extrapolate.leap_writer import write_full_leap, write_learner_leap
from extrapolate.predictability import backtest
from extrapolate.rank1 import lora_triplets


class ExtrapolationService:
    def __init__(self, run_dir: str | Path, cfg: ExtrapolateConfig, checkpoint_every: int,
                 base: str | Path | None = None):
        self.run_dir = Path(run_dir)
        self.base = Path(base) if base is not None else None  # a full-parameter run's base model directory
        self.weights_0 = None  # its target-module weights, read at the first full checkpoint
        self.cfg = cfg
        self.checkpoint_every = checkpoint_every
        self.analysis: RunAnalysis | None = None  # made at the first checkpoint, then kept: each checkpoint read once

    def on_checkpoint(self, step: int) -> dict:
        """Update rank1/ for the new checkpoint; returns its per-module rows and the run-level figures."""
        if self.analysis is None:
            self.analysis = RunAnalysis(self.run_dir, self.base)
        return self.analysis.record(step)

    def forget_after(self, step: int) -> None:
        """Drop rank-1 rows and vectors of steps after `step` (the run switched branch: they will be recomputed)."""
        if self.analysis is None:
            self.analysis = RunAnalysis(self.run_dir, self.base)
        self.analysis.forget_after(step)

    def _state(self, kind: str, path: Path) -> dict:
        """A checkpoint's update as {module: LoraModule}: the adapter, or a full checkpoint's dense factors."""
        if kind == "lora":
            return read_lora(path)
        if self.weights_0 is None:
            self.weights_0 = read_full(full_base_dir(self.run_dir, path, self.base))
        return read_full_update(path, self.weights_0)

    def propose(self, step: int, horizon: int, number: int, force: bool = False) -> dict:
        """Candidates for a `horizon`-step leap from the checkpoint at `step`, written under
        leaps/leap-<number>-step<step>-<method>/: {"candidates": [{"scale", "path", "lost"}], "horizon",
        "backtest_cos", "method", "predicted_s1", "leap_dir"}, or {"reason": why not}. force (a user's leap request)
        skips the backtest gate; the candidates are still evaluated and judged."""
        cfg = self.cfg
        kind, found = find_run_checkpoints(self.run_dir)
        checkpoints = [(s, p) for s, p in found if s <= step]
        if not checkpoints or checkpoints[-1][0] != step:
            return {"reason": f"no checkpoint at step {step}"}
        horizon_ckpts = max(1, round(horizon / self.checkpoint_every))
        need = cfg.window + horizon_ckpts
        gated = cfg.backtest_threshold > -1  # -1: the gate is off, a leap needs only its window
        if len(checkpoints) < (need if gated else cfg.window):
            return {"reason": f"{len(checkpoints)} checkpoints; the backtest of a {horizon}-step horizon with a "
                              f"{cfg.window}-checkpoint window needs {need}"}
        started = time.time()
        check = {"cos": None}
        if len(checkpoints) >= need:
            states = [(s, self._state(kind, p)) for s, p in checkpoints[-need:]]
            try:
                check = backtest(states, cfg.method, horizon_checkpoints=horizon_ckpts)
            except ValueError as err:
                return {"reason": f"backtest impossible: {err}"}
            if gated and not check["cos"] >= cfg.backtest_threshold and not force:
                return {"reason": f"backtest cos {check['cos']:.2f} < {cfg.backtest_threshold} ({cfg.method} "
                                  f"forecasting step {check['target_step']} from step {check['window_end']}): not "
                                  f"forecastable now", "backtest_cos": check["cos"]}
        window = [(s, self._state(kind, p)) for s, p in checkpoints[-cfg.window:]]
        try:
            prediction = EXTRAPOLATORS.get(cfg.method)().fit(window).predict(step + horizon)
        except ValueError as err:
            return {"reason": f"{cfg.method} cannot predict: {err}"}
        names = sorted(prediction)
        watched = [n for n in names if n.endswith(("q_proj", "down_proj"))]  # a few modules for the dashboard
        watched = watched[:2] + watched[-2:] if len(watched) > 4 else watched
        predicted_s1 = {n: float(lora_triplets(*prediction[n]).s[0]) for n in watched}
        leap_dir = self.run_dir / LEAPS / f"leap-{number:03d}-step{step:06d}-{cfg.method}"
        candidates = []
        report = {"method": cfg.method, "from_step": step, "horizon": horizon, "backtest": check}
        for scale in cfg.scales:
            out = leap_dir / f"scale-{scale:g}"
            path, lost = (write_learner_leap(out, checkpoints[-1][1], prediction, scale, report) if kind == "lora"
                          else write_full_leap(out, checkpoints[-1][1], self.weights_0, prediction, scale, report))
            candidates.append({"scale": scale, "path": str(path), "lost": lost})
        return {"candidates": candidates, "horizon": horizon, "backtest_cos": check["cos"], "method": cfg.method,
                "predicted_s1": predicted_s1,
                "leap_dir": str(leap_dir), "seconds": time.time() - started}
