"""AdamW for the training loop, without torch.optim's import of its compiler.

``torch.optim``'s ``step`` imports ``torch._dynamo`` on first use (about 900 modules: 1.2 CPU-s,
and several seconds of wall time on a busy or cold disk) only to mark graph breaks for
``torch.compile``, which training never uses. This is the arithmetic of torch's single-tensor
AdamW (``amsgrad``, ``maximize`` and ``capturable`` off), op for op, so that parameters come out
bit for bit as torch's would on the CPU (tests/test_adamw.py compares them).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch

BETAS = (0.9, 0.999)  # torch.optim.AdamW's defaults
EPS = 1e-8


@dataclass
class _State:
    step: int = 0
    exp_avg: torch.Tensor = field(default_factory=lambda: torch.zeros(()))
    exp_avg_sq: torch.Tensor = field(default_factory=lambda: torch.zeros(()))


class AdamW:
    """Decoupled weight decay Adam over ``param_groups`` (dicts with ``params``, ``lr``, ``weight_decay``)."""

    def __init__(self, param_groups: Iterable[dict[str, Any]]) -> None:
        self.param_groups = [{**group, "params": list(group["params"])} for group in param_groups]
        self._state: dict[torch.Tensor, _State] = {}

    def zero_grad(self) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        beta1, beta2 = BETAS
        for group in self.param_groups:
            lr, weight_decay = float(group["lr"]), float(group["weight_decay"])
            for param in group["params"]:
                if param.grad is None:  # as torch: a parameter without a gradient keeps its state and step count
                    continue
                grad = param.grad
                state = self._state.get(param)
                if state is None:
                    state = self._state[param] = _State(
                        0, torch.zeros_like(param, memory_format=torch.preserve_format),
                        torch.zeros_like(param, memory_format=torch.preserve_format),
                    )  # fmt: skip
                state.step += 1
                if weight_decay != 0:
                    param.mul_(1 - lr * weight_decay)
                state.exp_avg.lerp_(grad, 1 - beta1)
                state.exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                bias_correction1 = 1 - beta1 ** float(state.step)
                bias_correction2 = 1 - beta2 ** float(state.step)
                step_size = lr / bias_correction1
                denom = (state.exp_avg_sq.sqrt() / bias_correction2**0.5).add_(EPS)
                param.addcdiv_(state.exp_avg, denom, value=-step_size)
