"""The job config: one section per package, composed here (docs/architecture.md#contracts).

    model:     learner.config.ModelConfig     which policy
    rollout:   rollout.config.RolloutConfig   task, sampling, engine, evaluation
    learner:   learner.config.LearnerConfig   GRPO loss, optimizer, LoRA
    run:       RunConfig                      steps, seed, checkpoints, where the run lives
    extrapolate: extrapolate.config.ExtrapolateConfig   leaps during training (absent: plain RL)
    data:      rollout.config.DataConfig      the dataset of rollout.task: dataset
    rewards:   [rollout.config.RewardConfig]  reward functions (absent: the task's own verifier)
Unknown fields are errors; `leapfrog config schema` prints the JSON schema.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from extrapolate.config import ExtrapolateConfig
from learner.config import ALGORITHM_CONFIGS, GRPOConfig, LearnerConfig, ModelConfig
from rollout.config import DataConfig, RewardConfig, RolloutConfig, check_rewards_section


class RunConfig(BaseModel):
    """The run as a whole."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    name: str = Field("run", min_length=1, pattern=r"^[A-Za-z0-9_.-]+$", description="Run name (used in the run dir).")
    seed: int = Field(0, ge=0, description="Seed of LoRA init, prompt order and sampling.")
    steps: int = Field(100, ge=1, description="Learner steps (one rollout batch each).")
    checkpoint_every: int = Field(10, ge=1, description="Write a checkpoint every this many steps (and at the end).")
    keep_checkpoints: int | None = Field(None, ge=1, description=(
        "Keep this many newest checkpoints: after each checkpoint older ones are deleted (step recorded in "
        "checkpoints/pruned.jsonl), except a leap's pre-leap checkpoint while it is judged and, when the job leaps, "
        "the extrapolation window and its backtest (extrapolate.window + max_horizon / checkpoint_every newest); "
        "rolled_back/ is never touched. null = keep all."))
    eval_every: int = Field(10, ge=1, description="Greedy held-out evaluation every this many steps (and at 0, at the end, and where a kept leap lands on such a step).")
    runs_root: str = Field("runs", min_length=1, description="Directory holding run directories (<runs_root>/<name>).")
    report_to: list[Literal["tensorboard", "wandb", "mlflow"]] = Field(
        [], description="Experiment trackers that receive the metrics rows and the config "
        "(services/trackers.py): TensorBoard event files in <run_dir>/tensorboard, wandb in <run_dir>/wandb (offline "
        "unless WANDB_MODE is set), an MLflow file store in <run_dir>/mlruns (unless MLFLOW_TRACKING_URI is set).")
    tracker_project: str = Field("leapfrog", min_length=1, description="The wandb project and the MLflow experiment "
                                 "of run.report_to (the run is named run.name).")

    @field_validator("report_to")
    @classmethod
    def _distinct_trackers(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError(f"each tracker at most once (got {value})")
        return value


class JobConfig(BaseModel):
    """A Leapfrog job."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    model: ModelConfig = Field(default_factory=ModelConfig)
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    learner: LearnerConfig = Field(default_factory=GRPOConfig)
    run: RunConfig = Field(default_factory=RunConfig)
    extrapolate: ExtrapolateConfig | None = Field(None, description="Leaps during training; absent = plain RL.")
    data: DataConfig | None = Field(None, description="The dataset of rollout.task: dataset.")
    rewards: list[RewardConfig] = Field(default_factory=list, description="Reward functions in TRL's signature, "
                                        "summed with their weights; empty = the task's own verifier.")

    @model_validator(mode="after")
    def _data_and_rewards(self) -> JobConfig:
        from rollout.rewards import load_reward

        check_rewards_section(self.rollout.task, self.data, self.rewards, self.rollout.accuracy_reward, load_reward)
        if self.rollout.task == "dataset" and self.model.path is None:
            raise ValueError("rollout.task: dataset has no bootstrapped default model; set model.path (an HF model "
                             "directory or a registered name such as smollm2-135m-instruct)")
        if self.learner.lora is None and self.rollout.engine == "vllm":
            raise ValueError("learner.lora: null (full-parameter RL) publishes the whole model every step, which the "
                             "vLLM engine here cannot reload (it takes LoRA adapters); set rollout.engine: hf, or "
                             "train a LoRA adapter")
        if self.data is not None and self.data.system_prompt is not None and self.rollout.system_prompt is not None:
            raise ValueError("data.system_prompt and rollout.system_prompt are both set; keep one")
        return self


class ConfigError(ValueError):
    """A job config that cannot be used; the message names each bad field and what to do."""


def format_validation_error(err: ValidationError, source: str) -> str:
    lines = [f"invalid job config {source}:"]
    for e in err.errors():
        loc = [p for i, p in enumerate(e["loc"]) if not (i == 1 and e["loc"][0] == "learner" and p in ALGORITHM_CONFIGS)]
        field = ".".join(str(p) for p in loc) or "(top level)"
        if e["type"] == "union_tag_invalid":
            lines.append(f"  {field}.algorithm: unknown algorithm {e['ctx']['tag']!r}; valid: "
                         f"{', '.join(ALGORITHM_CONFIGS)}")
        elif e["type"] == "value_error" and not loc:  # a rule across sections: its message names the fields
            lines.append(f"  {e['msg'].removeprefix('Value error, ')}")
        elif e["type"] == "extra_forbidden":
            lines.append(f"  {field}: unknown field; remove it (see `leapfrog config schema` for the valid fields)")
        else:
            lines.append(f"  {field}: {e['msg']} (got {e.get('input')!r})")
    return "\n".join(lines)


def parse_config(data: dict, source: str = "") -> JobConfig:
    try:
        return JobConfig.model_validate(data or {})
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, source)) from None


def read_config_file(path: str | Path) -> dict:
    """The raw mapping of a job config YAML file (not validated); YAML errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"job config {path} not found; give a YAML file such as deploy/jobs/arith.yaml")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path} line {mark.line + 1}" if mark is not None else str(path)
        problem = getattr(err, "problem", None) or str(err)
        raise ConfigError(f"{where}: {problem} (the job config is not valid YAML; fix the file)") from None
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"job config {path} must be a mapping of sections (model, rollout, learner, run)")
    return data or {}


