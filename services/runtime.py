"""Where the loop's pieces run: in this process (`LocalRuntime`) or as Ray actors (`RayRuntime`). Both implement
the `Runtime` protocol, so `services.loop.drive` is one loop for both."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

from common.run_dir import ADAPTERS
from learner.learner import Learner, RolloutBatch
from rollout.engines.base import Completion, SamplingParams


class LearnerLost(RuntimeError):
    """The learner process died; the runtime restarted it and the loop continues from the last checkpoint."""


class Extrapolation(Protocol):
    """What the leap controller asks of the extrapolation service (extrapolate/service.py), in this process or as a
    Ray actor; it holds no protocol state (that is LeapState's)."""

    def on_checkpoint(self, step: int) -> dict:
        """Rank-1 rows of the new checkpoint and the run-level figures."""

    def forget_after(self, step: int) -> None:
        """Drop the rank-1 rows after a step (the run switched branch)."""

    def propose(self, step: int, horizon: int, number: int, force: bool = False) -> dict:
        """Leap candidates from the checkpoint at `step`, or {"reason": why not}."""


class RayExtrapolation:
    """The Extrapolation interface over the service's Ray actor."""

    def __init__(self, actor):
        self.actor = actor

    def on_checkpoint(self, step: int) -> dict:
        import ray

        return ray.get(self.actor.on_checkpoint.remote(step))

    def forget_after(self, step: int) -> None:
        import ray

        ray.get(self.actor.forget_after.remote(step))

    def propose(self, step: int, horizon: int, number: int, force: bool = False) -> dict:
        import ray

        return ray.get(self.actor.propose.remote(step, horizon, number, force))


class Runtime(Protocol):
    """What the driver loop and the leap controller (services/leap_protocol.py) call."""

    @property
    def step_count(self) -> int:
        """The learner's step (leaps advance it by their horizon)."""

    def generate(self, prompt_ids: list[list[int]], params: SamplingParams) -> list[list[Completion]]:
        """Completions of the current policy, grouped per prompt (prompts as token ids)."""

    def generate_async(self, prompt_ids: list[list[int]], params: SamplingParams) -> Any:
        """Start a generation; `collect(handle)` returns what `generate` would have."""

    def collect(self, handle: Any) -> list[list[Completion]]: ...

    def generate_with(self, adapter_path: str, prompt_ids: list[list[int]], params: SamplingParams
                      ) -> list[list[Completion]]:
        """Sample a candidate adapter without making it the policy."""

    def mean_logprobs(self, prompt_ids: list[list[int]], completion_ids: list[list[int]],
                      adapter_path: str | None = None) -> list[float]:
        """Each completion's mean token log-prob under the policy, or under a candidate adapter (the learner's)."""

    def train(self, batch: RolloutBatch) -> dict:
        """One learner step; its metrics. Raises LearnerLost when the learner died."""

    def publish(self) -> str:
        """Make the learner's current weights the rollout policy; returns its version."""

    def checkpoint(self, meta: dict, extra: dict) -> Path: ...

    def resume(self, path: Path | None) -> dict:
        """Continue from a checkpoint (None: from the start); returns its saved state."""

    def leap(self, adapter_path: str, horizon: int, reset_optimizer: bool) -> int:
        """The learner continues from a leap's adapter, its step advanced by the horizon; returns the new step."""

    @property
    def extrapolation(self) -> Extrapolation | None:
        """The job's extrapolation service (None without an `extrapolate:` section)."""

    def close(self) -> None: ...


@contextmanager
def learner_errors():
    """The one place Ray actor failures of the learner become LearnerLost for the driver loop."""
    import ray

    try:
        yield
    except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError) as err:
        raise LearnerLost(f"learner actor died: {type(err).__name__}") from err


# Learner methods that only read the policy (or write what rank 0 writes): with replicas (sharding none or ddp) rank 0
# alone runs them; with shards (fsdp) every rank must, since gathering the weights is a collective.
LEADER_CALLS = frozenset({"mean_logprobs", "logprobs", "publish_weights", "save_checkpoint", "pid"})


