"""Trajectory extrapolators on LoRA runs (docs/methods.md#extrapolators), each predicting the update Delta(T*) = W(T*) - W_0 of
every target module as low-rank factors (B, A) — so every leap is itself a LoRA adapter on the base model.

All fit on the window of checkpoints t_0 < ... < t_w (W_0 = the base model, whose update is zero):
- `rl_extra` (RL-Extra, arXiv 2601.04537): W(T*) = W_0 + ((T* - t_0)/(t_w - t_0)) (W_tw - W_0), with t_0 = 0 the
  base: the whole update scaled by T*/t_w.
- `alpharl` (AlphaRL step form, arXiv 2510.00553): x_t = s_1 u_1 (sign-aligned) per module, least-squares line
  x_t = a + b t over the window, W(T*) = W_tw + (x^(T*) - x_tw) v_1(t_w)^T: a rank r + 1 adapter.
- `relex` (RELEX, arXiv 2605.21468): stack the flattened deltas delta_t as rows, take the top right singular
  vector v of that T x d matrix through its T x T Gram matrix, c_t = delta_t . v, fit c_t = a + b t, predict
  W_0 + (a + b T*) v. v is a combination of the deltas, so the prediction is a LoRA of rank <= T r.
- `alpharl` with a target accuracy (the authors' PLS form, caiyuchen-ustc/Alpha-RL eval/analysis/AlphaPredVector.py):
  per module, a 1-component partial least squares of the checkpoints' x_t = s_1 u_1 against their held-out
  accuracy y_t, a line y = c0 + c1 tau on the PLS score tau, inverted at the target accuracy y* and mapped back
  to x-space; the leap is then written as for the step form.
- `growth` (ours): RL-Extra with the run's measured growth law. RL-Extra assumes the update grows linearly in steps
  (||Delta_t|| ~ t); at our scale it grows like t^0.57-0.77 (closer to a random walk than a drift),
  so RL-Extra overshoots by (T*/t_w)^(1 - p) and its leaps lose accuracy as they grow. `growth` fits p on the
  window by least squares in log-log of the total update norm sum_modules ||Delta_t||_F^2 (one exponent for the
  whole model: per-module fits on a few checkpoints are noise), clips it to [0, 1], and predicts
  W(T*) = W_0 + (T*/t_w)^p (W_tw - W_0): the window-end direction, scaled to the norm the growth law forecasts.
  Still a LoRA of the same rank.
"""

from __future__ import annotations

from pathlib import Path

import torch

from common.registry import Registry
from extrapolate.base import Extrapolator, line_fit
from extrapolate.next import NExt
from extrapolate.rank1 import (
    align_sign,
    growth_exponent,
    lora_factors_difference,
    lora_triplets,
    norm_from_square,
)

LINEAR_METHODS = ("rl_extra", "alpharl", "relex", "growth")  # closed-form fits (cheap enough to backtest on every analysis)


class RLExtra(Extrapolator):
    name = "rl_extra"
    min_checkpoints = 1

    def predict(self, target_step: int):
        t_w, mods = self.window[-1]
        c = target_step / t_w
        return {n: lora_factors_difference(m.b, m.a, m.scale * c) for n, m in mods.items()}


def pls1_inverse(x: torch.Tensor, y: torch.Tensor, y_target: float) -> torch.Tensor:
    """AlphaRL's accuracy-targeted form: 1-component PLS of x [T, d] on y [T] (both centred, x scaled per column
    by its standard deviation, as sklearn's PLSRegression(n_components=1)), a least-squares line of y on the
    score tau = x_s w, inverted at y_target, mapped back to x-space: x^ = mean + std * (tau* p) with p the
    x-loading. Columns with zero variance keep their mean."""
    x, y = x.double(), y.double()
    mean, std = x.mean(0), x.std(0)
    std = torch.where(std > 0, std, torch.ones_like(std))
    xs, yc = (x - mean) / std, y - y.mean()
    w = xs.T @ yc
    if float(w.norm()) == 0:
        raise ValueError("the checkpoints' accuracies do not vary (or x does not): AlphaRL's PLS form cannot fit; "
                         "use the step form (no target accuracy)")
    w = w / w.norm()
    tau = xs @ w
    loading = xs.T @ tau / (tau @ tau)
    c0, c1 = line_fit(tau, y)
    if float(c1) == 0:
        raise ValueError("accuracy does not change along the PLS direction; AlphaRL's PLS form cannot invert it")
    tau_target = (y_target - c0) / c1
    return mean + std * (tau_target * loading)


