"""ClusterHead: scikit-learn's own estimator checks, K chosen automatically, checkpoints."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.utils.estimator_checks import parametrize_with_checks

from imgcluster import ClusterHead, ParameterError
from imgcluster.progress import Event

FAST = {"epochs": 3, "device": "cpu", "hidden": 32}

ONE_CLUSTER = (
    "sets n_clusters=1, and a head needs at least two clusters: one is no clustering, and the objectives' losses "
    "(balance terms, contrast between clusters) are undefined for it; n_clusters=1 is refused with a ParameterError"
)
# Checks that cannot apply, each with the reason.
SKIPPED = {name: ONE_CLUSTER for name in ("check_dont_overwrite_parameters", "check_fit2d_predict1d", "check_methods_subset_invariance")}
WITH_OPTIONS_SKIPPED = {
    **SKIPPED,
    "check_no_attributes_set_in_init": "an objective option (hidden=32) is a keyword argument (**objective_options), kept as an "
    "attribute of its own so that get_params/clone see it; the check knows only the names in __init__'s signature",
}


def blobs(n_per: int = 30, k: int = 3, d: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Well separated groups of directions: what image features of k kinds look like to a head."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, d))
    labels = np.repeat(np.arange(k), n_per)
    return (centres[labels] + 0.05 * rng.normal(size=(k * n_per, d))).astype(np.float32), labels


@parametrize_with_checks(
    [ClusterHead("secu", n_clusters=3, epochs=2, device="cpu"), ClusterHead("secu", n_clusters=3, **FAST)],
    expected_failed_checks=lambda head: WITH_OPTIONS_SKIPPED if head.get_params().get("hidden") else SKIPPED,  # type: ignore[attr-defined]
)
def test_scikit_learn_checks(estimator: ClusterHead, check: object) -> None:
    check(estimator)  # type: ignore[operator]


def test_auto_chooses_k_and_records_why() -> None:
    x, _ = blobs(n_per=40, k=4)
    events: list[Event] = []
    head = ClusterHead(n_clusters="auto", k_max=8, **FAST).fit(x, progress=events.append)
    assert head.n_clusters_ == 4 and head.choose_k_ is not None and head.choose_k_["k"] == 4
    assert any(e.stage == "choose_k" and str(e).startswith("n_clusters auto chose K=4") for e in events)
    said = [str(e) for e in events if e.kind == "info"]  # each slow phase says what it does as it starts
    assert said.index("choosing K between 2 and 8 ...") < said.index("finding the 20 nearest neighbours of each of 160 images ...")
    assert said.index("finding the 20 nearest neighbours of each of 160 images ...") < said.index("training secu (K=4) ...")
    assert {e.kind for e in events if e.stage == "train"} >= {"start", "advance", "info"}
    assert head.predict_proba(x).shape == (160, 4)


def test_training_reports_progress_from_its_start() -> None:
    """The bar starts before the first step and moves within the first epoch; epoch ends carry the loss line."""
    x, _ = blobs(n_per=40, k=4)  # 160 images: batches of 40, 4 steps an epoch
    events: list[Event] = []
    ClusterHead(n_clusters=4, epochs=2, device="cpu").fit(x, progress=events.append)
    said = [str(e) for e in events if e.kind == "info"]
    assert said[:2] == ["finding the 20 nearest neighbours of each of 160 images ...", "training secu (K=4) ..."]
    train = [e for e in events if e.stage == "train" and e.kind in ("start", "advance")]
    start, first = train[0], train[1]
    assert start.kind == "start" and str(start) == "training secu" and start.total == 4 * 2
    assert first.kind == "advance" and first.done == 1 and not first.message  # one step, before the first epoch ends
    ends = [e for e in train if e.kind == "advance" and e.message]
    assert [e.done for e in ends] == [4, 8] and str(ends[0]).startswith("epoch 1/2 [train] loss ")
    assert ends[0].status.startswith("loss ") and train[-1].done == train[-1].total == 8
    dones = [e.done for e in train[1:]]
    assert dones == sorted(dones) and all(e.total == 8 for e in train)


def test_save_and_load_give_the_same_predictions(tmp_path: Path) -> None:
    x, _ = blobs()
    head = ClusterHead("scan", n_clusters=3, **FAST).fit(x)
    head.save(tmp_path / "head.safetensors")
    loaded = ClusterHead.load(tmp_path / "head.safetensors", device="cpu")
    assert loaded.get_params()["hidden"] == 32 and loaded.objective == "scan" and loaded.n_clusters_ == 3
    assert np.array_equal(loaded.predict(x), head.predict(x))
    assert np.allclose(loaded.predict_proba(x), head.predict_proba(x))
    assert clone(loaded).train_config() == head.train_config_  # refitting a loaded head trains as it was trained (epochs=3)


def test_objective_options_are_parameters() -> None:
    head = ClusterHead("scan", n_clusters=3, entropy_weight=3.0)
    assert head.get_params()["entropy_weight"] == 3.0
    copy = clone(head).set_params(entropy_weight=1.0)
    assert copy.get_params()["entropy_weight"] == 1.0 and head.get_params()["entropy_weight"] == 3.0
    assert copy.train_config().objective_options == {"entropy_weight": 1.0}


def test_set_params_refuses_an_unknown_name_at_once() -> None:
    """``set_params(foo=1)`` was accepted and failed only in ``fit``; scikit-learn's own raises a ValueError at once."""
    head = ClusterHead("secu", n_clusters=3)
    with pytest.raises(ValueError) as info:
        head.set_params(n_clusters=4, foo=1)
    assert isinstance(info.value, ParameterError) and info.value.parameters == ("foo",)
    assert str(info.value).startswith("ClusterHead has no parameter 'foo'; its parameters: objective, n_clusters, seed, ")
    assert "; the options of objective 'secu': " in str(info.value) and "hidden" in str(info.value)
    assert head.n_clusters == 3 and "foo" not in head.get_params()  # nothing set
    with pytest.raises(ParameterError, match=r"^ClusterHead has no parameter 'hidden'; .*; 'nope' is no objective$"):
        head.set_params(objective="nope", hidden=64)


