"""Models kept for a later pass of the same library call."""

from __future__ import annotations

from imgcluster.kept import Prepared, keeping, prepared


def test_a_model_is_kept_only_inside_keeping_and_only_the_one_named() -> None:
    built: list[str] = []

    def build(name: str) -> Prepared:
        built.append(name)
        return Prepared(object(), {"input_size": (3, 224, 224)}, 4)

    lite0, vit = ("efficientnet-lite0", "w", "cpu"), ("dinov2-vitb14", "w", "cpu")
    assert prepared(lite0, lambda: build("a")) is not prepared(lite0, lambda: build("b"))  # nothing kept outside
    with keeping("efficientnet-lite0"):
        first = prepared(lite0, lambda: build("c"))
        with keeping("dinov2-vitb14"):  # nested: the outer keeping holds
            assert prepared(lite0, lambda: build("d")) is first
        assert prepared(("efficientnet-lite0", "w", "cuda"), lambda: build("e")) is not first  # another device
        prepared(vit, lambda: build("f"))
        prepared(vit, lambda: build("g"))  # not the model kept: built each time
    assert prepared(lite0, lambda: build("h")) is not first  # gone once the call is over
    assert built == ["a", "b", "c", "e", "f", "g", "h"]


def test_a_decorated_call_keeps_the_model_only_when_its_flag_is_true() -> None:
    from imgcluster.kept import keeping_when

    @keeping_when("efficientnet-lite0", "names")
    def run(*, names: bool = True) -> bool:
        key = ("efficientnet-lite0", "w", "cpu")
        return prepared(key, lambda: Prepared(object(), {}, 4)) is prepared(key, lambda: Prepared(object(), {}, 4))

    assert run() and run(names=True) and not run(names=False)
    assert run.__name__ == "run"
