"""The objective registry and the command-line shortcuts it folds into an objective's options."""

import dataclasses
import re

import pytest
import torch

from imgcluster.errors import ImgclusterError, ParameterError
from imgcluster.objectives import create_objective, list_objectives, objective_class, objective_flags
from imgcluster.objectives.temi import temi_pair_loss


def test_unknown_name_lists_the_known_ones() -> None:
    with pytest.raises(ImgclusterError, match="known objectives: ddc, dsc2i, kmeans, mixture-em, scan, secu, temi") as info:
        create_objective("nope", 8, 2)
    assert not isinstance(info.value, ParameterError)  # a checkpoint naming an unknown objective is a runtime failure
    with pytest.raises(ImgclusterError) as usage:
        objective_flags("nope", {})
    assert isinstance(usage.value, ParameterError)  # on the command line it is a usage error


@pytest.mark.parametrize("name", list_objectives())
def test_balance_options_are_real_numeric_fields(name: str) -> None:
    cls = objective_class(name)
    fields = {f.name: f for f in dataclasses.fields(cls.Params)}
    for option in cls.balance_options:
        assert option in fields and isinstance(getattr(cls.Params(), option), float)


def test_balance_scales_the_paper_defaults_and_an_explicit_option_wins() -> None:
    assert objective_flags("scan", {}, balance=0.5) == {"entropy_weight": 2.5}
    assert objective_flags("scan", {"entropy_weight": 7.0}, balance=0.5) == {"entropy_weight": 7.0}
    assert objective_flags("mixture-em", {}, balance=2.0) == {"balance": 2.0}
    assert objective_flags("temi", {}, balance=0.0) == {"prior_weight": 0.0}
    secu = objective_flags("secu", {}, balance=2.0)
    assert secu["lower_bound"] == 1.0 and secu["alpha"] == pytest.approx(0.24)  # a size bound above N/K is infeasible


def test_shortcuts_only_where_the_method_has_them() -> None:
    assert objective_flags("scan", {}, self_label=True) == {"self_label_epochs": 10}
    assert objective_flags("ddc", {}, uco=True) == {"uco": True}
    for name, flags, message in [
        ("ddc", {"balance": 1.0}, "no uniform-prior term"),
        ("kmeans", {"balance": 1.0}, "no uniform-prior term"),
        ("temi", {"self_label": True}, "SCAN's second stage"),
        ("scan", {"uco": True}, "DDC's companion"),
        ("scan", {"balance": -1.0}, "0 or more"),
    ]:
        with pytest.raises(ImgclusterError, match=message) as info:
            objective_flags(name, {}, **flags)
        assert isinstance(info.value, ParameterError)
    with pytest.raises(ImgclusterError, match="has no option nope"):
        objective_flags("scan", {"nope": 1})


def test_temi_prior_weight_is_the_exponent_of_the_prior() -> None:
    """gamma = 0 drops the prior; with a uniform prior gamma only shifts the loss by gamma * log K."""
    g = torch.Generator().manual_seed(0)
    log_s = torch.randn(6, 4, generator=g).log_softmax(-1)
    log_t = torch.randn(6, 4, generator=g).log_softmax(-1)
    w = torch.ones(6)
    skewed = torch.tensor([0.7, 0.1, 0.1, 0.1])
    uniform = torch.full((4,), 0.25)
    plain = -(0.6 * (log_s + log_t)).logsumexp(-1).mean()
    assert torch.allclose(temi_pair_loss(log_s, log_t, w, skewed, 0.6, prior_weight=0.0), plain)
    shift = temi_pair_loss(log_s, log_t, w, uniform, 0.6, 2.0) - temi_pair_loss(log_s, log_t, w, uniform, 0.6, 0.0)
    assert torch.allclose(shift, -2.0 * torch.log(torch.tensor(4.0)))
    # a stronger prior makes the rare clusters more attractive: sitting in the big cluster costs more than
    # sitting in a rare one, and the more so the larger gamma
    in_big = torch.tensor([[0.0, -9.0, -9.0, -9.0]]).log_softmax(-1).expand(6, 4)
    in_rare = torch.tensor([[-9.0, 0.0, -9.0, -9.0]]).log_softmax(-1).expand(6, 4)

    def penalty(gamma: float) -> torch.Tensor:
        return temi_pair_loss(in_big, in_big, w, skewed, 0.6, gamma) - temi_pair_loss(in_rare, in_rare, w, skewed, 0.6, gamma)

    assert 0 < penalty(0.5) < penalty(1.0) < penalty(2.0)


