"""Errors name library parameters; only the CLI knows flags and exit codes."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from imgcluster.errors import ImgclusterError, ParameterError

PACKAGE = Path(__file__).resolve().parents[1] / "imgcluster"
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")


def _own_flags() -> set[str]:
    """Every flag of every imgcluster command. Other text that looks like one is left alone: other
    programs' flags quoted in advice (``docker run --shm-size``) and CSS custom properties."""
    import typer.main

    from imgcluster.cli import app

    root = typer.main.get_command(app)
    commands = [root, *getattr(root, "commands", {}).values()]
    return {opt for command in commands for param in command.params for opt in getattr(param, "opts", []) if opt.startswith("--")}


def test_a_message_names_parameters_and_renders_them_as_asked() -> None:
    error = ParameterError("{n_clusters} 10 is larger than the number of images (4); try {k_max}")
    assert str(error) == "n_clusters 10 is larger than the number of images (4); try k_max"
    assert error.render({"n_clusters": "--clusters", "k_max": "--k-max"}).startswith("--clusters 10 is larger")
    assert error.parameters == ("n_clusters", "k_max") and isinstance(error, ValueError)
    plain = ImgclusterError("folder not found: /data/{2024}", "folder")  # not a name: left as it is
    assert str(plain) == "folder not found: /data/{2024}" and plain.parameters == ("folder",)


def test_a_file_name_in_a_message_is_shown_as_it_is() -> None:
    """Messages quote paths with f-strings; braces in a path are not placeholders unless they
    spell a parameter of the library."""
    error = ParameterError("{out} /photos/{draft}/{x}.png is a folder; give a file name")
    assert error.render({"out": "--out"}) == "--out /photos/{draft}/{x}.png is a folder; give a file name"
    assert error.parameters == ("out",)


def test_a_file_name_that_spells_a_parameter_is_shown_as_it_is_when_quoted_as_literal() -> None:
    """A folder named ``{seed}`` was reported as ``folder not found: --seed`` and blamed on ``seed``."""
    from imgcluster.errors import literal

    error = ParameterError(f"{{out}} {literal('/photos/{seed}/{out}.csv')} is a folder", "out")
    assert error.render({"out": "--out", "seed": "--seed"}) == "--out /photos/{seed}/{out}.csv is a folder"
    assert str(error) == "out /photos/{seed}/{out}.csv is a folder" and error.parameters == ("out",)


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["assign", "{tmp}/{{seed}}"], "error: folder not found: {tmp}/{{seed}}"),
        (["evaluate", "{tmp}/{{out}}.csv", "{tmp}"], "error: assignments file not found: {tmp}/{{out}}.csv"),
        (["assign", "{tmp}", "--clusters", "{{seed}}"], "error: --clusters takes a whole number or 'auto', not '{{seed}}'"),
    ],
)
def test_a_name_that_spells_a_parameter_reaches_the_command_line_as_typed(args: list[str], line: str, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from imgcluster.cli import app

    result = CliRunner().invoke(app, [a.format(tmp=tmp_path) for a in args])
    assert result.exit_code == 2 and result.stderr == line.format(tmp=tmp_path) + "\n"


def test_every_placeholder_the_package_writes_is_a_known_parameter() -> None:
    """A placeholder missing from PARAMETERS would reach the user as ``{name}``."""
    from imgcluster.errors import PARAMETERS

    pattern = re.compile(r"\{([a-z_]+)\}")
    unknown = set()
    for path in _library_files():
        tree = ast.parse(path.read_text())
        docstrings = _docstrings(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                unknown |= {(path.name, word) for word in pattern.findall(node.value) if word not in PARAMETERS}
    allowed = {("errors.py", "parameter"), ("errors.py", "placeholder"), ("errors.py", "placeholders"), ("progress.py", "placeholders")}
    assert unknown <= allowed, f"placeholders not in errors.PARAMETERS: {sorted(unknown - allowed)}"


def _library_files() -> list[Path]:
    return [p for p in sorted(PACKAGE.rglob("*.py")) if p.name != "cli.py"]


def _docstrings(tree: ast.AST) -> set[int]:
    """ids of the string constants that are docstrings (they may explain the command line)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                found.add(id(first.value))
    return found


@pytest.mark.parametrize("path", _library_files(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_but_the_cli_mentions_a_flag_or_an_exit_code(path: Path) -> None:
    source = path.read_text()
    assert "exit_code" not in source, f"{path.name} mentions exit_code: raise ParameterError or ImgclusterError instead"
    tree = ast.parse(source)
    docstrings = _docstrings(tree)
    own = _own_flags()
    flags = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            flags += [(node.lineno, flag) for flag in FLAG.findall(node.value) if flag in own]
    assert not flags, f"{path.name} names command-line flags {flags}: name the parameter as a {{placeholder}} instead"