def load_config(path: str | Path) -> JobConfig:
    return parse_config(read_config_file(path), str(path))


def dump_config(cfg: JobConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def config_reference() -> str:
    """The job config as Markdown tables, one per section (field, type, default, description), from the schema:
    docs/config.md's configuration reference is this text (a test keeps them equal)."""
    import json

    schema = JobConfig.model_json_schema()
    defs = schema["$defs"]

    def type_of(prop: dict) -> str:
        if "$ref" in prop:
            return "section"
        if "const" in prop:
            return f"`{prop['const']}`"
        if "anyOf" in prop:
            return " or ".join(type_of(p) for p in prop["anyOf"])
        if "enum" in prop:
            return " \\| ".join(f"`{v}`" for v in prop["enum"])
        if prop.get("type") == "array":
            return f"list of {type_of(prop.get('items', {}))}" if "items" in prop else "list"
        bounds = [f"{sym} {prop[k]}" for k, sym in (("minimum", ">="), ("exclusiveMinimum", ">"), ("maximum", "<="),
                                                     ("exclusiveMaximum", "<")) if k in prop]
        name = {"integer": "int", "number": "float", "string": "str", "boolean": "bool", "null": "null"}.get(
            prop.get("type", ""), prop.get("type", "any"))
        return name + (f" ({', '.join(bounds)})" if bounds else "")

    def rows(model: dict, only: set[str] | None = None) -> list[str]:
        out = []
        fields = sorted(model["properties"].items(), key=lambda item: item[0] != "algorithm")  # the chooser first
        for name, field in fields:
            if only is not None and name not in only:
                continue
            refs = [f["$ref"] for f in [field, *field.get("anyOf", [])] if "$ref" in f]
            if refs:  # a nested section: one row per field (an optional one gets a row of its own first)
                nested = defs[refs[0].rsplit("/", 1)[1]]
                if "anyOf" in field:
                    default = "`null`" if field.get("default", 0) is None else "the section"
                    out.append(f"| `{name}` | section or null | {default} | {field.get('description', '')} |")
                for sub, subfield in nested["properties"].items():
                    default = json.dumps(subfield["default"]) if "default" in subfield else "(computed)"
                    out.append(f"| `{name}.{sub}` | {type_of(subfield)} | `{default}` "
                               f"| {subfield.get('description', '')} |")
                continue
            default = json.dumps(field.get("default")) if "default" in field else "(computed)"
            out.append(f"| `{name}` | {type_of(field)} | `{default}` | {field.get('description', '')} |")
        return out

    header = ["| field | type | default | description |", "|---|---|---|---|"]
    lines = []
    for section, prop in schema["properties"].items():
        refs = [p["$ref"] for p in prop.get("oneOf", [])] or [
            prop.get("$ref") or prop.get("items", {}).get("$ref")
            or next(p["$ref"] for p in prop.get("anyOf", []) if "$ref" in p)]
        first = defs[refs[0].rsplit("/", 1)[1]]
        kind = " (a list; each entry)" if prop.get("type") == "array" else ""
        lines += [f"**`{section}`**{kind} — {' '.join(first.get('description', '').split())}", "", *header,
                  *rows(first), ""]
        for ref in refs[1:]:  # the other algorithms of a union section: the fields that differ from the first
            model = defs[ref.rsplit("/", 1)[1]]
            differ = {n for n, f in model["properties"].items() if first["properties"].get(n) != f}
            lines += [f"**`{section}` with `algorithm: {model['properties']['algorithm']['default']}`** — "
                      f"{' '.join(model.get('description', '').split())} The fields that differ from the table above (the "
                      f"others are the same; {', '.join(f'`{n}`' for n in first['properties'] if n not in model['properties'])} "
                      f"are refused):", "", *header, *rows(model, differ), ""]
    return "\n".join(lines)
