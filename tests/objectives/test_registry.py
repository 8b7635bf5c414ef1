"""The objective registry and the command-line shortcuts it folds into an objective's options."""

import dataclasses

import pytest
import torch

from imgcluster.errors import UserError
from imgcluster.objectives import create_objective, list_objectives, objective_class, objective_flags
from imgcluster.objectives.temi import temi_pair_loss


def test_unknown_name_lists_the_known_ones() -> None:
    with pytest.raises(UserError, match="known objectives: ddc, dsc2i, kmeans, mixture-em, scan, secu, temi") as info:
        create_objective("nope", 8, 2)
    assert info.value.exit_code == 1  # a checkpoint naming an unknown objective is a runtime failure
    with pytest.raises(UserError) as usage:
        objective_flags("nope", {})
    assert usage.value.exit_code == 2  # on the command line it is a usage error


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
        with pytest.raises(UserError, match=message) as info:
            objective_flags(name, {}, **flags)
        assert info.value.exit_code == 2
    with pytest.raises(UserError, match="has no option nope"):
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
        with pytest.raises(UserError, match=message):
            make_params(name, options)


def test_impossible_sizes_are_a_usage_error_not_a_crash() -> None:
    with pytest.raises(UserError, match="cannot be built with options") as info:
        create_objective("secu", 16, 3, {"hidden": -3})
    assert info.value.exit_code == 2
