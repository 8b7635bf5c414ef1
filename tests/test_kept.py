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
