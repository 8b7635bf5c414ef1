import numpy as np
import pytest
import torch

from imgcluster.config import TrainConfig
from imgcluster.errors import ImgclusterError
from imgcluster.neighbours import knn_search
from imgcluster.scoring import hungarian_accuracy
from imgcluster.train import effective_schedule, train_objective


def blobs(k: int = 4, n: int = 100, d: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, d)) * 3
    labels = np.repeat(np.arange(k), n)
    return (centres[labels] + rng.normal(size=(k * n, d))).astype(np.float32), labels


def test_scan_recovers_blobs_deterministically() -> None:
    x, y = blobs()
    nn, _ = knn_search(x, 10)
    config = TrainConfig(objective="scan", clusters=4, epochs=10, batch_size=128, knn=10, seed=3)
    a = train_objective(x, nn, config, torch.device("cpu"))
    b = train_objective(x, nn, config, torch.device("cpu"))
    z = torch.from_numpy(x / np.linalg.norm(x, axis=1, keepdims=True))
    pa, pb = a.objective.predict(z), b.objective.predict(z)
    assert torch.equal(pa, pb)
    assert hungarian_accuracy(y, pa.argmax(1).numpy()) > 0.95
    assert a.empty_clusters == 0
    assert len(a.history) >= 10 and all(np.isfinite(h.loss) for h in a.history)


def test_scan_self_label_stage_runs() -> None:
    x, y = blobs(k=3, n=60)
    nn, _ = knn_search(x, 10)
    config = TrainConfig(objective="scan", clusters=3, epochs=5, knn=10, objective_options={"self_label_epochs": 3})
    r = train_objective(x, nn, config, torch.device("cpu"))
    assert [h.stage for h in r.history][-3:] == ["self-label"] * 3
    z = torch.from_numpy(x / np.linalg.norm(x, axis=1, keepdims=True))
    assert hungarian_accuracy(y, r.objective.predict(z).argmax(1).numpy()) > 0.95


def test_too_many_clusters_is_a_clear_error() -> None:
    x, _ = blobs(k=2, n=3)
    nn, _ = knn_search(x, 2)
    with pytest.raises(ImgclusterError, match="larger than the number of images"):
        train_objective(x, nn, TrainConfig(clusters=10), torch.device("cpu"))


def test_unknown_objective_lists_known_names() -> None:
    x, _ = blobs(k=2, n=10)
    nn, _ = knn_search(x, 2)
    with pytest.raises(ImgclusterError, match=r"known objectives: .*scan"):
        train_objective(x, nn, TrainConfig(objective="nope", clusters=2), torch.device("cpu"))


def test_small_folders_get_enough_steps() -> None:
    batch, epochs = effective_schedule(125, TrainConfig())
    assert batch <= 32 and epochs * (125 // batch) >= TrainConfig().min_steps
    assert effective_schedule(10_000, TrainConfig()) == (512, 30)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_scan_trains_on_gpu() -> None:
    x, y = blobs()
    nn, _ = knn_search(x, 10)
    r = train_objective(x, nn, TrainConfig(objective="scan", clusters=4, epochs=5, knn=10), torch.device("cuda"))
    z = torch.from_numpy(x / np.linalg.norm(x, axis=1, keepdims=True)).cuda()
    assert hungarian_accuracy(y, r.objective.predict(z).argmax(1).cpu().numpy()) > 0.9
