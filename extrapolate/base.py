"""What every trajectory extrapolator shares (docs/methods.md#extrapolators): the `Extrapolator` interface and the
least-squares line most of them fit. The built-ins and their registry are in extrapolate/extrapolators.py."""

from __future__ import annotations

import torch

from extrapolate.checkpoints import LoraModule


def line_fit(steps: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Least-squares a + b t for each column of values [T, d] (or [T]): returns (a, b) with
    b = sum_t (t - mean t)(y_t - mean y) / sum_t (t - mean t)^2 and a = mean y - b mean t."""
    t = steps.double()
    t_mean = t.mean()
    y = values.double()
    y_mean = y.mean(0)
    b = ((t - t_mean).view(-1, *[1] * (y.dim() - 1)) * (y - y_mean)).sum(0) / ((t - t_mean) ** 2).sum()
    return y_mean - b * t_mean, b


class Extrapolator:
    """fit(window: [(step, {module: LoraModule})]) then predict(target_step) -> {module: (B, A)} with
    B A = the predicted W(T*) - W_0 (scales folded into B). `name` is the key it is registered under."""

    name = ""
    min_checkpoints = 1

    def fit(self, window: list[tuple[int, dict[str, LoraModule]]]) -> Extrapolator:
        if len(window) < self.min_checkpoints:
            raise ValueError(f"{self.name} needs at least {self.min_checkpoints} checkpoints in the window, "
                             f"got {len(window)}; widen the window or checkpoint more often")
        self.window = window
        return self

    def predict(self, target_step: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        raise NotImplementedError
