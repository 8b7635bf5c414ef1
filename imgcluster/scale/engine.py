"""The one door to Ray: its lazy import and the session a job runs in.

Ray is an optional extra (``pip install 'imgcluster[ray]'``); nothing outside ``imgcluster.scale``
imports it, and this module imports it only when a session is asked for, so the rest of the
package works, and fails with one actionable line, without it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Iterator
from types import ModuleType
from typing import Any

from imgcluster.errors import ImgclusterError
from imgcluster.signals import STOP_SIGNALS

RAY_MISSING = "the Ray engine needs the 'ray' extra: pip install 'imgcluster[ray]'"

# A local instance's shared-memory object store. Ray's default is 30 % of the machine's memory,
# which crowds out the embedding processes on a small machine; decoded batches are uint8 and
# consumed as they come (a batch of 256 images of 224x224 is 38 MB), so a fixed gigabyte is ample.
LOCAL_OBJECT_STORE_BYTES = 1 << 30
# The start of ray.init's error for "auto" when no cluster runs here.
NO_CLUSTER = "Could not find any running Ray instance"
# How long to wait for a TCP answer from a cluster's address before ``ray.init`` is let near it.
PROBE_SECONDS = 10.0
# A resource no node has: an actor that asks for it is never scheduled (see _spend_restart_notice).
NEVER_SCHEDULED = "imgcluster-never-scheduled"


def import_ray() -> ModuleType:
    """``ray`` (with Ray Data), or an ImgclusterError naming the extra to install."""
    try:
        import ray
        import ray.data  # the extra's other half: ray without [data] cannot run a job
    except ImportError:
        raise ImgclusterError(RAY_MISSING) from None
    return ray


def require_ray() -> None:
    """Fail early, without importing it, when the extra is missing: before a model is built for nothing."""
    import importlib.util
    import sys

    for name in ("ray", "pyarrow"):
        try:
            found = sys.modules.get(name, True) is not None and importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):  # ValueError: a module set to None in sys.modules (blocked)
            found = False
        if not found:
            raise ImgclusterError(RAY_MISSING)


def _unreachable(address: str) -> str | None:
    """Why nothing answers at ``[ray://]host:port`` (None when something does, or the address is no
    host:port): ``ray.init`` retries a dead address for minutes, printing its own log lines, where
    one connection attempt says in seconds that nobody listens there."""
    host, sep, port = address.split("://", 1)[-1].rpartition(":")
    if not sep or not host or not port.isdigit():
        return None  # "auto", or something Ray itself will refuse with its own reason
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=PROBE_SECONDS):
            return None
    except OSError as exc:
        return f"nothing answers at {host}:{port} ({exc.strerror or str(exc) or type(exc).__name__})"


def _python_signal_handlers() -> dict[int, Any]:
    """The Python handlers of SIGINT, SIGTERM and SIGHUP (the CLI turns the last two into interrupts), to put
    back after ``ray.init``: its C++ core worker installs a handler that aborts on SIGTERM, so a
    stopped job would die with signal 6 instead of saying what it kept."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    found = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, *STOP_SIGNALS)}
    return {signum: handler for signum, handler in found.items() if handler is not None}


def _quiet_ray_loggers() -> None:
    """The library never prints: Ray's loggers write their start, progress and notes to the
    console; only errors stay on it (Ray's own log files keep everything)."""
    for name in ("ray", "ray.data"):
        for handler in logging.getLogger(name).handlers:
            if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
                handler.setLevel(logging.ERROR)


def _spend_restart_notice(ray: ModuleType) -> None:
    """Keep a notice of Ray's off the terminal. Ray's core worker logs, at ERROR and once a process,
    that an actor whose constructor arguments are object references may fail to restart; every
    Ray Data actor pool that may restart (the embed job's, the store's assign pass) is such an actor,
    since Ray Data passes its own context and transformer by reference, and holds them for the
    pool's life, so its restarts work (ray-project/ray#57733; tests/scale/test_embed_job.py kills an
    actor). The driver printed it as ``[date E pid tid] core_worker.cc:2465: Actor with class name:
    'MapWorker(MapBatches(EmbedActor))' ...`` amid imgcluster's lines. Ray's logging has no switch
    for it: ``RAY_BACKEND_LOG_LEVEL`` prints a line of its own and silences every C++ log. So this
    process spends its one notice on an actor that is never scheduled, with its standard error
    pointed at the null device for that call alone; the notice stays in Ray's log of this driver
    (``python-core-driver-*.log`` in the session's log folder), and any later error still shows."""

    class _Notice:
        def __init__(self, argument: object) -> None:
            pass

    notice = ray.remote(max_restarts=1, num_cpus=0, resources={NEVER_SCHEDULED: 1})(_Notice)

    argument = ray.put(None)  # an argument by reference: what the notice is about
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as sink:
            os.dup2(sink.fileno(), 2)
            try:
                actor = notice.remote(argument)
            finally:
                os.dup2(saved, 2)
    finally:
        os.close(saved)
    ray.kill(actor)


