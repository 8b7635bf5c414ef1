"""Independent jobs run one after another in this process, or as Ray tasks: the one switch the
store's sample (:mod:`imgcluster.scale.sample`) and the partitioned kNN (:mod:`imgcluster.scale.knn`)
share.

A runner shares a large read-only array once (:meth:`share`: itself in process, ``ray.put`` on
Ray, so tasks receive a reference and read the object store's copy instead of a slice sent per
job) and maps a function over argument tuples, yielding results in the order they finish: the
callers' merges do not depend on that order.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol

import numpy as np

IN_FLIGHT = 8  # tasks submitted ahead of the consumer: bounds the results pending on the driver


class Tasks(Protocol):
    where: str  # for progress messages: where the jobs run

    def share(self, array: np.ndarray) -> tuple[Any, np.ndarray]:
        """(what to pass to the jobs, the array to go on using here) for a read-only ``array``."""
        ...

    def map(self, fn: Callable[..., Any], jobs: Iterable[tuple[Any, ...]]) -> Iterator[Any]:
        """``fn(*job)`` for every job, in the order they finish."""
        ...


class LocalTasks:
    """The jobs one after another in this process: the reference the Ray runner is tested against."""

    where = "in this process"

    def share(self, array: np.ndarray) -> tuple[Any, np.ndarray]:
        return array, array

    def map(self, fn: Callable[..., Any], jobs: Iterable[tuple[Any, ...]]) -> Iterator[Any]:
        for job in jobs:
            yield fn(*job)


class RayTasks:
    """One Ray task per job (``num_cpus`` each, retried ``max_retries`` times, at most ``in_flight``
    ahead of the consumer); Ray must be initialised (:func:`imgcluster.scale.engine.ray_session`)."""

    where = "as Ray tasks"

    def __init__(self, in_flight: int = IN_FLIGHT, num_cpus: float = 1, max_retries: int = 3) -> None:
        self.in_flight = in_flight
        self.num_cpus = num_cpus
        self.max_retries = max_retries

    def share(self, array: np.ndarray) -> tuple[Any, np.ndarray]:
        """The array goes into the object store once; the driver keeps the store's zero-copy view
        of it, not a heap copy besides (the caller's own reference, if any, stays the caller's)."""
        import ray

        ref = ray.put(array)
        return ref, ray.get(ref)

    def map(self, fn: Callable[..., Any], jobs: Iterable[tuple[Any, ...]]) -> Iterator[Any]:
        import ray

        task = ray.remote(num_cpus=self.num_cpus, max_retries=self.max_retries)(fn)
        pending: list[Any] = []
        try:
            for job in jobs:
                pending.append(task.remote(*job))
                while len(pending) >= self.in_flight:
                    done, pending = ray.wait(pending, num_returns=1)
                    yield ray.get(done[0])
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                yield ray.get(done[0])
        finally:
            for ref in pending:  # stopped early (an error, Ctrl-C): what is still queued is not wanted
                with contextlib.suppress(Exception):  # Ray already shut down: nothing left to cancel
                    ray.cancel(ref)


local_tasks = LocalTasks()