class RayLearnerGroup:
    """The learner: learner.num_workers Learner actors in one Ray placement group (a bundle of learner.num_cpus /
    num_gpus per rank), the ranks of one torch.distributed group (learner/distributed.py) that meet at rank 0's node.
    A call that changes the learner goes to every rank, one that reads it to rank 0 (LEADER_CALLS); the answer is rank
    0's. A rank that dies takes the group down: the call raises LearnerLost, and `restart` starts a new group, which
    the loop then resumes from the last checkpoint (services/loop.py recover_learner)."""

    def __init__(self, job, threads: int, env: dict):
        self.job, self.threads, self.env = job, threads, env
        self.cfg = job.cfg.learner
        self.actors: list = []
        self.placement = None
        self.broken = False
        self.start()

    def start(self) -> None:
        import ray
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        cfg, job = self.cfg, self.job
        n = cfg.num_workers
        bundle = {"CPU": cfg.num_cpus, **({"GPU": cfg.num_gpus} if cfg.num_gpus else {}), **cfg.resources}
        self.placement = placement_group([bundle] * n, strategy="PACK")
        try:
            ray.get(self.placement.ready(), timeout=300)
            address = None
            if n > 1:
                rendezvous = ray.remote(num_cpus=0)(rendezvous_address).options(
                    scheduling_strategy=PlacementGroupSchedulingStrategy(self.placement,
                                                                         placement_group_bundle_index=0))
                address = ray.get(rendezvous.remote())
            learner_cls = ray.remote(max_restarts=0, runtime_env=self.env)(Learner)
            self.actors = [
                learner_cls.options(num_cpus=cfg.num_cpus, num_gpus=cfg.num_gpus, resources=cfg.resources,
                                    scheduling_strategy=PlacementGroupSchedulingStrategy(
                                        self.placement, placement_group_bundle_index=rank)).remote(
                    **learner_arguments(job), num_threads=self.threads, rank=rank, group_address=address)
                for rank in range(n)]
        except BaseException:
            self.close()
            raise
        self.broken = False

    @property
    def leader(self):
        return self.actors[0]

    def submit(self, method: str, *args) -> list:
        """Start `method` on the ranks that run it; the futures, rank 0's first."""
        ranks = self.actors[:1] if method in LEADER_CALLS and self.cfg.sharding != "fsdp" else self.actors
        return [getattr(actor, method).remote(*args) for actor in ranks]

    def result(self, futures: list):
        """Rank 0's answer once every rank has finished; LearnerLost (and the group marked broken) when any died."""
        import ray

        pending, results = list(futures), {}
        try:
            with learner_errors():
                while pending:
                    ready, pending = ray.wait(pending, num_returns=1)
                    results[ready[0]] = ray.get(ready[0])
        except LearnerLost:
            self.broken = True
            raise
        return results[futures[0]]

    def call(self, method: str, *args):
        return self.result(self.submit(method, *args))

    def restart(self) -> None:
        """A new group in place of a broken one (its surviving ranks are killed: they cannot finish a collective)."""
        self.close()
        self.start()

    def close(self) -> None:
        import ray
        from ray.util.placement_group import remove_placement_group

        for actor in self.actors:
            ray.kill(actor)
        self.actors = []
        if self.placement is not None:
            remove_placement_group(self.placement)
            self.placement = None


def rendezvous_address() -> str:
    """tcp://host:port on this node, a port free now, for rank 0 of a learner group to listen on."""
    import socket

    import ray

    with socket.socket() as sock:
        sock.bind(("", 0))
        port = sock.getsockname()[1]
    return f"tcp://{ray.util.get_node_ip_address()}:{port}"


def connect_ray(num_cpus: int | None = None) -> None:
    """Connect to the Ray cluster of RAY_ADDRESS (the address a Ray job is given), or start a local instance."""
    import ray

    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=True)