@contextlib.contextmanager
def ray_session(address: str | None, num_cpus: int | None = None) -> Iterator[None]:
    """Connect to the cluster at ``address`` (``"auto"``, ``"host:port"``, ``"ray://host:port"``),
    or start a local instance when it is None; end only what was started here.

    A Ray already initialised in this process (a caller's own ``ray.init``) is used as it is and
    left running. A local instance has no dashboard and a small fixed object store; ``num_cpus``
    caps the cores it uses (default: all). Token authentication follows ``RAY_AUTH_MODE`` as Ray
    reads it (unset: Ray turns it on for a new local instance and keeps the token in
    ``~/.ray/auth_token``); connecting to a cluster needs that cluster's token in the environment.
    """
    ray = import_ray()
    _quiet_ray_loggers()
    if ray.is_initialized():
        yield
        return
    kwargs: dict[str, object] = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.ERROR}
    if address is None:  # "local": a new instance even where `ray start` runs one that ray.init() would join
        kwargs.update(address="local", num_cpus=num_cpus, object_store_memory=LOCAL_OBJECT_STORE_BYTES)
    else:
        why = _unreachable(address)
        if why is not None:
            raise ImgclusterError(f"cannot connect to the Ray cluster at {address}: {why}")
        kwargs["address"] = address
    handlers = _python_signal_handlers()
    try:
        ray.init(**kwargs)
    except (ConnectionError, RuntimeError, ValueError, TimeoutError) as exc:
        where = f"the Ray cluster at {address}" if address else "a local Ray instance"
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if address == "auto" and detail.startswith(NO_CLUSTER):  # Ray's advice names its own `--address` flag
            detail = "no Ray cluster runs on this machine (`ray start` starts one; without {address} a local Ray is started)"
        raise ImgclusterError(f"cannot connect to {where}: {detail}") from None
    for signum, handler in handlers.items():  # Ray's core worker took SIGTERM over (it aborts the process): give it back
        signal.signal(signum, handler)
    try:
        _spend_restart_notice(ray)
        yield
    finally:
        ray.shutdown()


def imgcluster_cause(exc: BaseException) -> ImgclusterError | None:
    """The ImgclusterError a Ray task or actor raised, as a fresh one in its own words (Ray wraps it
    with the task's traceback and Ray Data appends its retry advice); None for any other error."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ImgclusterError) and type(cause).__module__.startswith("imgcluster"):
            fresh = type(cause)(cause.template)
            fresh.parameters = cause.parameters
            return fresh
        cause = getattr(cause, "cause", None) or cause.__cause__
    return None


@contextlib.contextmanager
def own_errors() -> Iterator[None]:
    """Around a Ray step: an ImgclusterError raised in a task or actor (a manifest's bad column, a store
    row the assign pass refuses) surfaces as itself, in its one line (:func:`imgcluster_cause`), not as
    Ray's wrapper with the task's traceback; any other error as it is."""
    try:
        yield
    except Exception as exc:
        if (ours := imgcluster_cause(exc)) is not None:
            raise ours from None
        raise


@contextlib.contextmanager
def quiet_data_context() -> Iterator[Any]:
    """Ray Data's context for this package's jobs (the embed job, the store's assign pass): no
    progress bars (the library never prints), Python errors in actor tasks retried, and raised as
    themselves, not wrapped in Ray Data's ``UserCodeException``, which loses the error it wraps on
    its way to the driver (:func:`imgcluster_cause` finds an ImgclusterError). Put back as it was
    afterwards."""
    from ray.data import DataContext

    ctx = DataContext.get_current()
    changes = {
        "enable_progress_bars": False, "actor_task_retry_on_errors": True, "print_on_execution_start": False,
        "raise_original_map_exception": True,
    }  # fmt: skip
    saved = {k: getattr(ctx, k) for k in changes if hasattr(ctx, k)}
    for k, v in changes.items():
        if hasattr(ctx, k):
            setattr(ctx, k, v)
    try:
        yield ctx
    finally:
        for k, v in saved.items():
            setattr(ctx, k, v)