def test_set_params_takes_the_options_of_the_objective_it_sets() -> None:
    head = ClusterHead("secu", n_clusters=3).set_params(objective="scan", entropy_weight=2.0)
    assert head.get_params()["entropy_weight"] == 2.0 and head.objective == "scan"
    head.set_params(objective="nope", n_clusters=-1)  # values, even unknown objectives, are fit's to check
    with pytest.raises(ParameterError, match=r"^n_clusters must be at least 2, got -1$"):
        head.fit(blobs()[0])


@pytest.mark.parametrize(
    ("params", "message", "parameter"),
    [
        ({"n_clusters": 1}, "n_clusters must be at least 2, got 1", "n_clusters"),
        ({"n_clusters": "many"}, "n_clusters takes a whole number or 'auto'", "n_clusters"),
        ({"objective": "nope"}, "unknown objective 'nope'", "objective"),
        ({"bogus": 1}, "has no option bogus", "objective_options"),
        ({"lr": 0}, "lr must be above 0, got 0", "lr"),
        ({"n_clusters": 40}, "n_clusters 40 is larger than the number of images (30)", "n_clusters"),
    ],
)
def test_bad_parameters_are_named(params: dict, message: str, parameter: str) -> None:
    x, _ = blobs(n_per=10)
    with pytest.raises(ParameterError, match=re.escape(message)) as info:
        ClusterHead(**{**FAST, **params}).fit(x)
    assert info.value.parameters == (parameter,)


