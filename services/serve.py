"""`leapfrog serve`: the control plane on loopback, with its Redis and Ray.

Redis: REDIS_URL, or an embedded real Redis server (AOF) with its data in $LEAPFROG_HOME/redis. Ray: RAY_ADDRESS
(a Ray dashboard address, where the Jobs API lives), or a local Ray head started with deploy/ray-local.sh in its
own process group and temp dir. Whatever it started, it stops on exit, on SIGINT (Ctrl+C) and on SIGTERM (what
systemd, Docker, Kubernetes and `timeout` send), also while it is still starting. `--workers N` runs N uvicorn
worker processes over the same Redis (job state changes are atomic Lua on the server, whichever process sends
them).
"""

from __future__ import annotations

import os
import signal
import subprocess
from contextlib import contextmanager
from pathlib import Path

from learner.models import leapfrog_home

REPO = Path(__file__).resolve().parents[1]


def settings_from_env():
    from services.api import Settings

    runs_root = Path(os.environ.get("LEAPFROG_RUNS_ROOT", "runs")).expanduser().resolve()
    roots = os.environ.get("LEAPFROG_ALLOWED_ROOTS")
    allowed = [Path(p) for p in roots.split(":") if p] if roots else [runs_root, leapfrog_home(), Path.cwd()]
    return Settings(token=os.environ.get("LEAPFROG_API_TOKEN") or None, runs_root=runs_root, allowed_roots=allowed)


@contextmanager
def local_ray(env: dict):
    """A Ray head on loopback via deploy/ray-local.sh (stopped on exit); yields its dashboard address."""
    script = REPO / "deploy" / "ray-local.sh"
    if not script.is_file():
        raise RuntimeError("RAY_ADDRESS is unset and deploy/ray-local.sh is not here; point RAY_ADDRESS at a Ray "
                           "cluster's dashboard (http://HOST:8265)")
    pidfile = Path(env.get("LEAPFROG_RAY_TEMP", "/tmp/leapfrog-ray")) / "leapfrog-head.pgid"  # the script's record
    before = pidfile.read_text() if pidfile.is_file() else None  # a head already running is not ours to stop
    start = subprocess.Popen(["bash", str(script), "start"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    try:
        _, err = start.communicate(timeout=300)
        if start.returncode != 0:
            raise RuntimeError(f"could not start a local Ray head: {err.strip()}")
        yield f"http://127.0.0.1:{env.get('LEAPFROG_RAY_DASHBOARD_PORT', '8265')}"
    finally:  # also when interrupted while starting: the script records the head's process group first thing
        if pidfile.is_file() and pidfile.read_text() != before:
            subprocess.run(["bash", str(script), "stop"], env=env, capture_output=True, text=True, timeout=120)
        if start.poll() is None:  # a start script still waiting for the head: it exits once the head is gone
            try:
                start.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                start.kill()
                start.communicate()


@contextmanager
def control_plane():
    """(store, jobs, settings, redis_url) with Redis and Ray up; tears down what it started."""
    from services.ray_jobs import RayJobs
    from services.store import EmbeddedRedis, connect

    redis = None
    url = os.environ.get("REDIS_URL")
    if not url:
        redis = EmbeddedRedis(leapfrog_home() / "redis")
        url = redis.url
    try:
        address = os.environ.get("RAY_ADDRESS")
        if address:
            yield connect(url), RayJobs(address, url), settings_from_env(), url
        else:
            env = {**os.environ, "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "disabled")}
            with local_ray(env) as address:
                yield connect(url), RayJobs(address, url), settings_from_env(), url
    finally:
        if redis is not None:
            redis.stop()


def stop_on_signals() -> None:
    """SIGTERM and SIGINT raise SystemExit(128 + signal) in the main thread, so every `finally` runs and what
    `serve` started is stopped (Python's default for SIGTERM ends the process at once, leaving the embedded Redis
    and the Ray head running in their own sessions). uvicorn takes both signals over while it serves, shuts down
    gracefully and raises them again, which lands here. A repeated signal while stopping is ignored: stopping
    takes seconds."""

    def handler(signum, frame):
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_IGN)
        raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, handler)


def worker_app():
    """uvicorn's app factory for `--workers N`: each worker process builds its app over the Redis and Ray that
    `serve` started or was given (REDIS_URL, RAY_ADDRESS in its environment)."""
    from services.api import create_app
    from services.ray_jobs import RayJobs
    from services.store import connect

    url, address = os.environ["REDIS_URL"], os.environ["RAY_ADDRESS"]
    return create_app(connect(url), RayJobs(address, url), settings_from_env(), warm=True)


def serve(host: str = "127.0.0.1", port: int = 8000, workers: int = 1) -> None:
    import uvicorn

    from services.api import create_app
    from services.api.plane import Plane

    stop_on_signals()
    with control_plane() as (store, jobs, settings, url):
        Plane(store, jobs, settings).reconcile_all()  # jobs that ended or died while no control plane ran
        print(f"Leapfrog control plane on http://{host}:{port} (dashboard /, API /v1, docs /docs); "
              f"Redis {url.rsplit('@', 1)[-1]}, Ray {jobs.address}; {workers} worker(s)", flush=True)
        # access_log off: at log level warning its lines are never printed, yet each response would format one
        options = dict(host=host, port=port, log_level="warning", access_log=False, timeout_graceful_shutdown=5)
        if workers == 1:
            uvicorn.run(create_app(store, jobs, settings, warm=True), **options)
        else:
            os.environ.update(REDIS_URL=url, RAY_ADDRESS=jobs.address)  # read by worker_app in each worker
            uvicorn.run("services.serve:worker_app", factory=True, workers=workers, **options)


def cmd_serve(args) -> int:
    if args.workers < 1:
        raise ValueError(f"--workers must be at least 1 (got {args.workers})")
    serve(args.host, args.port, args.workers)
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("serve", help="run the control plane (REST API + dashboard) with its Redis and Ray")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default loopback only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--workers", type=int, default=int(os.environ.get("LEAPFROG_WORKERS", "1")),
                   help="uvicorn worker processes sharing the Redis (default 1, or LEAPFROG_WORKERS)")
    p.set_defaults(func=cmd_serve)
