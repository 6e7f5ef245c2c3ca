"""`leapfrog serve`: the control plane on loopback, with its Redis and Ray.

Redis: REDIS_URL, or an embedded real Redis server (AOF) with its data in $LEAPFROG_HOME/redis. Ray: RAY_ADDRESS
(a Ray dashboard address, where the Jobs API lives), or a local Ray head started with deploy/ray-local.sh in its
own process group and temp dir. Whatever it started, it stops on exit.
"""

from __future__ import annotations

import os
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
    started = subprocess.run(["bash", str(script), "start"], env=env, capture_output=True, text=True, timeout=300)
    if started.returncode != 0:
        raise RuntimeError(f"could not start a local Ray head: {started.stderr.strip()}")
    try:
        yield f"http://127.0.0.1:{env.get('LEAPFROG_RAY_DASHBOARD_PORT', '8265')}"
    finally:
        subprocess.run(["bash", str(script), "stop"], env=env, capture_output=True, text=True, timeout=120)


@contextmanager
def control_plane():
    """(store, jobs, settings, redis_url) with Redis and Ray up; tears down what it started."""
    from services.jobs import RayJobs
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


def serve(host: str = "127.0.0.1", port: int = 8000) -> None:
    import uvicorn

    from services.api import create_app

    with control_plane() as (store, jobs, settings, url):
        app = create_app(store, jobs, settings)
        app.state.reconcile_all()
        print(f"Leapfrog control plane on http://{host}:{port} (dashboard /, API /v1, docs /docs); "
              f"Redis {url.rsplit('@', 1)[-1]}, Ray {jobs.address}", flush=True)
        uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=5)


def cmd_serve(args) -> int:
    serve(args.host, args.port)
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("serve", help="run the control plane (REST API + dashboard) with its Redis and Ray")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default loopback only)")
    p.add_argument("--port", type=int, default=8000)
    p.set_defaults(func=cmd_serve)
