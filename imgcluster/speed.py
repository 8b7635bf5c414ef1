"""Inference-only speed-ups for the backbone and the decode workers.

Everything here is exact up to float rounding: folded models are checked against the original on
a probe input and dropped when they disagree, so a speed-up can never change which features a
model produces beyond the last few bits.
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import ctypes.util
import functools
import gc
import itertools
import os
from collections.abc import Iterator

import torch
from torch import nn

from imgcluster.signals import leave_hangup_to_parent

FOLD_TOLERANCE = 1e-3  # max |folded - original| relative to max |original| on the probe input


def fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """Fold eval-mode batch norm into the convolution before it: ``bn(conv(x)) == conv'(x)``."""
    mean, var = bn.running_mean, bn.running_var
    assert mean is not None and var is not None, "only norms with running statistics fold"
    scale = 1.0 / torch.sqrt(var + bn.eps)
    if bn.affine:
        scale = bn.weight.detach() * scale
    shift = bn.bias.detach() if bn.affine else torch.zeros_like(mean)
    weight = conv.weight.detach() * scale.reshape(-1, 1, 1, 1)
    bias = conv.bias.detach() if conv.bias is not None else torch.zeros_like(mean)
    conv.weight = nn.Parameter(weight, requires_grad=False)
    conv.bias = nn.Parameter((bias - mean) * scale + shift, requires_grad=False)


def _after_bn(bn: nn.Module) -> nn.Module:
    """What is left of a norm layer once its affine transform lives in the conv: timm's
    ``BatchNormAct2d`` keeps its dropout and activation, a plain ``BatchNorm2d`` becomes nothing."""
    rest = [m for name in ("drop", "act") if isinstance(m := getattr(bn, name, None), nn.Module) and not isinstance(m, nn.Identity)]
    if not rest:
        return nn.Identity()
    return rest[0] if len(rest) == 1 else nn.Sequential(*rest)


def _foldable(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> bool:
    return (
        bn.track_running_stats
        and bn.running_mean is not None
        and bn.running_var is not None
        and bn.num_features == conv.out_channels
    )


def _fold_in_place(model: nn.Module) -> int:
    """Fold every conv whose next sibling module is its batch norm; returns how many were folded.

    Sibling order is only registration order, not necessarily call order, which is why
    :func:`fold_batchnorm` checks the result numerically.
    """
    folded = 0
    for parent in list(model.modules()):
        children = list(parent.named_children())
        for (_, conv), (bn_name, bn) in itertools.pairwise(children):
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and _foldable(conv, bn):
                fold_conv_bn(conv, bn)
                setattr(parent, bn_name, _after_bn(bn))
                folded += 1
    return folded


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.BatchNorm2d) for m in model.modules())


@torch.no_grad()  # not inference_mode: folded weights made as inference tensors break single-thread CPU convs
def fold_batchnorm(model: nn.Module, probe: torch.Tensor) -> nn.Module:
    """A copy of eval-mode ``model`` with batch norms folded into their convolutions, or ``model``.

    Batch norm was 28% of EfficientNet-Lite0's CPU forward time (torch profiler, batch 64), and
    folding removes it. The copy is returned only when it matches ``model`` on ``probe``; models
    without batch norm (ViTs) come back unchanged and uncopied.
    """
    if model.training or not has_batchnorm(model):
        return model
    fast = copy.deepcopy(model)
    if _fold_in_place(fast) == 0:
        return model
    expected = model(probe)
    got = fast(probe)
    scale = float(expected.abs().max()) or 1.0
    if got.shape != expected.shape or float((got - expected).abs().max()) > FOLD_TOLERANCE * scale:
        return model
    return fast


def worker_threads_init(worker_id: int) -> None:
    """Decode workers run one torch thread each: their tensor work is tiny, and N workers with
    ``cpu_count`` threads each would fight the model's threads for the same cores. A hangup is
    left to the main process, which saves what is finished before it ends them."""
    torch.set_num_threads(1)
    leave_hangup_to_parent()


@contextlib.contextmanager
def cpu_threads(workers: int) -> Iterator[int]:
    """Torch threads for the model while ``workers`` decode processes run beside it.

    The model gets every core but the ones decode workers keep busy. A worker decoding small
    images idles most of the time, so only workers beyond the first count against the model
    (at least one thread always stays). The previous setting is restored on exit.
    """
    previous = torch.get_num_threads()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    threads = max(1, min(previous, cores - max(0, workers - 1)))
    torch.set_num_threads(threads)
    try:
        yield threads
    finally:
        torch.set_num_threads(previous)


@contextlib.contextmanager
def collections_paused() -> Iterator[None]:
    """Python's cyclic garbage collector off while the block runs, and on again after if it was on.

    Importing timm and building a model make a few hundred thousand objects that all live on, and
    each of the collector's full passes while they are made walks every one of them (torch's
    included): 0.55 of the 2.0 CPU seconds of building EfficientNet-Lite0 with timm's import
    (``benchmarks/results_runtime.md``). No garbage with cycles worth collecting is made meanwhile.
    """
    was_on = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_on:
            gc.enable()


# glibc's mallopt parameters (malloc.h) and their defaults, which ``reuse_freed_memory`` restores.
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
DEFAULT_TRIM_THRESHOLD, DEFAULT_MMAP_MAX = 128 * 1024, 65536
NO_TRIM = -1  # mallopt(3): a trim threshold of -1 turns trimming off


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    """The C library when it is glibc (the one with ``mallopt``), else None (musl, macOS, Windows).

    Looked up once: ``find_library`` runs ``ldconfig -p`` in a child process, and a cold ``assign``
    forked its 0.9 GB process for it three times.
    """
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    if libc is None or not hasattr(libc, "mallopt") or not hasattr(libc, "gnu_get_libc_version"):
        return None
    return libc


@contextlib.contextmanager
def reuse_freed_memory() -> Iterator[bool]:
    """Keep freed memory in the process while the block runs, so large buffers are reused.

    glibc serves every block over 32 MB with a fresh ``mmap`` and unmaps it on ``free``. A CPU
    forward pass of a batch of 64 allocates activations of ~100 MB each, so every pass
    page-faulted gigabytes of new, zeroed memory: 15 million minor faults and half of the CPU time
    in the kernel for 2,000 Fashion-MNIST images (``benchmarks/results_peers.md``). With ``mmap``
    off and trimming deferred, the heap is allocated once and reused; on exit the defaults come
    back and ``malloc_trim`` hands the unused heap back to the system. Yields whether this took
    effect (False where the C library is not glibc).
    """
    libc = _glibc()
    if libc is None:
        yield False
        return
    libc.mallopt(M_MMAP_MAX, 0)
    libc.mallopt(M_TRIM_THRESHOLD, NO_TRIM)
    try:
        yield True
    finally:
        libc.mallopt(M_MMAP_MAX, DEFAULT_MMAP_MAX)
        libc.mallopt(M_TRIM_THRESHOLD, DEFAULT_TRIM_THRESHOLD)
        libc.malloc_trim(0)
