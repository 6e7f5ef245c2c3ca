"""`leapfrog analyze RUN_DIR`: the rank-1 picture of a run, per module and checkpoint (docs/methods.md#rank-1-analysis).

For every checkpoint t and target module: the rank-1 triplet of Delta_t = W_t - W_0 (LoRA runs: the fast path, W_0
is the base, so Delta_t = scale B_t A_t; full-parameter runs: the dense randomized path against the base model,
where e1 is left out because it needs the whole spectrum), e1, energy1, stable rank, stability of u_1 and v_1
against the previous checkpoint (sign-aligned), the growth exponent p of ||Delta_t||_F ~ a t^p per module type,
NExt's linear_r2 and a backtest of every closed-form extrapolator (extrapolate/predictability.py). Rows are written
to <run_dir>/rank1/metrics.jsonl (atomically); nothing else in the run directory is touched.

`RunAnalysis` keeps what the next checkpoint needs in memory, so a run analysed checkpoint by checkpoint (the
extrapolation service) reads each checkpoint once; `checkpoint_figures` is the one place the figures of a
checkpoint are computed, for the live stream and for the HTML report alike.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import time
from pathlib import Path

from common.run_dir import CHECKPOINTS, METRICS, PRUNED, RANK1, read_jsonl
from extrapolate.checkpoints import (
    CheckpointReadError,
    find_adapter_checkpoints,
    find_run_checkpoints,
    full_base_dir,
    module_layer,
    read_full,
    read_lora,
)
from extrapolate.extrapolators import LINEAR_METHODS
from extrapolate.predictability import backtest, linear_r2
from extrapolate.rank1 import (
    align_sign,
    dense_triplets,
    growth_exponent,
    lora_factors_difference,
    lora_triplets,
    stability,
)

BACKTEST_CHECKPOINTS = 16  # the backtests forecast the newest checkpoint from at most the 15 before it
LINEAR_R2_FIT, LINEAR_R2_PREDICT = 10, 5  # at most: linear_r2 fits 10 checkpoints and predicts the next 5


class TrajectoryStore:
    """<run_dir>/rank1/trajectory.safetensors (per module and step: u, s, v of the top triplet, sign-aligned) and
    rank1/metrics.jsonl (one row per module and step); both written atomically; re-analysis only adds new steps."""

    def __init__(self, out_dir: Path):
        from safetensors.torch import load_file

        self.out_dir = out_dir
        self.tensors: dict = {}
        self.rows: list[dict] = []
        if (out_dir / "trajectory.safetensors").is_file() and (out_dir / METRICS).is_file():
            self.tensors = load_file(str(out_dir / "trajectory.safetensors"))
            self.rows = read_jsonl(out_dir / METRICS)

    def add(self, module: str, step: int, u, s, v) -> None:
        self.tensors[f"{module}@{step}.u"] = u.float().contiguous()
        self.tensors[f"{module}@{step}.s"] = s.float().reshape(1)
        self.tensors[f"{module}@{step}.v"] = v.float().contiguous()

    def vectors(self, step: int, modules) -> dict:
        """{module: (u [m, 1], v [n, 1])} stored for a step, float64."""
        return {m: (self.tensors[f"{m}@{step}.u"].double()[:, None], self.tensors[f"{m}@{step}.v"].double()[:, None])
                for m in modules if f"{m}@{step}.u" in self.tensors}

    def x(self, module: str, step: int):
        """NExt's and AlphaRL's trajectory point x_t = s_1 u_1 of a module at a step, float64."""
        return self.tensors[f"{module}@{step}.s"].double() * self.tensors[f"{module}@{step}.u"].double()

    def forget_after(self, step: int) -> None:
        self.rows = [r for r in self.rows if r["step"] <= step]
        self.tensors = {k: v for k, v in self.tensors.items() if int(k.rpartition("@")[2].split(".")[0]) <= step}

    def save(self) -> None:
        from safetensors.torch import save_file

        self.out_dir.mkdir(exist_ok=True)
        tmp = self.out_dir / f"trajectory.safetensors.tmp-{os.getpid()}"
        save_file(self.tensors, str(tmp))
        os.replace(tmp, self.out_dir / "trajectory.safetensors")
        tmp = self.out_dir / f"metrics.jsonl.tmp-{os.getpid()}"
        tmp.write_text("".join(json.dumps(r) + "\n" for r in self.rows))
        os.replace(tmp, self.out_dir / METRICS)


def growth_by_module_type(rows: list[dict], up_to_step: int) -> dict[str, float]:
    """Per module type, the median over its modules of the growth exponent p of ||Delta_t||_F ~ a t^p, fitted per
    module by least squares in log-log (rank1.growth_exponent) on its rows {"step", "module", "type", "fro"} with
    step <= up_to_step. Points with t <= 0 or ||Delta_t||_F = 0 are left out (their logarithm is undefined); a
    module needs two points; NaN for a type without any fit. p = 1 is steady drift, 0.5 a random walk (RL-Extra,
    arXiv 2601.04537, assumes p = 1; docs/methods.md#rank-1-analysis)."""
    points: dict[tuple[str, str], list[tuple[float, float]]] = {}
    types = set()
    for r in rows:
        if r["step"] > up_to_step:
            continue
        types.add(r["type"])
        points.setdefault((r["type"], r["module"]), []).append((r["step"], r["fro"]))
    exponents: dict[str, list[float]] = {t: [] for t in types}
    for (mtype, _), pts in points.items():
        try:
            exponents[mtype].append(growth_exponent([t for t, _ in pts], [f for _, f in pts]))
        except ValueError:  # fewer than two points with an update: no fit for this module
            continue
    return {t: statistics.median(ps) if ps else math.nan for t, ps in sorted(exponents.items())}


def summary_by_type(rows: list[dict], step: int) -> dict[str, dict[str, float]]:
    """Per module type at checkpoint `step`: the medians over its modules of e1 (NaN where the dense path left it
    out), energy1 and stability_u (NaN at a run's first checkpoint), and growth_p from the rows up to `step`."""
    growth = growth_by_module_type(rows, step)
    at_step: dict[str, list[dict]] = {}
    for r in rows:
        if r["step"] == step:
            at_step.setdefault(r["type"], []).append(r)
    return {mtype: {"e1": statistics.median(r["e1"] for r in last) if all("e1" in r for r in last) else math.nan,
                    "energy1": statistics.median(r["energy1"] for r in last),
                    "stability_u": statistics.median(r.get("stability_u", math.nan) for r in last),
                    "growth_p": growth[mtype]}
            for mtype, last in sorted(at_step.items())}


def linear_r2_summary(store: TrajectoryStore, steps: list[int], modules: list[str]) -> dict:
    """NExt's linear_r2 of every module's x_t = s_1 u_1 over the newest checkpoints `steps` (fit on up to 10,
    predict up to the next 5, a third of them at most): {"fit", "predict", "median", "share_negative"}."""
    n = len(steps)
    predict = min(LINEAR_R2_PREDICT, max(1, n // 3))
    fit = min(LINEAR_R2_FIT, n - predict)
    r2 = []
    if fit >= 2:
        recent = steps[-(fit + predict):]
        for name in modules:
            value = linear_r2(recent, [store.x(name, s) for s in recent], fit, predict)
            if value == value:
                r2.append(value)
    r2.sort()
    return {"fit": fit, "predict": predict, "median": statistics.median(r2) if r2 else math.nan,
            "share_negative": sum(v < 0 for v in r2) / len(r2) if r2 else math.nan}


def backtests(states: list[tuple[int, dict]]) -> dict[str, dict]:
    """Every closed-form extrapolator forecasting the newest of `states` [(step, {module: LoraModule})] from the
    ones before it, the newest BACKTEST_CHECKPOINTS in all (predictability.backtest)."""
    window = states[-BACKTEST_CHECKPOINTS:]
    out = {}
    for m in LINEAR_METHODS:
        try:
            out[m] = backtest(window, m)
        except ValueError as err:  # the window cannot be fitted by this method (e.g. no update yet): no forecast
            out[m] = {"cos": math.nan, "rel_err": math.nan, "reason": str(err)}
    return out


def checkpoint_figures(rows: list[dict], store: TrajectoryStore, step: int, states: list | None) -> dict:
    """The figures of checkpoint `step` from the rows and trajectory up to it: by_type (summary_by_type),
    linear_r2 (linear_r2_summary) and, when the LoRA states of the checkpoints up to it are given, backtest.
    The live stream and the HTML report both take their figures from here, so they cannot disagree."""
    steps = sorted({r["step"] for r in rows if r["step"] <= step})
    modules = sorted({r["module"] for r in rows if r["step"] == step})
    out = {"by_type": summary_by_type(rows, step), "linear_r2": linear_r2_summary(store, steps, modules)}
    if states is not None:
        out["backtest"] = backtests([(s, m) for s, m in states if s <= step])
    return out


class RunAnalysis:
    """The rank-1 analysis of one run, brought up to date by `update()` (every checkpoint not yet analysed) and
    `record(step)` (the same, then the record of that checkpoint the extrapolation service streams).

    Kept in memory between calls: the rows and trajectory (rank1/ is read once, when the object is made), the
    sign-aligned (u_1, v_1) of the newest analysed checkpoint, the LoRA states of the newest BACKTEST_CHECKPOINTS
    checkpoints and, for full-parameter runs, the base weights. A new checkpoint is read once; nothing earlier is
    read again. `base`: full-parameter runs' base model directory (default: the checkpoints' config
    `_name_or_path`)."""

    def __init__(self, run_dir: Path, base: Path | None = None):
        self.run_dir = Path(run_dir)
        self.base = base
        self.store = TrajectoryStore(self.run_dir / RANK1)
        self.newest: tuple[int, dict] | None = None  # (step, {module: (u, v)}) of the newest analysed checkpoint
        self.states: dict[int, dict] = {}  # step -> {module: LoraModule}, the newest checkpoints
        self.weights_0: dict | None = None

    def checkpoints(self) -> tuple[str, list[tuple[int, Path]]]:
        """The run's kind ("lora" or "full") and its checkpoints (step, path) now."""
        return find_run_checkpoints(self.run_dir)

    def _full_triplets(self, path: Path, checkpoints) -> dict:
        if self.weights_0 is None:
            self.base = full_base_dir(self.run_dir, checkpoints[0][1], self.base)
            self.weights_0 = read_full(self.base)
        weights_0, weights = self.weights_0, read_full(path)
        if set(weights) != set(weights_0) or any(w.shape != weights_0[n].shape for n, w in weights.items()):
            raise CheckpointReadError(f"{path} does not match the base model {self.base} (different modules or "
                                      f"shapes); give the base this run started from with --base")
        return {n: (dense_triplets(w.double() - weights_0[n].double()), module_layer(n), n.rsplit(".", 1)[-1])
                for n, w in weights.items()}

    def _lora_triplets(self, step: int, path: Path, keep: bool) -> dict:
        modules = read_lora(path)
        if keep:  # one of the newest checkpoints: the backtests need its state
            self.states[step] = modules
        return {name: (lora_triplets(*lora_factors_difference(m.b, m.a, m.scale)), m.layer, m.module_type)
                for name, m in modules.items()}

    def _previous(self, step: int, analysed: set[int]) -> dict:
        """{module: (u, v)} of the newest analysed checkpoint before `step` (in memory, or from the trajectory)."""
        earlier = max((s for s in analysed if s < step), default=None)
        if earlier is None:
            return {}
        if self.newest is not None and self.newest[0] == earlier:
            return self.newest[1]
        return self.store.vectors(earlier, {r["module"] for r in self.store.rows if r["step"] == earlier})

    def _analyse(self, step: int, loaded: dict, analysed: set[int]) -> None:
        previous, current = self._previous(step, analysed), {}
        for name, (trip, layer, mtype) in loaded.items():
            row = {"step": step, "module": name, "layer": layer, "type": mtype, **trip.metrics()}
            if name in previous:
                u, v = align_sign(trip.u, trip.v, previous[name][0])
                row["stability_u"], row["stability_v"] = stability(u, v, *previous[name])
                trip.u, trip.v = u, v
            current[name] = (trip.u, trip.v)
            self.store.add(name, step, trip.u[:, 0], trip.s[0], trip.v[:, 0])
            self.store.rows.append(row)
        if self.newest is None or step > self.newest[0]:
            self.newest = (step, current)

    def update(self, progress: bool = False) -> dict:
        """Analyse every checkpoint not analysed yet; write rank1/; return the run's summary at its newest
        checkpoint (steps, modules, by_type, backtest, linear_r2, rows, new_checkpoints)."""
        from rich.progress import Progress

        kind, checkpoints = self.checkpoints()
        if len(checkpoints) < 2:
            raise CheckpointReadError(f"{self.run_dir} has {len(checkpoints)} checkpoint(s); the analysis needs at "
                                      f"least 2 (LoRA: checkpoints/step-N, checkpoint-N or "
                                      f"global_step_N/actor/lora_adapter; full models: checkpoint-N or step-N with "
                                      f"config.json and model*.safetensors)")
        steps = [s for s, _ in checkpoints]
        pruned = {r["step"] for r in read_jsonl(self.run_dir / CHECKPOINTS / PRUNED)}  # run.keep_checkpoints
        present, recent = set(steps) | pruned, set(steps[-BACKTEST_CHECKPOINTS:])
        kept = [r for r in self.store.rows if r["step"] in present]  # rows of checkpoints moved aside are dropped
        changed = len(kept) != len(self.store.rows)
        self.store.rows = kept
        analysed = {r["step"] for r in kept}
        new = [(s, p) for s, p in checkpoints if s not in analysed]
        with Progress(disable=not progress) as bar:
            job = bar.add_task("rank-1 analysis", total=len(new))
            for step, path in new:
                loaded = (self._lora_triplets(step, path, step in recent) if kind == "lora" else
                          self._full_triplets(path, checkpoints))
                self._analyse(step, loaded, analysed)
                analysed.add(step)
                bar.advance(job)
        if new or changed:
            self.store.rows.sort(key=lambda r: (r["step"], r["module"]))
            self.store.save()
        states = None
        if kind == "lora":
            self.states = {s: self.states[s] if s in self.states else read_lora(p)
                           for s, p in checkpoints[-BACKTEST_CHECKPOINTS:]}
            states = sorted(self.states.items())
        figures = checkpoint_figures(self.store.rows, self.store, steps[-1], states)
        return {"run_dir": str(self.run_dir), "kind": kind, "steps": steps,
                "modules": len({r["module"] for r in self.store.rows}), "rows": len(self.store.rows),
                "new_checkpoints": len(new), "by_type": figures["by_type"], "backtest": figures.get("backtest", {}),
                "linear_r2": figures["linear_r2"]}

    def record(self, step: int) -> dict:
        """Bring the analysis up to date after the checkpoint at `step` and return that checkpoint's record: the
        rank-1 rows of every module, by_type, backtest and linear_r2 (checkpoint_figures). Empty rows before the
        second checkpoint."""
        started = time.time()
        if len(self.checkpoints()[1]) < 2:
            return {"step": step, "rows": [], "note": "the rank-1 analysis starts at the second checkpoint"}
        summary = self.update()
        return {"step": step, "rows": [r for r in self.store.rows if r["step"] == step], "by_type": summary["by_type"],
                "backtest": summary["backtest"], "linear_r2": summary["linear_r2"], "seconds": time.time() - started}

    def history(self, max_backtests: int = 30) -> list[dict]:
        """The record of every analysed checkpoint, as `record` returned it when that checkpoint was the newest
        (without "seconds"); backtests for the newest `max_backtests` checkpoints only (LoRA states are read once
        each, BACKTEST_CHECKPOINTS at a time). For the HTML report."""
        rows = self.store.rows
        steps = sorted({r["step"] for r in rows})
        kind, checkpoints = self.checkpoints()
        paths = dict(checkpoints) if kind == "lora" else {}
        window: dict[int, dict] = {}
        records = []
        for i, step in enumerate(steps):
            states = None
            recent = steps[max(0, i + 1 - BACKTEST_CHECKPOINTS):i + 1]
            if len(steps) - i <= max_backtests and all(s in paths for s in recent):
                window = {s: window[s] if s in window else self.states[s] if s in self.states else read_lora(paths[s])
                          for s in recent}
                states = sorted(window.items())
            record = {"step": step, "rows": [r for r in rows if r["step"] == step],
                      **checkpoint_figures(rows, self.store, step, states)}
            records.append(record)
        return records

    def forget_after(self, step: int) -> None:
        """Drop the rows, vectors and states of steps after `step` (the run switched branch: the checkpoints after
        it were moved away, and the ones that replace them are analysed when they come)."""
        if any(r["step"] > step for r in self.store.rows):
            self.store.forget_after(step)
            self.store.save()
        self.states = {s: m for s, m in self.states.items() if s <= step}
        if self.newest is not None and self.newest[0] > step:
            self.newest = None


def analyze_run(run_dir: Path, progress: bool = True, base: Path | None = None) -> dict:
    """Metrics rows per (step, module) and a summary per module type; writes rank1/metrics.jsonl and
    rank1/trajectory.safetensors. LoRA runs also get a backtest of every closed-form extrapolator."""
    return RunAnalysis(run_dir, base).update(progress)


def rank1_recovery(run_dir: Path, task_name: str, eval_size: int = 1000, step: int | None = None) -> dict:
    """AlphaRL's rank-1 recovery (docs/methods.md#rank-1-recovery): evaluate the norm-matched rank-1 model
    W_0 + (||Delta||_F / s_1) s_1 u_1 v_1^T of a checkpoint (every target module) against the full checkpoint and
    the base: recovery = (acc_rank1 - acc_base) / (acc_t - acc_base), greedy, on the task's held-out set."""
    import tempfile

    from extrapolate.leap_writer import write_leap_adapter
    from rollout.engines.hf import HFEngine
    from rollout.evaluate import greedy_accuracy
    from rollout.prompts import PromptEncoder
    from rollout.rewards import Scorer
    from rollout.tasks import load_task

    checkpoints = dict(find_adapter_checkpoints(run_dir))
    if not checkpoints:
        raise CheckpointReadError(f"{run_dir} has no LoRA checkpoints")
    step = step if step is not None else max(checkpoints)
    path = checkpoints[step]
    base_dir = json.loads((path / "adapter_config.json").read_text()).get("base_model_name_or_path")
    if not base_dir or not Path(base_dir).is_dir():
        raise CheckpointReadError(f"{path}: base model {base_dir!r} is not a local directory")
    rank1 = {}
    for name, mod in read_lora(path).items():
        trip = lora_triplets(*lora_factors_difference(mod.b, mod.a, mod.scale))
        rank1[name] = ((trip.fro2**0.5) * trip.u[:, :1], trip.v[:, :1].T)
    task = load_task(task_name)
    examples = task.examples("test", eval_size, seed=12345)
    encoder = PromptEncoder.from_model_dir(base_dir)
    scorer, limit = Scorer.for_job([], task, task.max_new_tokens), task.max_new_tokens
    with tempfile.TemporaryDirectory() as tmp:
        adapter = write_leap_adapter(Path(tmp) / "rank1-adapter", path, rank1, {}, report={"rank1_of": str(path)})
        acc_rank1 = greedy_accuracy(HFEngine(base_dir, adapter_path=adapter), scorer, examples, encoder, limit)
    acc_full = greedy_accuracy(HFEngine(base_dir, adapter_path=path), scorer, examples, encoder, limit)
    acc_base = greedy_accuracy(HFEngine(base_dir), scorer, examples, encoder, limit)
    gain = acc_full - acc_base
    return {"step": step, "acc_base": acc_base, "acc_full": acc_full, "acc_rank1": acc_rank1,
            "recovery": (acc_rank1 - acc_base) / gain if gain != 0 else float("nan"), "eval_size": eval_size}


def cmd_analyze(args) -> int:
    from rich.console import Console
    from rich.table import Table

    result = analyze_run(Path(args.run_dir), base=Path(args.base) if args.base else None)
    if args.json:
        print(json.dumps(result))
        return 0
    table = Table(title=f"rank-1 picture at step {result['steps'][-1]} ({result['modules']} modules, "
                        f"{len(result['steps'])} checkpoints)")
    for col in ("module type", "median e1", "median energy1", "median |cos u1| vs prev", "median growth p"):
        table.add_column(col)
    for mtype, s in result["by_type"].items():
        table.add_row(mtype, f"{s['e1']:.3f}", f"{s['energy1']:.3f}", f"{s['stability_u']:.3f}", f"{s['growth_p']:.2f}")
    Console().print(table)
    lin = result["linear_r2"]
    print(f"linear_r2 (fit {lin['fit']}, predict {lin['predict']} checkpoints): median {lin['median']:.3f}, "
          f"share of modules below 0: {lin['share_negative']:.2f}")
    for method, bt in result["backtest"].items():
        print(f"backtest {method:9s}: forecast of the newest checkpoint from one checkpoint earlier: "
              f"cos(predicted, actual displacement) {bt['cos']:.3f}, relative error {bt['rel_err']:.3f}")
    print(f"per module and step: {Path(args.run_dir) / RANK1 / METRICS}")

    if args.task:
        rec = rank1_recovery(Path(args.run_dir), args.task, args.eval_size)
        print(f"rank-1 recovery at step {rec['step']} on {rec['eval_size']} held-out {args.task} problems: base "
              f"{rec['acc_base']:.3f}, full {rec['acc_full']:.3f}, norm-matched rank-1 {rec['acc_rank1']:.3f} -> "
              f"recovery {rec['recovery']:.2f}")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("analyze", help="rank-1 analysis of a LoRA run's checkpoints (ours, TRL, verl)")
    p.add_argument("run_dir")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--base", help="full-parameter runs: the base model directory the run started from "
                                  "(default: the checkpoints' config _name_or_path)")
    p.add_argument("--task", help="also measure rank-1 recovery on this task's held-out set (greedy)")
    p.add_argument("--eval-size", type=int, default=1000, help="held-out problems for the recovery")

    p.set_defaults(func=cmd_analyze)
    return p