def test_option_values_are_checked_against_the_defaults_types() -> None:
    from imgcluster.objectives import make_params

    assert make_params("scan", {"entropy_weight": 3}).entropy_weight == 3.0  # an int where a float is expected
    assert isinstance(make_params("scan", {"entropy_weight": 3}).entropy_weight, float)
    assert make_params("kmeans", {"temperature": 0.1}).temperature == 0.1  # None by default: any value
    for name, options, message in [
        ("scan", {"n_heads": "abc"}, "n_heads must be a whole number, got 'abc'"),
        ("scan", {"n_heads": 2.5}, "n_heads must be a whole number"),
        ("scan", {"n_heads": True}, "n_heads must be a whole number"),
        ("ddc", {"uco": 1}, "uco must be true or false"),
        ("secu", {"constraint": 3}, "constraint must be a string"),
        ("scan", {"entropy_weight": "x"}, "entropy_weight must be a number"),
    ]:
        with pytest.raises(ImgclusterError, match=message):
            make_params(name, options)


def test_impossible_sizes_are_a_usage_error_not_a_crash() -> None:
    with pytest.raises(ImgclusterError, match="cannot be built with options") as info:
        create_objective("secu", 16, 3, {"hidden": -3})
    assert isinstance(info.value, ParameterError)


# --- option ranges -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list_objectives())
def test_defaults_are_in_range_and_every_option_but_switches_has_one(name: str) -> None:
    from imgcluster.objectives import make_params

    cls = objective_class(name)
    defaults = cls.Params()  # checks the defaults against the ranges
    assert make_params(name, {}) == defaults
    checked = {f.name for f in dataclasses.fields(cls.Params) if re.search(r"\b(int|float|str)\b", str(f.type))}
    assert set(cls.Params.ranges) == checked  # every number and word is checked, and every range is a real option


@pytest.mark.parametrize("name", [n for n in list_objectives() if objective_class(n).balance_options])
@pytest.mark.parametrize("weight", [0.0, 0.25, 1.0, 2.0, 1000.0])
def test_every_balance_weight_the_cli_accepts_builds(name: str, weight: float) -> None:
    """``--balance`` takes any weight from 0 up (the CLI's ``min=0``): its values must pass the ranges."""
    from imgcluster.objectives import make_params

    make_params(name, objective_flags(name, {}, balance=weight))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), "2", True])
def test_balance_must_be_a_finite_weight(bad: object) -> None:
    """From Python, balance="2" failed in a comparison (TypeError) and True was taken as 1."""
    with pytest.raises(ImgclusterError, match="balance is a weight, 0 or more") as info:
        objective_flags("scan", {}, balance=bad)  # type: ignore[arg-type]
    assert isinstance(info.value, ParameterError)