def test_numpy_integers_are_whole_numbers() -> None:
    """A grid search hands parameters over as numpy integers."""
    x, _ = blobs()
    head = ClusterHead(n_clusters=np.int64(3), batch_size=np.int64(16), epochs=np.int64(2), knn=np.int32(5), device="cpu").fit(x)
    assert head.n_clusters_ == 3 and head.train_config_.batch_size == 16 and type(head.train_config_.batch_size) is int


@pytest.mark.parametrize("failure", ["interrupted", "refused"])
def test_a_refit_that_fails_keeps_the_fitted_head(failure: str) -> None:
    """Ctrl-C inside fit (or a refused refit) on new, wider features leaves the head that was fitted, usable as it was."""
    x, _ = blobs()
    head = ClusterHead(n_clusters=3, **FAST).fit(x)
    labels, wider = head.predict(x), np.hstack([x, x])

    def interrupt(event: Event) -> None:
        if event.stage == "train":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt if failure == "interrupted" else ParameterError):
        if failure == "interrupted":
            head.fit(wider, progress=interrupt)
        else:
            head.set_params(n_clusters=len(x) + 1).fit(wider)
    assert head.n_features_in_ == x.shape[1] and head.n_clusters_ == 3
    assert np.array_equal(head.predict(x), labels)


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (np.full((4, 16), np.nan, np.float32), "Input X contains NaN."),
        (np.ones((4, 15), np.float32), "X has 15 features, but ClusterHead is expecting 16 features as input."),
        (np.ones(16, np.float32), "X: Expected 2D array, got 1D array instead"),
        (np.zeros((0, 16), np.float32), "X: Found array with 0 sample(s) (shape=(0, 16)) while a minimum of 1 is required by ClusterHead."),
    ],
)
def test_features_scikit_learn_refuses_are_a_parameter_error_naming_x(rows: np.ndarray, message: str) -> None:
    """One line naming X, caught by ``except ImgclusterError`` (a bare ValueError, with a paragraph on HistGradientBoosting, was not)."""
    x, _ = blobs()
    head = ClusterHead(n_clusters=3, **FAST).fit(x)
    with pytest.raises(ParameterError) as info:
        head.predict(rows)
    assert str(info.value) == message and info.value.parameters == ("X",)
    if rows.ndim == 1 or np.isnan(rows).any():  # fit sees the same check (a row count or width of its own is no mistake)
        with pytest.raises(ParameterError, match=re.escape(message)):
            ClusterHead(n_clusters=3, **FAST).fit(rows)


@pytest.mark.parametrize("name", ["head", "head.pt", "head.json"])
def test_save_refuses_a_name_load_cannot_read(tmp_path: Path, name: str) -> None:
    """Saved as head.pt or head, load refused it; as head.json, the description overwrote the weights."""
    head = ClusterHead(n_clusters=3, **FAST).fit(blobs()[0])
    with pytest.raises(ParameterError, match=re.escape(f"path {tmp_path / name} does not end in .safetensors")) as info:
        head.save(tmp_path / name)
    assert info.value.parameters == ("path",) and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("table", "message"),
    [
        (lambda n: np.zeros(n, dtype=np.int64), r"neighbours must be \[90, >= 5\] row numbers, got shape \[90\]"),
        (lambda n: np.zeros((n, 2), dtype=np.int64), r"neighbours must be \[90, >= 5\] row numbers, got shape \[90, 2\]"),
        (lambda n: np.full((n, 5), n, dtype=np.int64), "neighbours must be row numbers from 0 to 89, got 90 to 90"),
        (lambda n: np.full((n, 5), -1, dtype=np.int64), "neighbours must be row numbers from 0 to 89, got -1 to -1"),
        (lambda n: np.zeros((n, 5)) + 0.5, "neighbours must be whole row numbers, got dtype float64"),
    ],
)
def test_a_neighbour_table_training_cannot_index_is_refused_by_name(table: object, message: str) -> None:
    """Out of range rows failed inside torch (IndexError), negative ones were read from the end and
    floats truncated, without a word."""
    X, _ = blobs()
    with pytest.raises(ParameterError, match=message) as info:
        ClusterHead(n_clusters=3, knn=5, epochs=1, device="cpu").fit(X, neighbours=table(len(X)))  # type: ignore[operator]
    assert info.value.parameters == ("neighbours",)