class AlphaRL(Extrapolator):
    """Step form by default; the authors' PLS form when target_accuracy is given (needs each window checkpoint's
    held-out accuracy in `accuracies`, {step: accuracy})."""

    name = "alpharl"
    min_checkpoints = 2

    def __init__(self, target_accuracy: float | None = None, accuracies: dict[int, float] | None = None):
        self.target_accuracy = target_accuracy
        self.accuracies = accuracies or {}

    def fit(self, window):
        super().fit(window)
        if self.target_accuracy is not None:
            missing = [s for s, _ in window if s not in self.accuracies]
            if missing:
                raise ValueError(f"AlphaRL's PLS form needs the held-out accuracy of every window checkpoint; none "
                                 f"for steps {missing} (evaluate at every checkpoint: run.eval_every = "
                                 f"run.checkpoint_every)")
        return self

    def predict(self, target_step: int):
        steps = torch.tensor([s for s, _ in self.window], dtype=torch.float64)
        accuracies = torch.tensor([self.accuracies.get(s, 0.0) for s, _ in self.window], dtype=torch.float64)
        out = {}
        for name, last in self.window[-1][1].items():
            xs, u_prev = [], None
            for _, mods in self.window:
                trip = lora_triplets(*lora_factors_difference(mods[name].b, mods[name].a, mods[name].scale))
                u, v = trip.u, trip.v
                if u_prev is not None:
                    u, v = align_sign(u, v, u_prev)
                u_prev = u
                xs.append(trip.s[0] * u[:, 0])
            if self.target_accuracy is None:
                a, b = line_fit(steps, torch.stack(xs))
                x_target = a + b * target_step
            else:
                x_target = pls1_inverse(torch.stack(xs), accuracies, self.target_accuracy)
            b_w, a_w = lora_factors_difference(last.b, last.a, last.scale)
            extra = (x_target - xs[-1])[:, None]
            out[name] = (torch.cat([b_w, extra], dim=1), torch.cat([a_w, v[:, :1].T], dim=0))
        return out


class Relex(Extrapolator):
    name = "relex"
    min_checkpoints = 2

    def predict(self, target_step: int):
        steps = torch.tensor([s for s, _ in self.window], dtype=torch.float64)
        out = {}
        for name in self.window[-1][1]:
            factors = [lora_factors_difference(m[name].b, m[name].a, m[name].scale) for _, m in self.window]
            # Gram matrix of the flattened deltas: <B_i A_i, B_j A_j> = trace((B_i^T B_j)(A_j A_i^T))
            gram = torch.tensor([[float(((bi.T @ bj) * (ai @ aj.T)).sum()) for bj, aj in factors]
                                 for bi, ai in factors], dtype=torch.float64)
            eigval, eigvec = torch.linalg.eigh(gram)
            w, sigma = eigvec[:, -1], eigval[-1].clamp(min=1e-300).sqrt()
            coeffs = gram @ w / sigma  # c_t = delta_t . v with v = sum_t w_t delta_t / sigma
            a, b = line_fit(steps, coeffs)
            scale = float(a + b * target_step) / float(sigma)
            out[name] = (torch.cat([bi * (scale * float(wi)) for (bi, _), wi in zip(factors, w, strict=True)], 1),
                         torch.cat([ai for _, ai in factors], 0))
        return out


class Growth(Extrapolator):
    name = "growth"
    min_checkpoints = 2

    def fit(self, window):
        super().fit(window)
        steps = [s for s, _ in window]
        norms = [norm_from_square(sum(lora_triplets(*lora_factors_difference(m.b, m.a, m.scale)).fro2
                                      for m in mods.values())) for _, mods in window]
        self.exponent = min(max(growth_exponent(steps, norms), 0.0), 1.0)  # unchanged checkpoints left out
        return self

    def predict(self, target_step: int):
        t_w, mods = self.window[-1]
        c = (target_step / t_w) ** self.exponent
        return {n: lora_factors_difference(m.b, m.a, m.scale * c) for n, m in mods.items()}


# Every built-in, registered once here (NExt lives in its own module). A new extrapolator: one Extrapolator subclass
# with its `name`, one EXTRAPOLATORS.register(name) call, and the name in extrapolate.config's `method` Literal.
EXTRAPOLATORS: Registry[type[Extrapolator]] = Registry("extrapolator")
for _builtin in (RLExtra, AlphaRL, Relex, Growth, NExt):
    EXTRAPOLATORS.register(_builtin.name)(_builtin)


def run_accuracies(run_dir) -> dict[int, float]:
    """{step: held-out accuracy} from a Leapfrog run's metrics.jsonl (empty for runs of other frameworks)."""
    from common.run_dir import METRICS, read_jsonl

    return {r["step"]: r["eval_accuracy"] for r in read_jsonl(Path(run_dir) / METRICS) if "eval_accuracy" in r}