OUT_OF_RANGE = [
    # name, option, value, the message's end
    ("temi", "n_heads", 100_000_000, "n_heads must be in [1, 64], got 100000000"),
    ("secu", "hidden", 100_000_000, "hidden must be in [1, 16384], got 100000000"),
    ("dsc2i", "hidden", 0, "hidden must be in [1, 16384], got 0"),
    ("mixture-em", "n_heads", 0, "n_heads must be in [1, 64], got 0"),
    ("secu", "n_heads", 0, "n_heads must be in [1, 64], got 0"),
    ("temi", "hidden", 0, "hidden must be in [1, 16384], got 0"),
    ("temi", "prototype_init", "dino", "prototype_init must be one of 'kmeans', 'random', got 'dino'"),
    ("secu", "centre_init", "kmeans", "centre_init must be one of 'kmeans++', 'data', 'random', got 'kmeans'"),
    ("secu", "constraint", "sizes", "constraint must be one of 'size', 'entropy', got 'sizes'"),
    ("secu", "head_choice", "tight", "head_choice must be one of 'tightest-low-loss', 'loss', 'tightest', got 'tight'"),
    ("dsc2i", "inter", "max", "inter must be one of 'margin', 'mean', got 'max'"),
    ("ddc", "uco_layers", "input,bn", "uco_layers must be a comma-separated list of 'input', 'relu', got 'input,bn'"),
    ("ddc", "uco_layers", ",", "uco_layers must be a comma-separated list of 'input', 'relu', got ','"),
    ("scan", "n_heads", 0, "n_heads must be in [1, 64], got 0"),
    ("scan", "hidden", -3, "hidden must be in [1, 16384], got -3"),
    ("scan", "entropy_weight", -100, "entropy_weight must be 0 or more, got -100.0"),
    ("scan", "self_label_epochs", -1, "self_label_epochs must be 0 or more, got -1"),
    ("scan", "self_label_threshold", 1.5, "self_label_threshold must be in [0, 1], got 1.5"),
    ("temi", "n_heads", 0, "n_heads must be in [1, 64], got 0"),
    ("temi", "bottleneck", 1, "bottleneck must be in [2, 16384], got 1"),
    ("temi", "momentum", 2, "momentum must be in [0, 1), got 2.0"),
    ("temi", "momentum", 1, "momentum must be in [0, 1), got 1.0"),
    ("temi", "prior_momentum", -0.1, "prior_momentum must be in [0, 1), got -0.1"),
    ("temi", "student_temp", 0, "student_temp must be greater than 0, got 0.0"),
    ("temi", "teacher_temp", -0.1, "teacher_temp must be greater than 0, got -0.1"),
    ("temi", "beta", 0, "beta must be in (0, 1], got 0.0"),
    ("temi", "beta", 1.5, "beta must be in (0, 1], got 1.5"),
    ("temi", "prior_weight", -1, "prior_weight must be 0 or more, got -1.0"),
    ("secu", "hidden", 0, "hidden must be in [1, 16384], got 0"),
    ("secu", "dim", 1, "dim must be in [2, 16384], got 1"),
    ("secu", "tau", -1, "tau must be greater than 0, got -1.0"),
    ("secu", "tau_w", 0, "tau_w must be greater than 0, got 0.0"),
    ("secu", "label_weight", 1.2, "label_weight must be in [0, 1], got 1.2"),
    ("secu", "dual_lr", 0, "dual_lr must be greater than 0, got 0.0"),
    ("secu", "lower_bound", 5, "lower_bound must be in [0, 1], got 5.0"),
    ("secu", "lower_bound", -0.5, "lower_bound must be in [0, 1], got -0.5"),
    ("secu", "alpha", -1, "alpha must be 0 or more, got -1.0"),
    ("secu", "centre_lr_scale", 0, "centre_lr_scale must be greater than 0, got 0.0"),
    ("dsc2i", "n_heads", 0, "n_heads must be in [1, 64], got 0"),
    ("dsc2i", "dim", 0, "dim must be in [2, 16384], got 0"),
    ("dsc2i", "temperature", 0, "temperature must be greater than 0, got 0.0"),
    ("dsc2i", "margin", 0, "margin must be in (0, 4], got 0.0"),
    ("dsc2i", "margin", 5, "margin must be in (0, 4], got 5.0"),
    ("dsc2i", "intra_weight", -1, "intra_weight must be 0 or more, got -1.0"),
    ("dsc2i", "inter_weight", -1, "inter_weight must be 0 or more, got -1.0"),
    ("dsc2i", "mi_weight", -3, "mi_weight must be 0 or more, got -3.0"),
    ("dsc2i", "knn_weight", -1, "knn_weight must be 0 or more, got -1.0"),
    ("dsc2i", "centre_lr_scale", -1, "centre_lr_scale must be greater than 0, got -1.0"),
    ("mixture-em", "hidden", 0, "hidden must be in [1, 16384], got 0"),
    ("mixture-em", "dim", 1, "dim must be in [2, 16384], got 1"),
    ("mixture-em", "kappa", 0, "kappa must be greater than 0, got 0.0"),
    ("mixture-em", "consistency_weight", -1, "consistency_weight must be 0 or more, got -1.0"),
    ("mixture-em", "balance", -0.5, "balance must be 0 or more, got -0.5"),
    ("ddc", "n_heads", 0, "n_heads must be in [1, 64], got 0"),
    ("ddc", "hidden", 0, "hidden must be in [1, 16384], got 0"),
    ("ddc", "rel_sigma", 0, "rel_sigma must be greater than 0, got 0.0"),
    ("ddc", "uco_weight", -0.01, "uco_weight must be 0 or more, got -0.01"),
    ("ddc", "neighbour_weight", -1, "neighbour_weight must be 0 or more, got -1.0"),
    ("kmeans", "nredo", 0, "nredo must be at least 1, got 0"),
    ("kmeans", "niter", 0, "niter must be at least 1, got 0"),
    ("kmeans", "max_points_per_centroid", 0, "max_points_per_centroid must be at least 1, got 0"),
    ("kmeans", "temperature", 0, "temperature must be greater than 0, got 0"),
    ("kmeans", "temperature", "warm", "temperature must be a number greater than 0, got 'warm'"),
    ("kmeans", "calibration_tolerance", 2, "calibration_tolerance must be in [0, 1], got 2.0"),
    ("scan", "entropy_weight", float("nan"), "entropy_weight must be a finite number 0 or more, got nan"),
    ("secu", "tau", float("inf"), "tau must be a finite number greater than 0, got inf"),
]


