"""Leaps during training, driver side (docs/methods.md#leap-protocol): propose -> paired evaluation -> apply -> judge -> keep or roll
back, with every step an event and the steps saved and lost accounted for.

After each checkpoint the ExtrapolationService (extrapolate/service.py) updates the rank-1 trajectory and, unless
a leap is being judged, proposes candidates (or says why not). The candidates and the current policy are scored on
the same held-out problems (greedy, paired: difference and standard error); the best candidate is applied if it is
at most `accept_margin` below the current policy. The learner continues from it with its step counter advanced by
the horizon. After `judge_after` learner steps the leap is judged (the papers judge a leap after continued RL):
- judge "control" (default): the leap branch is checkpointed and set aside, the run resumes the pre-leap checkpoint
  and trains judge_after plain steps on the same data (the control branch); both are scored on the same problems
  and the better continues: the leap paid if leap - control >= -judge_margin. Either way one branch's judge_after
  learner steps are the price; a paid leap saves its horizon.
- judge "trend": the policy is compared with the pre-leap accuracy plus the slope of the last `trend_evals`
  periodic evaluations x judge_after (slope >= 0); below it minus judge_margin the run rolls back to the
  pre-leap checkpoint.
Checkpoints of the losing branch move to rolled_back/<leap>-leap|-control/ (nothing is deleted).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from rollout.evaluate import greedy_scores, paired_difference


class CandidatePolicy:
    """An engine-like view of a candidate adapter, for the evaluation helpers."""

    def __init__(self, runtime, adapter_path: str):
        self.runtime, self.adapter_path = runtime, adapter_path

    def generate(self, prompt_ids, params):
        return self.runtime.generate_with(self.adapter_path, prompt_ids, params)


def trend_slope(evals: list[dict], up_to_step: int, count: int) -> float:
    """Least-squares slope (accuracy per step, clipped at 0) of the last `count` evaluations at or before a step."""
    points = [(e["step"], e["accuracy"]) for e in evals if e["step"] <= up_to_step][-count:]
    if len(points) < 2:
        return 0.0
    mean_t = sum(t for t, _ in points) / len(points)
    mean_a = sum(a for _, a in points) / len(points)
    var = sum((t - mean_t) ** 2 for t, _ in points)
    return max(0.0, sum((t - mean_t) * (a - mean_a) for t, a in points) / var) if var > 0 else 0.0


class LeapController:
    def __init__(self, cfg, runtime, run_dir: Path, task, emit, requests=None, *, encoder):
        self.cfg, self.x = cfg, cfg.extrapolate
        self.runtime, self.run_dir, self.task = runtime, Path(run_dir), task
        self.emit = emit  # emit(kind, record): "rank1" rows and "event" records
        self.requests = requests  # () -> new manual leap requests (from the control plane), or None
        self.requested = False  # a manual request waits until a proposal serves it
        self.examples = task.examples("test", self.x.eval_size, seed=self.x.eval_seed)
        self.encoder = encoder  # the run's PromptEncoder: candidates see the policy's own prompt tokens
        self.pending: dict | None = None
        self.next_proposal_at = 0  # in learner steps
        self.kept: list[dict] = []
        self.accounting = {"proposals": 0, "applied": 0, "rejected": 0, "paid": 0, "rolled_back": 0,
                           "steps_skipped": 0, "steps_lost": 0, "extrapolation_s": 0.0, "evaluation_s": 0.0}

    def _scores(self, adapter_path: str | None = None) -> list[float]:
        started = time.time()
        policy = self.runtime if adapter_path is None else CandidatePolicy(self.runtime, adapter_path)
        scores = greedy_scores(policy, self.task, self.examples, self.encoder)
        self.accounting["evaluation_s"] += time.time() - started
        return scores

    def checkpoint_meta(self) -> dict:
        return {"leaps_kept": self.kept, "leap_under_judgement": self.pending["id"] if self.pending else None}

    def after_checkpoint(self, step: int, learner_steps: int) -> int | None:
        """Rank-1 update, then maybe a leap; returns the new step when a leap was applied."""
        started = time.time()
        rank1 = self.runtime.service("on_checkpoint", step)
        self.accounting["extrapolation_s"] += time.time() - started
        self.emit("rank1", rank1)
        if self.requests is not None and self.requests():
            self.requested = True
        forced = self.requested
        if self.pending is not None or (learner_steps < self.next_proposal_at and not forced):
            if forced:
                self.emit("event", {"type": "no_leap", "step": step, "reason": "leap request deferred: a leap is "
                                    "being judged"})
            return None
        status = self.runtime.service("status")
        if step + status["horizon"] + self.x.judge_after > self.cfg.run.steps:
            self.emit("event", {"type": "no_leap", "step": step, "reason": f"too close to the end: a {status['horizon']}"
                                f"-step leap and {self.x.judge_after} judging steps would pass run.steps"})
            return None
        started = time.time()
        proposal = self.runtime.service("propose", step, forced)
        self.accounting["extrapolation_s"] += time.time() - started
        if "reason" in proposal:
            self.emit("event", {"type": "no_leap", "step": step, **proposal})
            return None
        self.accounting["proposals"] += 1
        self.requested = False
        current = self._scores()
        evaluated = []
        for cand in proposal["candidates"]:
            diff, se = paired_difference(self._scores(cand["path"]), current)
            evaluated.append({**cand, "diff": diff, "se": se})
        best = max(evaluated, key=lambda c: c["diff"])
        record = {"step": step, "method": proposal["method"], "horizon": proposal["horizon"], "requested": forced,
                  "backtest_cos": proposal["backtest_cos"], "current_acc": sum(current) / len(current),
                  "candidates": evaluated, "leap_dir": proposal["leap_dir"],
                  "predicted_s1": proposal.get("predicted_s1", {})}
        self.emit("event", {"type": "proposal", **record})
        if best["diff"] < -self.x.accept_margin:
            self.accounting["rejected"] += 1
            status = self.runtime.service("verdict", False)
            self.next_proposal_at = learner_steps + self.x.leap_every
            self.emit("event", {"type": "leap_rejected", "step": step, "best_diff": best["diff"], "se": best["se"],
                                "policy": status})
            return None
        pre_path = self.run_dir / "checkpoints" / f"step-{step:06d}"
        new_step = self.runtime.leap(best["path"], proposal["horizon"], self.x.reset_optimizer)
        self.runtime.publish()
        self.accounting["applied"] += 1
        self.pending = {"id": Path(proposal["leap_dir"]).name, "from_step": step, "to_step": new_step,
                        "horizon": proposal["horizon"], "scale": best["scale"], "method": proposal["method"],
                        "pre_path": str(pre_path), "pre_scores": current, "at_learner_steps": learner_steps}
        self.emit("event", {"type": "leap_applied", "step": step, "to_step": new_step, "scale": best["scale"],
                            "diff": best["diff"], "se": best["se"], "method": proposal["method"],
                            "id": self.pending["id"]})
        return new_step

    def _move_checkpoints_after(self, step: int, to: Path) -> None:
        """Move checkpoints/step-N with N > step to `to` (never deleted), and forget their rank-1 rows."""
        for ckpt in sorted((self.run_dir / "checkpoints").glob("step-*")):
            if ".tmp" not in ckpt.name and int(ckpt.name.split("-")[1]) > step:
                to.mkdir(parents=True, exist_ok=True)
                shutil.move(str(ckpt), to / ckpt.name)
        self.runtime.service("forget_after", step)

    def _restore_checkpoints(self, source: Path) -> None:
        for ckpt in sorted(source.glob("step-*")):
            shutil.move(str(ckpt), self.run_dir / "checkpoints" / ckpt.name)
        source.rmdir()

    def _verdict(self, p: dict, paid: bool, record: dict, learner_steps: int) -> None:
        self.pending = None
        self.next_proposal_at = learner_steps + self.x.leap_every
        self.accounting["steps_lost"] += self.x.judge_after  # the losing branch's steps
        if paid:
            self.accounting["paid"] += 1
            self.accounting["steps_skipped"] += p["horizon"]
            self.kept.append({k: p[k] for k in ("id", "from_step", "to_step", "horizon", "scale", "method")})
        else:
            self.accounting["rolled_back"] += 1
        record["policy"] = self.runtime.service("verdict", paid)
        self.emit("event", record)

    def after_step(self, learner_steps: int, evals: list[dict], checkpoint) -> dict | None:
        """Judge a pending leap once judge_after learner steps have run (in the leap branch, then in the control
        branch). Returns the restored state when the run switches branch (the driver continues from it).
        `checkpoint()` writes a checkpoint of the current state and returns its path."""
        p = self.pending
        if p is None or learner_steps - p["at_learner_steps"] < self.x.judge_after:
            return None
        base = {"id": p["id"], "from_step": p["from_step"], "horizon": p["horizon"], "method": p["method"]}
        aside = self.run_dir / "rolled_back"
        if p.get("phase") == "control":  # both branches have run judge_after steps: the better one continues
            control = self._scores()
            diff, se = paired_difference(p["leap_scores"], control)
            paid = diff >= -self.x.judge_margin
            record = {**base, "type": "leap_paid" if paid else "leap_rolled_back", "step": self.runtime.step_count,
                      "leap_minus_control": diff, "se": se, "judge": "control"}
            if not paid:
                self._verdict(p, False, record, learner_steps)
                return None  # the control branch is the run now; the leap branch stays under rolled_back/
            self._move_checkpoints_after(p["from_step"], aside / f"{p['id']}-control")
            self._restore_checkpoints(aside / f"{p['id']}-leap")
            state = self.runtime.resume(self.run_dir / "checkpoints" / p["branch_checkpoint"])
            self._verdict(p, True, record, learner_steps)
            return state
        now = self._scores()
        if self.x.judge == "control":
            branch = Path(checkpoint())
            self._move_checkpoints_after(p["from_step"], aside / f"{p['id']}-leap")
            p.update(phase="control", leap_scores=now, at_learner_steps=learner_steps, branch_checkpoint=branch.name)
            self.emit("event", {**base, "type": "control_branch", "step": self.runtime.step_count,
                                "leap_acc": sum(now) / len(now)})
            return self.runtime.resume(Path(p["pre_path"]))
        diff, se = paired_difference(now, p["pre_scores"])
        expected_gain = trend_slope(evals, p["from_step"], self.x.trend_evals) * self.x.judge_after
        paid = diff >= expected_gain - self.x.judge_margin
        record = {**base, "type": "leap_paid" if paid else "leap_rolled_back", "step": self.runtime.step_count,
                  "gain_since_leap": diff, "se": se, "trend_gain": expected_gain, "judge": "trend"}
        if paid:
            self._verdict(p, True, record, learner_steps)
            return None
        self._move_checkpoints_after(p["from_step"], aside / p["id"])
        state = self.runtime.resume(Path(p["pre_path"]))
        self._verdict(p, False, record, learner_steps)
        return state

    def summary(self, learner_steps: int) -> dict:
        a = dict(self.accounting)
        a["learner_steps"] = learner_steps
        a["net_steps_saved"] = a["steps_skipped"] - a["steps_lost"]
        return a


def write_jsonl(path: Path, record: dict) -> None:
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")
