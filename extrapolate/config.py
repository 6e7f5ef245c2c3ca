"""The `extrapolate:` section of a job config: leaps during training (docs/methods.md#leap-protocol). Absent = plain RL."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class ExtrapolateConfig(BaseModel):
    """Predict-extend: fit an extrapolator on the recent checkpoints, leap ahead, keep training, judge, roll back."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    method: Literal["rl_extra", "alpharl", "relex", "growth", "next"] = Field(
        "growth", description="Extrapolator fitted on the window (extrapolate/extrapolators.py, extrapolate/next.py).")
    window: int = Field(4, ge=2, le=64, description="Checkpoints in the fit window (ending at the newest).")
    horizon: int = Field(10, ge=1, description="Steps a leap predicts ahead at first.")
    min_horizon: int = Field(5, ge=1, description="The horizon never shrinks below this after a rollback.")
    max_horizon: int = Field(40, ge=1, description="The horizon never grows above this after a paying leap.")
    scales: list[float] = Field(default_factory=lambda: [0.5, 1.0], min_length=1,
                                description="Candidates: W_t + scale (W^(t + horizon) - W_t) for each scale.")
    start_after: int = Field(20, ge=0, description="No leap before this step.")
    leap_every: int = Field(10, ge=1, description="Learner steps between a verdict and the next proposal.")
    backtest_threshold: float = Field(0.5, ge=-1, le=1, description=(
        "Leap only if forecasting the newest checkpoint from the window one horizon earlier gives a cosine "
        "(predicted vs actual displacement) of at least this; -1 turns the gate off (a leap then needs only its "
        "window of checkpoints)."))
    accept_margin: float = Field(0.01, ge=0, le=1, description=(
        "Apply the best candidate if its held-out accuracy is at most this below the current policy's (paired)."))
    judge: Literal["control", "trend", "none"] = Field("control", description=(
        "How a leap is judged after judge_after more learner steps. control: the same number of plain steps from the "
        "pre-leap checkpoint (a short control branch, same data) and a paired comparison; the better branch "
        "continues. trend: compare with the pre-leap accuracy plus the slope of the last trend_evals evaluations "
        "(cheaper, but a concave learning curve makes it strict). none: no judging (zero cost): a leap the paired "
        "evaluation accepts is kept."))
    decision_metric: Literal["accuracy", "reference_logprob"] = Field("accuracy", description=(
        "What leap decisions (accept, judge) compare, paired over the eval_size held-out problems: accuracy = the "
        "greedy accuracy reward; reference_logprob = the mean token log-prob of each problem's reference answer "
        "(task.reference_completion, then the end token), a smooth score with no sampling noise. The margins "
        "(accept_margin, judge_margin) are then in nats per token."))
    judge_after: int = Field(5, ge=1, description="Learner steps after a leap (and in its control branch) before "
                                                   "it is judged.")
    judge_margin: float = Field(0.0, ge=0, le=1, description=(
        "Keep the leap if it is at most this far (accuracy) below the control branch (or the trend); otherwise "
        "continue from the control branch (or roll back to the pre-leap checkpoint)."))
    trend_evals: int = Field(3, ge=2, description="Periodic evaluations before the leap used to fit its trend.")
    eval_size: int = Field(500, ge=20, description="Held-out problems of the paired leap evaluations.")
    eval_seed: int = Field(777, ge=0, description="Seed of the leap evaluation set (differs from the run's eval).")
    patience: int = Field(2, ge=1, description=(
        "Stop proposing after this many leaps in a row that were rejected or rolled back (MKOR-H's fall-back)."))
    reset_optimizer: bool = Field(False, description="Reset Adam's moments of the LoRA B matrices after a leap "
                                                     "(default: keep them).")

    @model_validator(mode="after")
    def _check(self) -> ExtrapolateConfig:
        if self.min_horizon > self.max_horizon:
            raise ValueError("min_horizon must be <= max_horizon")
        if not self.min_horizon <= self.horizon <= self.max_horizon:
            raise ValueError("horizon must lie in [min_horizon, max_horizon]")
        if self.decision_metric == "reference_logprob" and self.judge == "trend":
            raise ValueError("judge: trend compares a leap with the trend of the periodic accuracy evaluations, which "
                             "decision_metric reference_logprob does not measure; use judge: control or none, or "
                             "decision_metric: accuracy")
        if any(s <= 0 or s > 4 for s in self.scales):
            raise ValueError("scales must lie in (0, 4]")
        return self
