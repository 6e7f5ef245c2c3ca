"""Is this run's trajectory forecastable? Figures no peer reports (docs/methods.md#predictability).

- backtest: fit an extrapolator on the window that ends `horizon` steps before the newest checkpoint T, forecast T,
  and compare the predicted displacement (W^ - W_tw) with the actual one (W_T - W_tw): their cosine, and the
  relative error ||W^ - W_T|| / ||W_T - W_0||. Computed in LoRA factor space (inner products of low-rank
  matrices through r x r products), summed over all target modules.
- linear_r2: NExt's linearity test: fit a least-squares line to the rank-1 trajectory x_t = s_1 u_1 (sign-aligned)
  on `fit` checkpoints and predict the next `predict`; R^2 = 1 - SS_res / SS_tot on those (negative = worse than
  predicting their mean).
"""

from __future__ import annotations

import math

import torch

from extrapolate.base import line_fit
from extrapolate.extrapolators import EXTRAPOLATORS
from extrapolate.rank1 import cosine_from_squares, lora_factors_difference, norm_from_square


def lowrank_inner(b1: torch.Tensor, a1: torch.Tensor, b2: torch.Tensor, a2: torch.Tensor) -> float:
    """<B1 A1, B2 A2>_F = trace((B1^T B2)(A2 A1^T)), without forming the m x n matrices."""
    b1, a1, b2, a2 = b1.double(), a1.double(), b2.double(), a2.double()
    return float(((b1.T @ b2) * (a1 @ a2.T)).sum())


def _minus(x: tuple[torch.Tensor, torch.Tensor], y: tuple[torch.Tensor, torch.Tensor]):
    return torch.cat([x[0], -y[0]], 1), torch.cat([x[1], y[1]], 0)


def forecast_error(prediction: dict, window_end: dict, target: dict) -> dict[str, float]:
    """How a prediction {module: (B, A)} of Delta(T) compares with the actual checkpoint `target` at T, from the
    window-end checkpoint `window_end` (both {module: LoraModule}), summed over modules: cos between predicted and
    actual displacement (W^ - W_tw vs W_T - W_tw) and relative error ||W^ - W_T|| / ||W_T - W_0||."""
    dot = pred_sq = act_sq = err_sq = total_sq = 0.0
    for name, mod in target.items():
        actual = lora_factors_difference(mod.b, mod.a, mod.scale)
        base = lora_factors_difference(window_end[name].b, window_end[name].a, window_end[name].scale)
        p_disp, a_disp, err = _minus(prediction[name], base), _minus(actual, base), _minus(prediction[name], actual)
        dot += lowrank_inner(*p_disp, *a_disp)
        pred_sq += lowrank_inner(*p_disp, *p_disp)
        act_sq += lowrank_inner(*a_disp, *a_disp)
        err_sq += lowrank_inner(*err, *err)
        total_sq += lowrank_inner(*actual, *actual)
    out = {"cos": cosine_from_squares(dot, pred_sq, act_sq),
           "rel_err": norm_from_square(err_sq) / norm_from_square(total_sq) if total_sq > 0 else math.nan}
    if math.isnan(out["cos"]):
        out["reason"] = ("the target checkpoint holds no update yet" if not total_sq > 0 else
                         "no displacement to compare: the prediction or the target equals the window end")
    return out


def backtest(states: list, method: str, horizon_checkpoints: int = 1) -> dict[str, float]:
    """Forecast the newest checkpoint from the window ending horizon_checkpoints earlier."""
    window = states[:-horizon_checkpoints]
    target_step, target = states[-1]
    extrapolator = EXTRAPOLATORS.get(method)()
    if len(window) < extrapolator.min_checkpoints:
        return {"cos": float("nan"), "rel_err": float("nan"),
                "reason": f"{len(window)} checkpoint(s) before step {target_step}; {method} needs "
                          f"{extrapolator.min_checkpoints}"}
    pred = extrapolator.fit(window).predict(target_step)
    return {**forecast_error(pred, window[-1][1], target), "target_step": target_step, "window_end": window[-1][0]}


def linear_r2(steps: list[int], xs: list[torch.Tensor], fit: int, predict: int) -> float:
    """R^2 of a line fitted to xs[:fit] (vectors) predicting xs[fit:fit + predict]."""
    t = torch.tensor(steps, dtype=torch.float64)
    x = torch.stack([v.double() for v in xs])
    a, b = line_fit(t[:fit], x[:fit])
    future = x[fit:fit + predict]
    pred = a + b * t[fit:fit + predict, None]
    ss_res = float(((future - pred) ** 2).sum())
    ss_tot = float(((future - future.mean(0)) ** 2).sum())
    return 1.0 - ss_res / ss_tot if ss_tot > 0 else float("nan")
