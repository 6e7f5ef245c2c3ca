"""The event loop and thread pool that run user code concurrently (reward functions, tools, environments): one
daemon thread runs the loop (as TRL's trainer does for async reward functions and tools) and sync callables go to
the thread pool; both are started on first use and shared by the process."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

_loop: asyncio.AbstractEventLoop | None = None
_threads: ThreadPoolExecutor | None = None
_lock = threading.Lock()


def background() -> tuple[asyncio.AbstractEventLoop, ThreadPoolExecutor]:
    """The shared event loop (running in a daemon thread) and thread pool."""
    global _loop, _threads
    with _lock:
        if _loop is None:
            _loop = asyncio.new_event_loop()
            threading.Thread(target=_loop.run_forever, name="leapfrog-loop", daemon=True).start()
            _threads = ThreadPoolExecutor(max_workers=16, thread_name_prefix="leapfrog-user-code")
        return _loop, _threads