def extrapolate_run(run_dir, method: str, window_end: int, target_step: int, out_dir, window_start: int = 0,
                    max_norm_ratio: float = 10.0, target_accuracy: float | None = None, merge: bool = False,
                    base=None):
    """Fit `method` on the run's checkpoints in [window_start, window_end] and write the leap to target_step (a
    PEFT adapter at out_dir, or with merge=True a full HF model directory; a full-parameter run's leap is always a
    full model directory, its updates read against `base` or the base its checkpoints record). With
    target_accuracy (alpharl only) the authors' PLS form predicts the weights at that accuracy instead of at a
    step."""
    from extrapolate.checkpoints import (
        CheckpointReadError,
        find_run_checkpoints,
        full_base_dir,
        read_full,
        read_full_update,
        read_lora,
    )
    from extrapolate.leap_writer import LeapError, check_prediction, write_full_leap, write_leap_adapter

    if method not in EXTRAPOLATORS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(EXTRAPOLATORS.names())}")
    if target_accuracy is not None and method != "alpharl":
        raise ValueError("--target-accuracy is AlphaRL's PLS form; use it with --method alpharl")
    if target_step <= window_end:
        raise ValueError(f"--target-step {target_step} must be after --window-end {window_end}")
    kind, checkpoints = find_run_checkpoints(Path(run_dir))
    window = [(s, p) for s, p in checkpoints if window_start <= s <= window_end]
    if not window or window[-1][0] != window_end:
        raise CheckpointReadError(f"no checkpoint at --window-end {window_end} in {run_dir}; "
                                  f"available steps: {[s for s, _ in checkpoints]}")
    weights_0 = read_full(full_base_dir(Path(run_dir), window[-1][1], base)) if kind == "full" else None
    states = [(s, read_lora(p) if weights_0 is None else read_full_update(p, weights_0)) for s, p in window]
    names = set(states[-1][1])
    for s, mods in states:
        if set(mods) != names or any(mods[n].a.shape[1] != states[-1][1][n].a.shape[1] or
                                     mods[n].b.shape[0] != states[-1][1][n].b.shape[0] for n in names):
            raise CheckpointReadError(f"checkpoint step {s} does not match the others (different modules or shapes): "
                                      f"these checkpoints are not from one run on one base model")
    options = {"target_accuracy": target_accuracy, "accuracies": run_accuracies(run_dir)} \
        if target_accuracy is not None else {}
    prediction = EXTRAPOLATORS.get(method)(**options).fit(states).predict(target_step)
    last = states[-1][1]
    norms = {n: float(torch.linalg.matrix_norm(m.scale * m.b.double() @ m.a.double())) for n, m in last.items()}
    report = {"method": method, "window": [s for s, _ in states], "target_step": target_step,
              "run_dir": str(run_dir), "target_accuracy": target_accuracy}
    if weights_0 is not None:
        if Path(out_dir).exists():
            raise LeapError(f"{out_dir} already exists; choose another --out (nothing was overwritten)")
        check_prediction(prediction, norms, max_norm_ratio)
        return write_full_leap(Path(out_dir), window[-1][1], weights_0, prediction, 1.0, report)[0]
    if not merge:
        return write_leap_adapter(Path(out_dir), window[-1][1], prediction, norms, max_norm_ratio, report)
    import tempfile

    from extrapolate.leap_writer import merge_adapter

    with tempfile.TemporaryDirectory(prefix="leapfrog-leap-") as tmp:
        adapter = write_leap_adapter(Path(tmp) / "adapter", window[-1][1], prediction, norms, max_norm_ratio, report)
        return merge_adapter(adapter, Path(out_dir))


def cmd_extrapolate(args) -> int:
    path = extrapolate_run(args.run_dir, args.method, args.window_end, args.target_step, args.out,
                           window_start=args.window_start, max_norm_ratio=args.max_norm_ratio,
                           target_accuracy=args.target_accuracy, merge=args.merge, base=args.base)
    full = (Path(path) / "config.json").is_file()
    kind = "a full HF model directory" if full else "a PEFT LoRA adapter on the run's base model"
    print(f"leap written: {path} ({kind}; evaluate it with `leapfrog eval {path} --task TASK`)")
    return 0


def register_command(subparsers) -> None:
    p = subparsers.add_parser("extrapolate", help="predict the weights at a later step and write them as an adapter")
    p.add_argument("run_dir")
    p.add_argument("--method", required=True, choices=EXTRAPOLATORS.names())
    p.add_argument("--window-end", type=int, required=True, help="last checkpoint step the fit may use")
    p.add_argument("--window-start", type=int, default=0, help="first checkpoint step the fit may use")
    p.add_argument("--target-step", type=int, required=True, help="the step whose weights are predicted")
    p.add_argument("--out", required=True, help="directory to write the leap adapter to (must not exist)")
    p.add_argument("--max-norm-ratio", type=float, default=10.0,
                   help="refuse predictions whose update norm exceeds this multiple of the window's")
    p.add_argument("--target-accuracy", type=float,
                   help="alpharl only: the authors' PLS form, predicting the weights at this held-out accuracy "
                        "(needs an evaluation at every window checkpoint)")
    p.add_argument("--merge", action="store_true", help="write a full HF model directory (base + leap merged)")
    p.add_argument("--base", help="full-parameter runs: the base model directory (default: the one the checkpoints "
                                  "record)")
    p.set_defaults(func=cmd_extrapolate)
