import subprocess
import sys

import torch

from imgcluster.adamw import AdamW


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.BatchNorm1d(5), torch.nn.ReLU(), torch.nn.Linear(5, 3))


def test_parameters_match_torch_adamw_bit_for_bit() -> None:
    ours, theirs = _model(), _model()
    groups = lambda m: [  # noqa: E731
        {"params": list(m[0].parameters()) + list(m[1].parameters()), "lr": 1e-2, "weight_decay": 1e-2},
        {"params": list(m[3].parameters()), "lr": 3e-2, "weight_decay": 0.0},
    ]
    mine, reference = AdamW(groups(ours)), torch.optim.AdamW(groups(theirs))
    x = torch.randn(50, 16, 6)
    for step in range(50):
        for model, opt in ((ours, mine), (theirs, reference)):
            opt.zero_grad()
            model(x[step]).pow(2).mean().backward()
            if step % 7 == 3:  # a parameter without a gradient this step keeps its state
                model[3].bias.grad = None
            opt.step()
    for a, b in zip(ours.parameters(), theirs.parameters(), strict=True):
        assert torch.equal(a, b)


def test_training_does_not_import_torch_compiler() -> None:
    """torch.optim's step imports torch._dynamo (about 900 modules) for nothing training uses."""
    code = (
        "import sys, numpy as np, torch\n"
        "from imgcluster.config import TrainConfig\n"
        "from imgcluster.train import train_objective\n"
        "x = np.random.default_rng(0).normal(size=(64, 8)).astype(np.float32)\n"
        "nn = np.random.default_rng(1).integers(0, 64, size=(64, 4))\n"
        "train_objective(x, nn, TrainConfig(clusters=2, epochs=1, batch_size=16, min_steps=0), torch.device('cpu'))\n"
        "print('torch._dynamo' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
