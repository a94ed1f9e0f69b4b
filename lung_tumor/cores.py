"""The CPU cores this process may use, and running a task in the calling thread where one core is all there is."""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any


def available_cores() -> int:
    """The CPU cores this process may run on (its affinity mask, as a container or ``taskset`` sets it)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class InThisThread:
    """An executor with no thread of its own: ``submit`` runs the task at once in the calling thread and returns its
    finished future (the steps of a report that keeps to one thread, in the order they are submitted)."""

    def submit(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Future:
        future: Future = Future()
        try:
            future.set_result(function(*args, **kwargs))
        except BaseException as err:  # noqa: BLE001 (raised again by future.result(), as a pool's would be)
            future.set_exception(err)
        return future

    def __enter__(self) -> InThisThread:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def thread_count(workers: int | None) -> int:
    """Threads for ``workers`` (``None``: the cores this process may use), at least one."""
    return max(1, available_cores() if workers is None else workers)


def executor(threads: int) -> ThreadPoolExecutor | InThisThread:
    """A pool of ``threads`` threads, or for one thread the calling thread itself (:class:`InThisThread`)."""
    return ThreadPoolExecutor(max_workers=threads) if threads > 1 else InThisThread()


def network_threads(requested: int | None, processes: int = 1, busy_workers: int = 0) -> int:
    """Intra-op threads for a process's network on a CPU: ``requested`` when given; else the cores this process
    may use shared among the ``processes`` training processes of this machine, less one core for each loader
    worker that keeps one busy the whole time (a worker making synthetic cases); at least one.

    Two compute threads on two cores beside a busy worker contend for a core and wait for each other at every
    operation; one thread then trains faster than two.
    """
    if requested is not None:
        return int(requested)
    return max(1, available_cores() // max(1, processes) - busy_workers)