def free_port() -> int:
    """A TCP port free on this host now (for a learner group's rendezvous on loopback)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def runner_threads(environ) -> int:
    """Torch threads of the single-process runner: LEAPFROG_THREADS, else OMP_NUM_THREADS (so that two runs given one
    thread each share two cores instead of oversubscribing them: OpenMP's spinning workers made two 2-thread runs on
    2 cores ~10x slower than one alone), else every core."""
    for name, value in (("LEAPFROG_THREADS", environ.get("LEAPFROG_THREADS", "")),
                        ("OMP_NUM_THREADS", environ.get("OMP_NUM_THREADS", ""))):
        value = value.strip()
        if value:
            if not value.isdigit() or int(value) < 1:
                raise ValueError(f"{name}={value!r}: give a whole number of threads >= 1, or unset it")
            return int(value)
    return max(1, os.cpu_count() or 1)


def learner_arguments(job) -> dict:
    """The Learner's constructor arguments for a prepared job (every rank's, besides its rank)."""
    cfg = job.cfg
    return dict(model_dir=job.model_dir, model_cfg=cfg.model, cfg=cfg.learner, seed=cfg.run.seed,
                total_steps=cfg.run.steps, max_new_tokens=job.completion_limit, temperature=cfg.rollout.temperature,
                probe=job.probe)


def serve_learner_rank(conn, arguments: dict, rank: int, address: str, threads: int) -> None:
    """A learner rank > 0 of the single-process runner, in a process of its own: runs the Learner method calls that
    rank 0 sends until it sends None, answering each with (True, result) or (False, the error)."""
    learner = Learner(**arguments, num_threads=threads, rank=rank, group_address=address)
    conn.send((True, None))
    while (message := conn.recv()) is not None:
        method, args = message
        try:
            conn.send((True, getattr(learner, method)(*args)))
        except Exception as err:  # the runner raises it: rank 0 cannot go on without this rank
            conn.send((False, f"{type(err).__name__}: {err}"))
    learner.group.close()


class LocalLearnerRanks:
    """Ranks 1..N-1 of the single-process runner's learner group (learner.num_workers, sharding ddp), each a Learner
    in a spawned process, given the calls that change the learner alongside rank 0 (which lives in the runner's
    process, sharing its policy with the HF engine)."""

    def __init__(self, arguments: dict, world_size: int, address: str, threads: int):
        import torch.multiprocessing as mp

        context = mp.get_context("spawn")
        self.ranks = []
        for rank in range(1, world_size):
            here, there = context.Pipe()
            process = context.Process(target=serve_learner_rank, args=(there, arguments, rank, address, threads),
                                      daemon=True, name=f"leapfrog-learner-rank{rank}")
            process.start()
            self.ranks.append((process, here))

    def send(self, method: str, *args) -> None:
        for _, conn in self.ranks:
            conn.send((method, args))

    def wait(self) -> None:
        """Every rank's answer to the last call (or to start-up); a failed or dead rank is an error here."""
        for rank, (process, conn) in enumerate(self.ranks, start=1):
            try:
                ok, answer = conn.recv()
            except EOFError:
                raise RuntimeError(f"learner rank {rank} died (exit code {process.exitcode})") from None
            if not ok:
                raise RuntimeError(f"learner rank {rank}: {answer}")

    def close(self) -> None:
        for process, conn in self.ranks:
            if process.is_alive():
                try:
                    conn.send(None)
                except (BrokenPipeError, OSError):
                    pass
                process.join(timeout=30)
            if process.is_alive():
                process.terminate()
                process.join()
        self.ranks = []