def test_a_good_neighbour_table_is_used_as_given() -> None:
    X, _ = blobs()
    table = np.array([[(i + j) % len(X) for j in range(1, 6)] for i in range(len(X))])
    head = ClusterHead(n_clusters=3, knn=5, epochs=1, device="cpu").fit(X, neighbours=table.tolist())
    assert head.predict(X).shape == (len(X),)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("missing.safetensors", "head checkpoint not found: {path}"),
        ("head.pt", "{path} is not a head checkpoint: path takes the .safetensors file"),
    ],
)
def test_load_blames_its_own_parameter(tmp_path: Path, name: str, message: str) -> None:
    """ClusterHead.load(path) said "head takes the .safetensors file" and named parameter ``head``,
    the CLI's word for it: load has no parameter of that name."""
    with pytest.raises(ParameterError, match=re.escape(message.format(path=tmp_path / name))) as info:
        ClusterHead.load(tmp_path / name)
    assert info.value.parameters == ("path",)


def test_a_fitted_head_pickles_with_its_predictions() -> None:
    """The README says a fitted head pickles like any scikit-learn estimator (save/load is the
    format that runs no code when read)."""
    import pickle

    X, _ = blobs()
    head = ClusterHead(n_clusters=3, **FAST).fit(X)
    again = pickle.loads(pickle.dumps(head))
    assert again.get_params() == head.get_params() and again.n_features_in_ == head.n_features_in_
    np.testing.assert_array_equal(again.labels_, head.labels_)
    np.testing.assert_array_equal(again.predict_proba(X), head.predict_proba(X))


def test_the_fitted_attributes_the_docstring_names_exist(tmp_path: Path) -> None:
    """The docstring listed five fitted attributes and not n_features_in_; a loaded head has all but labels_."""
    doc = " ".join((ClusterHead.__doc__ or "").split())
    named = re.findall(r"``(\w+_)``", doc.split("After :meth:`fit`:", 1)[1].split("A head from", 1)[0])
    assert {"labels_", "n_clusters_", "n_features_in_", "objective_", "history_", "choose_k_"} <= set(named)
    X, _ = blobs()
    head = ClusterHead(n_clusters=3, **FAST).fit(X)
    assert [name for name in named if name != "feature_names_in_" and not hasattr(head, name)] == []
    head.save(tmp_path / "head.safetensors")
    loaded = ClusterHead.load(tmp_path / "head.safetensors")
    assert [name for name in named if name not in ("feature_names_in_", "labels_") and not hasattr(loaded, name)] == []
    assert not hasattr(loaded, "labels_")


@pytest.mark.parametrize("scale", [1e30, 1e19])
def test_features_too_long_to_normalise_are_refused_naming_x(scale: float) -> None:
    """Rows near 1e30 overflowed the float32 normalisation to zeros: fit put every row in one cluster
    of equal probabilities, without a word; predict did the same to such rows."""
    x, _ = blobs()
    huge = x * np.float32(scale)
    message = r"^X row 0 is too long to normalise \(length [0-9.e+]+; float32 holds at most 1\.84e\+19\): scale the features down$"
    with pytest.raises(ParameterError, match=message) as info:
        ClusterHead(n_clusters=3, **FAST).fit(huge)
    assert info.value.parameters == ("X",)
    head = ClusterHead(n_clusters=3, **FAST).fit(x)
    with pytest.raises(ParameterError, match=message):
        head.predict_proba(huge)
    assert np.array_equal(ClusterHead(n_clusters=3, **FAST).fit(x * np.float32(1e17)).labels_, head.labels_)  # large, still fine