@pytest.mark.parametrize(("name", "option", "value", "message"), OUT_OF_RANGE, ids=lambda v: str(v)[:24])
def test_values_out_of_range_are_a_usage_error_naming_the_option_and_range(name: str, option: str, value: object, message: str) -> None:
    with pytest.raises(ImgclusterError) as info:
        objective_flags(name, {option: value})  # what the CLI runs before embedding
    assert isinstance(info.value, ParameterError)
    text = str(info.value)
    assert text.startswith(f"objective {name!r} cannot be built with options") and text.endswith(message)
    assert "\n" not in text


def test_every_objective_has_out_of_range_cases_of_every_kind() -> None:
    """At least two rejected values per objective, covering each kind of range it declares."""
    for name in list_objectives():
        ranges = objective_class(name).Params.ranges
        tested = {option for n, option, _, _ in OUT_OF_RANGE if n == name}
        assert len(tested) >= 2
        kinds = {ranges[option] for option in ranges}
        assert kinds <= {ranges[option] for option in tested}, name


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("scan", {"entropy_weight": 0, "self_label_epochs": 0, "self_label_threshold": 0.0, "n_heads": 1, "hidden": 1}),
        ("scan", {"self_label_threshold": 1.0}),
        ("temi", {"momentum": 0, "prior_momentum": 0.0, "beta": 1, "prior_weight": 0, "bottleneck": 2}),
        ("secu", {"lower_bound": 0.0, "label_weight": 1.0, "alpha": 0, "dim": 2}),
        ("secu", {"lower_bound": 1.0, "label_weight": 0.0}),
        ("dsc2i", {"margin": 4.0, "intra_weight": 0, "inter_weight": 0, "mi_weight": 0, "knn_weight": 0}),
        ("mixture-em", {"balance": 0, "consistency_weight": 0, "kappa": 1e-3, "dim": 2}),
        ("ddc", {"uco_weight": 0, "neighbour_weight": 0, "rel_sigma": 1e-3}),
        ("kmeans", {"temperature": None, "calibration_tolerance": 0, "nredo": 1, "niter": 1}),
        ("kmeans", {"temperature": 1, "calibration_tolerance": 1}),
    ],
)
def test_values_on_the_edge_of_their_range_are_accepted(name: str, options: dict) -> None:
    assert objective_flags(name, options) == options
    create_objective(name, 8, 3, options)


def test_a_checkpoint_with_an_out_of_range_option_is_refused_in_one_line() -> None:
    """``create_objective`` (used to load a head, e.g. one saved before the ranges) checks them too."""
    with pytest.raises(ImgclusterError, match=re.escape("tau must be greater than 0, got -1.0")):
        create_objective("secu", 8, 3, {"tau": -1.0})


def test_train_with_an_out_of_range_option_fails_before_embedding(small_folder, tmp_path, monkeypatch) -> None:
    """`imgcluster train FOLDER --option n_heads=0`: exit 2, one "error:" line, no traceback, nothing embedded."""
    from typer.testing import CliRunner

    import imgcluster.cli as cli

    def no_embedding(*args: object, **kwargs: object) -> None:
        raise AssertionError("the options must be checked before embedding")

    monkeypatch.setattr("imgcluster.folder.embed_checked", no_embedding)
    argv = ["train", str(small_folder), "--objective", "scan", "--option", "n_heads=0", "--cache-dir", str(tmp_path / "cache")]
    result = CliRunner().invoke(cli.app, [*argv, "--model", "efficientnet-lite0"])
    assert result.exit_code == 2, result.stderr
    assert "Traceback" not in result.stderr and result.stderr.count("error:") == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "n_heads must be in [1, 64], got 0" in last
    assert not (tmp_path / "cache").exists()
