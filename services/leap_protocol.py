"""Leaps during training, driver side (docs/methods.md#leap-protocol): propose -> paired evaluation -> apply -> judge -> keep or roll
back, with every step an event and the steps saved and lost accounted for.

After each checkpoint the ExtrapolationService (extrapolate/service.py) updates the rank-1 trajectory and, unless
a leap is being judged, proposes candidates (or says why not). The candidates and the current policy are scored on
the same held-out problems (paired: difference and standard error; by greedy accuracy, or with
extrapolate.decision_metric reference_logprob by the mean token log-prob of each problem's reference answer); the best candidate is applied if it is
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

The leap policy (beyond the papers' single fixed leap) is LeapState's too: the horizon starts at `horizon`, doubles
(up to `max_horizon`) after a leap that paid and halves (down to `min_horizon`) after one that was rejected or
rolled back; after `patience` such failures in a row no more leaps are proposed (MKOR-H's fall-back: stop a trick
once it stops paying); none before `start_after`. A user's leap request skips these gates, with its own horizon if
it names one. The whole state is written into every checkpoint and restored on resume, so a stopped and resumed
run makes the decisions of the run that was not stopped.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path

from common.run_dir import CHECKPOINTS, EVENTS, ROLLED_BACK, append_jsonl, checkpoint_dir, list_checkpoints
from rollout.evaluate import greedy_scores, paired_difference, reference_ids


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


class Phase(StrEnum):
    IDLE = "idle"        # no leap pending; the next proposal waits for next_proposal_at (or a manual request)
    LEAP = "leap"        # a leap was applied; its branch trains judge_after learner steps
    CONTROL = "control"  # judge "control": the pre-leap checkpoint resumed, the control branch trains judge_after steps


class LeapStateError(RuntimeError):
    """A transition that the current phase does not allow (a bug in the caller)."""


@dataclass
class PendingLeap:
    """The leap being judged."""

    id: str
    from_step: int
    to_step: int
    horizon: int
    scale: float
    method: str
    pre_path: str  # the pre-leap checkpoint
    pre_scores: list[float]  # the pre-leap policy's per-problem scores
    at_learner_steps: int  # learner steps when the current branch started
    leap_scores: list[float] | None = None  # the leap branch's scores after judge_after steps (judge "control")
    branch_checkpoint: str | None = None  # the leap branch's checkpoint, set aside while the control runs

    def kept_record(self) -> dict:
        return {"id": self.id, "from_step": self.from_step, "to_step": self.to_step, "horizon": self.horizon,
                "scale": self.scale, "method": self.method}


@dataclass
class Judgement:
    paid: bool
    diff: float
    se: float


@dataclass
class LeapState:
    """The leap protocol as a state machine, with no model and no files: IDLE -propose/evaluate-> (reject: IDLE) or
    (apply: LEAP) -judge_after steps-> trend: judge -> IDLE; control: start_control -> CONTROL -judge_after steps->
    judge -> IDLE. Each transition checks the phase it starts from. It also holds the leap policy (horizon,
    failures, patience, start_after) and the accounting: everything a resumed run needs (as_dict / from_dict)."""

    judge: str  # "control" | "trend" | "none" (kept once applied)
    judge_after: int
    leap_every: int
    accept_margin: float
    judge_margin: float
    horizon: int
    min_horizon: int
    max_horizon: int
    patience: int
    start_after: int
    phase: Phase = Phase.IDLE
    pending: PendingLeap | None = None
    next_proposal_at: int = 0  # in learner steps
    failures: int = 0  # leaps rejected or rolled back in a row
    requested: bool = False  # a manual request waits until a proposal serves it
    requested_horizon: int | None = None  # the horizon the request names, if any
    checked_through: int = -1  # the last checkpoint step whose leap decision was made
    kept: list[dict] = field(default_factory=list)
    accounting: dict = field(default_factory=lambda: {
        "proposals": 0, "applied": 0, "rejected": 0, "paid": 0, "rolled_back": 0, "steps_skipped": 0,
        "steps_lost": 0, "extrapolation_s": 0.0, "evaluation_s": 0.0})

    @classmethod
    def from_config(cls, x) -> LeapState:
        return cls(judge=x.judge, judge_after=x.judge_after, leap_every=x.leap_every, accept_margin=x.accept_margin,
                   judge_margin=x.judge_margin, horizon=x.horizon, min_horizon=x.min_horizon,
                   max_horizon=x.max_horizon, patience=x.patience, start_after=x.start_after)

    def as_dict(self) -> dict:
        """The whole state as JSON-able data (written into every checkpoint)."""
        return asdict(self) | {"phase": self.phase.value}

    @classmethod
    def from_dict(cls, data: dict) -> LeapState:
        pending = PendingLeap(**data["pending"]) if data.get("pending") else None
        return cls(**{**data, "phase": Phase(data["phase"]), "pending": pending})

    def _require(self, *phases: Phase) -> None:
        if self.phase not in phases:
            raise LeapStateError(f"leap state is {self.phase.value}; this transition needs "
                                 f"{' or '.join(p.value for p in phases)}")

    @property
    def stopped(self) -> bool:
        return self.failures >= self.patience

    def may_propose(self, learner_steps: int) -> bool:
        return self.phase == Phase.IDLE and (learner_steps >= self.next_proposal_at or self.requested)

    def gate(self, step: int) -> str | None:
        """Why the policy does not leap from `step` now (None: it may); a manual request passes every gate."""
        if self.requested:
            return None
        if self.stopped:
            return f"stopped proposing: the last {self.failures} leaps did not pay (patience {self.patience})"
        if step < self.start_after:
            return f"step {step} is before extrapolate.start_after ({self.start_after})"
        return None

    def proposal_horizon(self) -> int:
        return self.requested_horizon if self.requested and self.requested_horizon else self.horizon

    def request(self, horizon: int | None) -> None:
        """A user's leap request: served by the next proposal, with its horizon if it names one."""
        self.requested = True
        self.requested_horizon = horizon or self.requested_horizon

    def proposed(self) -> None:
        """A proposal was made (it serves a pending manual request)."""
        self._require(Phase.IDLE)
        self.accounting["proposals"] += 1
        self.requested, self.requested_horizon = False, None

    def accepts(self, best_diff: float) -> bool:
        """The best candidate is applied if it is at most accept_margin below the current policy."""
        return best_diff >= -self.accept_margin

    def _verdict(self, paid: bool) -> None:
        """A leap paid (horizon doubles, failures reset) or did not (rejected or rolled back: horizon halves)."""
        if paid:
            self.failures, self.horizon = 0, min(self.max_horizon, 2 * self.horizon)
        else:
            self.failures, self.horizon = self.failures + 1, max(self.min_horizon, self.horizon // 2)

    def policy(self) -> dict:
        """The leap policy after the last verdict (in each verdict's event)."""
        return {"horizon": self.horizon, "failures": self.failures, "stopped": self.stopped,
                "proposals": self.accounting["proposals"]}

    def reject(self, learner_steps: int) -> None:
        self._require(Phase.IDLE)
        self.accounting["rejected"] += 1
        self.next_proposal_at = learner_steps + self.leap_every
        self._verdict(False)

    def apply(self, leap: PendingLeap) -> None:
        self._require(Phase.IDLE)
        self.phase, self.pending = Phase.LEAP, leap
        self.accounting["applied"] += 1

    def judging_due(self, learner_steps: int) -> bool:
        """The current branch has trained its judge_after learner steps."""
        return self.pending is not None and learner_steps - self.pending.at_learner_steps >= self.judge_after

    def start_control(self, leap_scores: list[float], learner_steps: int, branch_checkpoint: str) -> None:
        """Judge "control": set the leap branch aside (its scores and checkpoint) and train the control branch."""
        self._require(Phase.LEAP)
        if self.judge != "control":
            raise LeapStateError("start_control is for judge 'control'")
        self.phase = Phase.CONTROL
        self.pending.leap_scores, self.pending.branch_checkpoint = leap_scores, branch_checkpoint
        self.pending.at_learner_steps = learner_steps

    def judge_control(self, control_scores: list[float]) -> Judgement:
        """The leap paid if leap - control >= -judge_margin on the same problems."""
        self._require(Phase.CONTROL)
        diff, se = paired_difference(self.pending.leap_scores, control_scores)
        return Judgement(diff >= -self.judge_margin, diff, se)

    def judge_trend(self, scores: list[float], expected_gain: float) -> Judgement:
        """The leap paid if its gain since the leap >= the trend's expected gain - judge_margin."""
        self._require(Phase.LEAP)
        if self.judge != "trend":
            raise LeapStateError("judge_trend is for judge 'trend'")
        diff, se = paired_difference(scores, self.pending.pre_scores)
        return Judgement(diff >= expected_gain - self.judge_margin, diff, se)

    def close(self, paid: bool, learner_steps: int) -> PendingLeap:
        """Keep the leap (it saved its horizon) or roll it back. The judge_after steps of the branch that does not
        continue are lost: always with a control branch; with the trend judge only when the leap is rolled back."""
        self._require(Phase.LEAP, Phase.CONTROL)
        leap = self.pending
        self.phase, self.pending = Phase.IDLE, None
        self.next_proposal_at = learner_steps + self.leap_every
        if self.judge == "control" or not paid:
            self.accounting["steps_lost"] += self.judge_after
        if paid:
            self.accounting["paid"] += 1
            self.accounting["steps_skipped"] += leap.horizon
            self.kept.append(leap.kept_record())
        else:
            self.accounting["rolled_back"] += 1
        self._verdict(paid)
        return leap

    def summary(self, learner_steps: int) -> dict:
        a = dict(self.accounting)
        a["learner_steps"] = learner_steps
        a["net_steps_saved"] = a["steps_skipped"] - a["steps_lost"]
        return a


class LeapController:
    """The leap protocol's side effects: the extrapolation service, paired evaluations, the learner's branches and
    their checkpoints; every decision is LeapState's."""

    def __init__(self, job, runtime, run_dir: Path, emit, requests=None):
        self.cfg, self.x = job.cfg, job.cfg.extrapolate
        self.runtime, self.run_dir, self.task = runtime, Path(run_dir), job.task
        self.emit = emit  # emit(kind, record): "rank1" rows and "event" records
        self.requests = requests  # () -> new manual leap requests (from the control plane), or None
        self.examples = job.task.examples("test", self.x.eval_size, seed=self.x.eval_seed)
        self.encoder = job.encoder  # the run's PromptEncoder: candidates see the policy's own prompt tokens
        self.max_new_tokens, self.scorer, self.agent = job.max_new_tokens, job.scorer, job.agent
        self.state = LeapState.from_config(self.x)
        self.references = reference_ids(job.task, self.examples, job.encoder, self.x.eval_seed) \
            if self.x.decision_metric == "reference_logprob" else None

    def _timed(self, key: str, fn, *args):
        started = time.time()
        try:
            return fn(*args)
        finally:
            self.state.accounting[key] += time.time() - started

    def _scores(self, adapter_path: str | None = None) -> list[float]:
        """Per-problem scores of the policy (or a candidate) on the leap evaluation set, by the decision metric."""
        if self.references is not None:
            return self._timed("evaluation_s", self.runtime.mean_logprobs, *self.references, adapter_path)
        policy = self.runtime if adapter_path is None else CandidatePolicy(self.runtime, adapter_path)
        return self._timed("evaluation_s", greedy_scores, policy, self.scorer, self.examples, self.encoder,
                           self.max_new_tokens, 0, self.agent)

    def checkpoint_state(self) -> dict:
        """The whole leap state, for the checkpoint's state and meta.json."""
        return {"leap_state": self.state.as_dict()}

    def restore(self, saved: dict) -> None:
        """Continue a resumed run with the leap state its checkpoint holds (a run from before it: a fresh one)."""
        if saved.get("leap_state") is not None:
            self.state = LeapState.from_dict(saved["leap_state"])

    def decision_due(self, step: int) -> bool:
        """The leap decision at the checkpoint of `step` has not been made yet (a run stopped right after writing
        it, before deciding: the resumed run decides there, as the run that was not stopped did)."""
        return self.state.checked_through < step

    def _take_requests(self) -> None:
        for request in self.requests() if self.requests is not None else []:
            self.state.request(request.get("horizon"))

    def after_checkpoint(self, step: int, learner_steps: int, final: bool) -> int | None:
        """Rank-1 update, then maybe a leap; returns the new step when a leap was applied. `final`: the run ends
        here, or stops here to be resumed (the resumed run makes this decision)."""
        if final:
            return None
        st = self.state
        st.checked_through = step
        self.emit("rank1", self._timed("extrapolation_s", self.runtime.extrapolation.on_checkpoint, step))
        self._take_requests()
        forced = st.requested
        if not st.may_propose(learner_steps):
            if forced:
                self.emit("event", {"type": "no_leap", "step": step, "reason": "leap request deferred: a leap is "
                                    "being judged"})
            return None
        reason = st.gate(step)
        if reason is not None:
            self.emit("event", {"type": "no_leap", "step": step, "reason": reason})
            return None
        horizon = st.proposal_horizon()
        judging = 0 if st.judge == "none" else self.x.judge_after
        if step + horizon + judging > self.cfg.run.steps:
            self.emit("event", {"type": "no_leap", "step": step, "reason": f"too close to the end: a {horizon}"
                                f"-step leap and {judging} judging steps would pass run.steps"})
            return None
        proposal = self._timed("extrapolation_s", self.runtime.extrapolation.propose, step, horizon,
                               st.accounting["proposals"] + 1, forced)
        if "reason" in proposal:
            self.emit("event", {"type": "no_leap", "step": step, **proposal})
            return None
        st.proposed()
        current = self._scores()
        evaluated = []
        for cand in proposal["candidates"]:
            diff, se = paired_difference(self._scores(cand["path"]), current)
            evaluated.append({**cand, "diff": diff, "se": se})
        best = max(evaluated, key=lambda c: c["diff"])
        self.emit("event", {"type": "proposal", "step": step, "method": proposal["method"],
                            "horizon": proposal["horizon"], "requested": forced,
                            "backtest_cos": proposal["backtest_cos"], "current_acc": sum(current) / len(current),
                            "candidates": evaluated, "leap_dir": proposal["leap_dir"],
                            "predicted_s1": proposal.get("predicted_s1", {})})
        if not st.accepts(best["diff"]):
            st.reject(learner_steps)
            self.emit("event", {"type": "leap_rejected", "step": step, "best_diff": best["diff"], "se": best["se"],
                                "policy": st.policy()})
            return None
        new_step = self.runtime.leap(best["path"], proposal["horizon"], self.x.reset_optimizer)
        self.runtime.publish()
        st.apply(PendingLeap(id=Path(proposal["leap_dir"]).name, from_step=step, to_step=new_step,
                             horizon=proposal["horizon"], scale=best["scale"], method=proposal["method"],
                             pre_path=str(checkpoint_dir(self.run_dir, step)), pre_scores=current,
                             at_learner_steps=learner_steps))
        self.emit("event", {"type": "leap_applied", "step": step, "to_step": new_step, "scale": best["scale"],
                            "diff": best["diff"], "se": best["se"], "method": proposal["method"],
                            "id": st.pending.id})
        if st.judge == "none":  # accepted by the paired evaluation alone: kept, no judging steps spent
            self._close(Judgement(True, best["diff"], best["se"]), learner_steps, new_step, judge="none")
        return new_step

    def _move_checkpoints_after(self, step: int, to: Path) -> None:
        """Move the checkpoints after `step` to `to` (never deleted), and forget their rank-1 rows."""
        for s, ckpt in list_checkpoints(self.run_dir):
            if s > step:
                to.mkdir(parents=True, exist_ok=True)
                shutil.move(str(ckpt), to / ckpt.name)
        self.runtime.extrapolation.forget_after(step)

    def _restore_checkpoints(self, source: Path) -> None:
        for ckpt in sorted(source.glob("step-*")):
            shutil.move(str(ckpt), self.run_dir / CHECKPOINTS / ckpt.name)
        source.rmdir()

    def _close(self, judgement: Judgement, learner_steps: int, step: int, **record) -> None:
        leap = self.state.close(judgement.paid, learner_steps)
        self.emit("event", {"id": leap.id, "from_step": leap.from_step, "horizon": leap.horizon, "method": leap.method,
                            "type": "leap_paid" if judgement.paid else "leap_rolled_back",
                            "step": step, "se": judgement.se, **record, "policy": self.state.policy()})

    def _switch_to(self, checkpoint: Path) -> dict:
        """Continue from another branch's checkpoint. Its leap decision is not made again (the run decided there
        already, or the branch it starts is the protocol's own); the driver records the run's state in it."""
        saved = self.runtime.resume(checkpoint)
        self.state.checked_through = max(self.state.checked_through, self.runtime.step_count)
        return saved

    def after_step(self, learner_steps: int, evals: list[dict], checkpoint) -> dict | None:
        """Judge a pending leap once judge_after learner steps have run (in the leap branch, then in the control
        branch). Returns the restored state when the run switches branch (the driver continues from it).
        `checkpoint()` writes a checkpoint of the current state and returns its path."""
        st = self.state
        if not st.judging_due(learner_steps):
            return None
        leap, aside, step = st.pending, self.run_dir / ROLLED_BACK, self.runtime.step_count
        if st.phase == Phase.CONTROL:  # both branches have run judge_after steps: the better one continues
            judgement = st.judge_control(self._scores())
            if not judgement.paid:  # the control branch is the run now; the leap branch stays under rolled_back/
                self._close(judgement, learner_steps, step, leap_minus_control=judgement.diff, judge="control")
                return None
            self._move_checkpoints_after(leap.from_step, aside / f"{leap.id}-control")
            self._restore_checkpoints(aside / f"{leap.id}-leap")
            state = self._switch_to(self.run_dir / CHECKPOINTS / leap.branch_checkpoint)
            self._close(judgement, learner_steps, step, leap_minus_control=judgement.diff, judge="control")
            return state
        now = self._scores()
        if st.judge == "control":
            branch = Path(checkpoint())
            self._move_checkpoints_after(leap.from_step, aside / f"{leap.id}-leap")
            st.start_control(now, learner_steps, branch.name)
            self.emit("event", {"id": leap.id, "from_step": leap.from_step, "horizon": leap.horizon,
                                "method": leap.method, "type": "control_branch", "step": step,
                                "leap_acc": sum(now) / len(now)})
            return self._switch_to(Path(leap.pre_path))
        expected_gain = trend_slope(evals, leap.from_step, self.x.trend_evals) * self.x.judge_after
        judgement = st.judge_trend(now, expected_gain)
        state = None
        if not judgement.paid:
            self._move_checkpoints_after(leap.from_step, aside / leap.id)
            state = self._switch_to(Path(leap.pre_path))
        self._close(judgement, learner_steps, step, gain_since_leap=judgement.diff, trend_gain=expected_gain, judge="trend")
        return state

    def summary(self, learner_steps: int) -> dict:
        return self.state.summary(learner_steps)


class PlainRun:
    """The null leap controller of a job without an `extrapolate:` section: it still streams the rank-1 picture of
    each checkpoint to the dashboard, and answers manual leap requests with the reason there is none."""

    def __init__(self, run_dir: Path, sink=None, requests=None):
        self.run_dir, self.sink, self.requests = Path(run_dir), sink, requests
        self.analysis = None  # extrapolate.analyze.RunAnalysis, created at the first checkpoint (incremental)

    def checkpoint_state(self) -> dict:
        return {}

    def restore(self, saved: dict) -> None:
        pass

    def decision_due(self, step: int) -> bool:
        return False

    def after_step(self, learner_steps: int, evals: list[dict], checkpoint) -> dict | None:
        return None

    def after_checkpoint(self, step: int, learner_steps: int, final: bool) -> int | None:
        if self.sink is None:
            return None
        from extrapolate.analyze import RunAnalysis

        self.analysis = self.analysis or RunAnalysis(self.run_dir)
        self.sink("rank1", self.analysis.record(step))
        if self.requests is not None and self.requests():
            self.sink("events", {"type": "no_leap", "step": step, "time": time.time(),
                                 "reason": "leap requested, but this job has no extrapolate: section"})
        return None

    def summary(self, learner_steps: int) -> None:
        return None


def leap_controller(job, runtime, run_dir: Path, console, sink=None, requests=None):
    """The job's leap controller: LeapController with an `extrapolate:` section, else PlainRun."""
    if job.cfg.extrapolate is None:
        return PlainRun(run_dir, sink, requests)

    def emit(kind: str, record: dict) -> None:
        if kind == "event":
            record = {**record, "time": time.time()}
            append_jsonl(Path(run_dir) / EVENTS, record)
            if record["type"] != "no_leap":
                console.print(f"leap event: {record['type']} at step {record['step']}")
        if sink is not None:
            sink("events" if kind == "event" else "rank1", record)

    return LeapController(job, runtime, run_dir, emit, requests)