class LocalRuntime:
    """One process: the HF engine shares the learner's policy object, so publishing is free. With
    learner.num_workers N > 1 (sharding ddp) that process is rank 0 and ranks 1..N-1 run in processes of their own."""

    def __init__(self, job, run_dir: Path):
        import torch

        from rollout.engines.hf import HFEngine
        from rollout.prompts import stop_token_ids

        cfg = job.cfg
        world = cfg.learner.num_workers
        threads = max(1, runner_threads(os.environ) // world)
        torch.set_num_threads(threads)
        self.run_dir = run_dir
        self.ranks, address = None, None
        if world > 1:
            address = f"tcp://127.0.0.1:{free_port()}"
            self.ranks = LocalLearnerRanks(learner_arguments(job), world, address, threads)
        try:
            self.learner = Learner(**learner_arguments(job), rank=0, group_address=address)
            if self.ranks is not None:
                self.ranks.wait()
        except BaseException:
            self.close()
            raise
        self.engine = HFEngine(model=self.learner.model, tokenizer=self.learner.tokenizer,
                               stop_ids=stop_token_ids(self.learner.tokenizer, job.model_dir))
        self.extrapolation = None
        if cfg.extrapolate is not None:
            from extrapolate.service import ExtrapolationService

            self.extrapolation = ExtrapolationService(run_dir, cfg.extrapolate, cfg.run.checkpoint_every, job.model_dir)

    @property
    def step_count(self) -> int:
        return self.learner.step_count

    def generate_with(self, adapter_path: str, prompt_ids: list[list[int]], params: SamplingParams) -> list[list[Completion]]:
        """Swap the candidate's weights (LoRA, or full) into the shared policy, sample, and swap the learner's back."""
        from common.weights import swapped_weights

        with swapped_weights(self.learner.model, adapter_path):
            return self.engine.generate(prompt_ids, params)

    def mean_logprobs(self, prompt_ids: list[list[int]], completion_ids: list[list[int]],
                      adapter_path: str | None = None) -> list[float]:
        return self.learner.mean_logprobs(prompt_ids, completion_ids, adapter_path)

    def leap(self, adapter_path: str, horizon: int, reset_optimizer: bool) -> int:
        return self._on_every_rank("apply_leap", adapter_path, horizon, reset_optimizer)

    def _on_every_rank(self, method: str, *args):
        """A call that changes the learner: on every rank at once (their collectives meet); rank 0's answer."""
        if self.ranks is not None:
            self.ranks.send(method, *args)
        result = getattr(self.learner, method)(*args)
        if self.ranks is not None:
            self.ranks.wait()
        return result

    def generate(self, prompt_ids: list[list[int]], params: SamplingParams) -> list[list[Completion]]:
        return self.engine.generate(prompt_ids, params)

    def generate_async(self, prompt_ids: list[list[int]], params: SamplingParams):
        return self.generate(prompt_ids, params)

    def collect(self, handle) -> list[list[Completion]]:
        return handle

    def train(self, batch: RolloutBatch) -> dict:
        return self._on_every_rank("step", batch)

    def publish(self) -> str:
        return f"{self.learner.step_count:06d}"

    def checkpoint(self, meta: dict, extra: dict) -> Path:
        return self.learner.save_checkpoint(self.run_dir, meta, extra)

    def resume(self, path: Path) -> dict:
        return self._on_every_rank("load_checkpoint", path)

    def close(self) -> None:
        if self.ranks is not None:
            self.ranks.close()
            self.ranks = None


class RayRuntime:
    """N RolloutWorker actors and one Learner actor on a Ray cluster (`ray.init` already called).

    Weight sync: the learner writes the adapter under <run_dir>/adapters/v<step>, the pointer file
    <run_dir>/adapters/current.json names it, and every worker loads it (vLLM: a new LoRARequest; HF: PEFT load).
    Workers are restarted by Ray when they die (max_restarts) and their in-flight call is retried
    (max_task_retries); a restarted worker reads the pointer file first, so the retry samples the same policy.
    """

    def __init__(self, job, run_dir: Path):
        """Start the actors of a prepared job (services/prepare.py, whose runtime stage checked the cluster)."""
        import ray

        from rollout.engines import resolve_engine_name
        from rollout.worker import RolloutWorker

        cfg, model_dir = job.cfg, job.model_dir
        self.cfg = cfg
        self.run_dir = Path(run_dir).resolve()
        engine = resolve_engine_name(cfg.rollout.engine)
        self.adapters_dir = self.run_dir / ADAPTERS
        self.adapters_dir.mkdir(parents=True, exist_ok=True)
        self.pointer = self.adapters_dir / "current.json"
        env = {"env_vars": {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
                            "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}}
        # Threads per actor: synchronous, the loop alternates between generating and training, so each actor may use
        # every core of its node while it works; asynchronous (max_off_policy_steps > 0) they run at once and keep
        # to their reservation.
        node_cpus = int(max(n["Resources"].get("CPU", 1) for n in ray.nodes() if n["Alive"]))
        asynchronous = cfg.rollout.max_off_policy_steps > 0
        learner_threads = (max(1, int(cfg.learner.num_cpus)) if asynchronous
                           else max(1, node_cpus // cfg.learner.num_workers))
        worker_threads = (max(1, int(cfg.rollout.worker_cpus)) if asynchronous
                          else max(1, node_cpus // cfg.rollout.num_workers))
        self.learners = RayLearnerGroup(job, learner_threads, env)
        worker_cls = ray.remote(num_cpus=cfg.rollout.worker_cpus, num_gpus=cfg.rollout.worker_gpus,
                                resources=cfg.rollout.worker_resources, max_restarts=-1, max_task_retries=3,
                                runtime_env=env)(RolloutWorker)
        self.workers = [
            worker_cls.remote(engine, str(model_dir), adapter_pointer=str(self.pointer),
                              # room for rank r + 1 leaps (AlphaRL, NExt); unused by full-parameter runs
                              max_lora_rank=cfg.learner.lora.r + 1 if cfg.learner.lora else 16,
                              seed=cfg.run.seed + i, num_threads=worker_threads, device=cfg.model.device,
                              dtype=cfg.model.dtype, attn_implementation=cfg.model.attn_implementation,
                              vllm_settings=cfg.rollout.vllm)
            for i in range(cfg.rollout.num_workers)]
        self.extrapolation = None
        if cfg.extrapolate is not None:
            from extrapolate.service import ExtrapolationService

            service_cls = ray.remote(num_cpus=0, runtime_env=env)(ExtrapolationService)
            self.extrapolation = RayExtrapolation(service_cls.remote(str(self.run_dir), cfg.extrapolate,
                                                                     cfg.run.checkpoint_every, str(model_dir)))
        try:  # start-up errors surface here; what started is stopped (the learner group's placement group too)
            ray.get([w.pid.remote() for w in self.workers] + [a.pid.remote() for a in self.learners.actors])
        except BaseException:
            self.close()
            raise
        self._step_count = 0
        self._adapter: tuple[str, str] | None = None  # (path, version) the workers sample with
        self._published = None  # the adapter write issued with the last train()

    @property
    def step_count(self) -> int:
        return self._step_count

    @property
    def learner(self):
        """The learner's rank 0 actor."""
        return self.learners.leader

    def generate_async(self, prompt_ids: list[list[int]], params: SamplingParams):
        """Start generation: prompts split into contiguous shards, one per worker, each with its own seed."""
        n = len(self.workers)
        bounds = [round(i * len(prompt_ids) / n) for i in range(n + 1)]
        futures = []
        for i, w in enumerate(self.workers):
            shard = prompt_ids[bounds[i]:bounds[i + 1]]
            if shard:
                shard_params = SamplingParams(**{**params.__dict__, "seed": params.seed + 7919 * i})
                futures.append((bounds[i], w.generate.remote(shard, shard_params, self._adapter)))
        return futures

    def collect(self, handle) -> list[list[Completion]]:
        import ray

        groups: list[list[Completion]] = []
        for offset, f in handle:  # (offset of the shard, its future) per worker
            for group in ray.get(f):
                for c in group:
                    c.prompt_index += offset
                groups.append(group)
        return groups

    def generate(self, prompt_ids: list[list[int]], params: SamplingParams) -> list[list[Completion]]:
        return self.collect(self.generate_async(prompt_ids, params))

    def generate_with(self, adapter_path: str, prompt_ids: list[list[int]], params: SamplingParams) -> list[list[Completion]]:
        """Sample a candidate adapter: the workers load it for this call only (the next generate names the
        policy's adapter again)."""
        current = self._adapter
        self._adapter = (str(adapter_path), f"candidate:{adapter_path}")
        try:
            return self.generate(prompt_ids, params)
        finally:
            self._adapter = current

    def mean_logprobs(self, prompt_ids: list[list[int]], completion_ids: list[list[int]],
                      adapter_path: str | None = None) -> list[float]:
        return self._learner("mean_logprobs", prompt_ids, completion_ids, adapter_path)

    def leap(self, adapter_path: str, horizon: int, reset_optimizer: bool) -> int:
        self._step_count = self._learner("apply_leap", str(adapter_path), horizon, reset_optimizer)
        return self._step_count

    def _learner(self, method: str, *args):
        """Call a learner method on the group (rank 0's answer); a rank's death becomes LearnerLost for the driver
        loop."""
        return self.learners.call(method, *args)

    def train(self, batch: RolloutBatch) -> dict:
        """One learner step; the adapter it produces is written in the same round trip (collected by publish)."""
        step = self.learners.submit("step", batch)
        self._published = self.learners.submit("publish_weights", str(self.adapters_dir))
        stats = self.learners.result(step)
        self._step_count += 1
        return stats

    def publish(self) -> str:
        """Make the learner's current adapter the rollout policy: the pointer file names it (for restarted workers)
        and every worker loads it before its next generation (the version travels with the generate call)."""
        from rollout.worker import write_adapter_pointer

        try:
            if self._published is not None:
                path, version = self.learners.result(self._published)
            else:
                path, version = self._learner("publish_weights", str(self.adapters_dir))
        finally:
            self._published = None
        write_adapter_pointer(self.pointer, path, version)
        self._adapter = (path, version)
        return version

    def checkpoint(self, meta: dict, extra: dict) -> Path:
        return Path(self._learner("save_checkpoint", self.run_dir, meta, extra))

    def resume(self, path: Path | None) -> dict:
        """Continue from a checkpoint (None: from the start); a group that lost a rank is started afresh first."""
        self._published = None  # a write issued before the learner died is void
        if self.learners.broken:
            self.learners.restart()
        state = self._learner("load_checkpoint", path) if path is not None else {"step": 0, "evals": []}
        self._step_count = state["step"]
        self.publish()
        return state

    def close(self) -> None:
        import ray

        for actor in [*self.workers, *([self.extrapolation.actor] if self.extrapolation else [])]:
            ray.kill(actor)
        self.learners.close()
