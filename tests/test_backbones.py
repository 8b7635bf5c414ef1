import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from imagefolders import SAMPLE

from imgcluster.backbones import BACKBONES, create_backbone, resolve_model_name
from imgcluster.errors import ImgclusterError
from imgcluster.scoring import hungarian_accuracy


def test_registry_names() -> None:
    assert set(BACKBONES) == {"dinov2-vits14", "dinov2-vitb14", "dino-vits16", "clip-vitb16", "efficientnet-lite0"}


def test_unknown_model_lists_known() -> None:
    with pytest.raises(ImgclusterError, match="known models: auto, clip-vitb16"):
        resolve_model_name("resnet9000", None)


def test_auto_falls_back_offline_with_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("imgcluster.backbones._hub_cached", lambda name: False)
    name, warning = resolve_model_name("auto", None)
    assert name == "efficientnet-lite0"
    assert warning is not None and "dinov2-vits14" in warning


def test_explicit_online_model_never_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("imgcluster.backbones._hub_cached", lambda name: False)
    with pytest.raises(ImgclusterError, match=r"use model efficientnet-lite0 \(works offline\) or weights FILE"):
        create_backbone("dinov2-vits14")


def _features(model: torch.nn.Module, data_config: dict, classes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    from timm.data import create_transform

    from imgcluster.load import load_rgb

    transform = create_transform(**data_config)
    paths = [(p, i) for i, c in enumerate(classes) for p in sorted((SAMPLE / c).glob("*.png"))]
    x = torch.stack([transform(load_rgb(p)) for p, _ in paths])
    with torch.inference_mode():
        f = model(x).numpy()
    return f / np.linalg.norm(f, axis=1, keepdims=True), np.array([i for _, i in paths])


def _two_means_acc(f: np.ndarray, y: np.ndarray) -> float:
    from sklearn.cluster import KMeans

    return hungarian_accuracy(y, KMeans(2, n_init=5, random_state=0).fit_predict(f))


def _one_nn_acc(f: np.ndarray, y: np.ndarray) -> float:
    s = f @ f.T
    np.fill_diagonal(s, -np.inf)
    return float((y[s.argmax(1)] == y).mean())


def test_bundled_backbone_is_really_pretrained() -> None:
    """Ankle boots vs bags: pretrained features split them cleanly, random ones do not."""
    import timm

    pretrained = create_backbone("efficientnet-lite0")
    assert pretrained.feature_dim == 1280
    torch.manual_seed(0)
    random_model = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=0).eval()
    classes = ["ankle-boot", "bag"]
    fp, y = _features(pretrained.model, pretrained.data_config, classes)
    fr, _ = _features(random_model, pretrained.data_config, classes)
    assert _two_means_acc(fp, y) >= 0.96
    assert _two_means_acc(fr, y) <= 0.8
    assert _one_nn_acc(fp, y) > _one_nn_acc(fr, y)


def test_weights_file_round_trip(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    bundled = create_backbone("efficientnet-lite0")
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in bundled.model.state_dict().items()}, str(path))
    loaded = create_backbone("efficientnet-lite0", weights=str(path))
    assert loaded.weights_id.startswith("file:")
    x = torch.randn(2, 3, 224, 224)
    with torch.inference_mode():
        assert torch.allclose(loaded.model(x), bundled.model(x))


def test_weights_that_do_not_fit(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "w.safetensors"
    save_file({"foo.weight": torch.zeros(3)}, str(path))
    with pytest.raises(ImgclusterError, match="do not fit"):
        create_backbone("efficientnet-lite0", weights=str(path))
    with pytest.raises(ImgclusterError, match="not found"):
        create_backbone("efficientnet-lite0", weights=str(tmp_path / "missing.pth"))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"hello\n", "it is not a safetensors file or a PyTorch state dict"),
        (pickle.dumps({"a": object}, protocol=4), "holds Python objects besides tensors"),
    ],
)
def test_unreadable_weights_file_is_one_line(tmp_path: Path, content: bytes, message: str, recwarn: pytest.WarningsRecorder) -> None:
    path = tmp_path / "g.pth"
    path.write_bytes(content)
    with pytest.raises(ImgclusterError, match=message) as err:
        create_backbone("efficientnet-lite0", str(path))
    assert "\n" not in str(err.value) and "weights_only" not in str(err.value)
    assert not [w for w in recwarn if "pickle" in str(w.message)]  # torch's protocol note stays quiet


def test_vit_weights_at_another_resolution_are_resampled(tmp_path: Path) -> None:
    """DINOv2 checkpoints are 518 px; ``dinov2-vits14`` runs at 224 px, as timm's loader allows."""
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(0)
    published = timm.create_model("vit_small_patch14_dinov2.lvd142m", pretrained=False, num_classes=0)
    path = tmp_path / "dinov2.safetensors"
    save_file({k: v.contiguous() for k, v in published.state_dict().items()}, str(path))
    backbone = create_backbone("dinov2-vits14", weights=str(path))
    assert backbone.data_config["input_size"] == (3, 224, 224) and backbone.feature_dim == 384
    assert torch.equal(backbone.model.blocks[0].attn.qkv.weight, published.blocks[0].attn.qkv.weight)
    with torch.inference_mode():
        assert backbone.model(torch.randn(1, 3, 224, 224)).shape == (1, 384)


def test_hub_cache_is_looked_up_without_the_hub_client_when_empty(tmp_path: Path) -> None:
    import subprocess
    import sys

    code = (
        "import sys; from imgcluster.backbones import _hub_cached; "
        "print(_hub_cached('vit_small_patch14_dinov2.lvd142m'), 'huggingface_hub.file_download' in sys.modules)"
    )
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path)}

    def look() -> str:
        return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env).stdout.strip()

    assert look() == "False False"
    repo = tmp_path / "models--timm--vit_small_patch14_dinov2.lvd142m"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0123abcd")
    (repo / "snapshots" / "0123abcd").mkdir(parents=True)
    (repo / "snapshots" / "0123abcd" / "model.safetensors").write_bytes(b"weights")
    assert look() == "True True"  # there, the hub's client answers


@pytest.mark.parametrize("was_on", [True, False])
def test_the_model_is_built_with_the_collector_paused(monkeypatch: pytest.MonkeyPatch, was_on: bool) -> None:
    """Its full passes over the objects timm's import and the model make took 0.55 of 2.0 CPU s; it is on again after."""
    import gc

    import timm

    seen: list[bool] = []
    real = timm.create_model
    monkeypatch.setattr(timm, "create_model", lambda *a, **k: seen.append(gc.isenabled()) or real(*a, **k))
    (gc.enable if was_on else gc.disable)()
    try:
        create_backbone("efficientnet-lite0")
        assert seen == [False] and gc.isenabled() == was_on
        with pytest.raises(ImgclusterError):
            create_backbone("efficientnet-lite0", weights="/nonexistent.pth")
        assert gc.isenabled() == was_on
    finally:
        gc.enable()
