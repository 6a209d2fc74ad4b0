"""The shape the four modules keep: imports that run one way, functions a
reader can hold, and the public functions' types written down (mypy checks
them in CI)."""

import ast
import os

from conftest import REPO

MODULES = ("mi_main.py", "mi_layers.py", "mi_model.py", "mi_data_processing.py")
# Each module and the modules it may import: mi_main on top; mi_model over mi_data_processing, which imports none.
MAY_IMPORT = {
    "mi_main": {"mi_layers", "mi_model", "mi_data_processing"},
    "mi_model": {"mi_layers", "mi_data_processing"},
    "mi_data_processing": set(),
    "mi_layers": set(),
}


def parsed(module):
    with open(os.path.join(REPO, module)) as stream:
        return ast.parse(stream.read())


def imported_modules(tree):
    """Every module an import names anywhere in the tree, type-checking blocks and functions included."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            yield node.module.split(".")[0]


def upward_imports(sources):
    """'A imports B' for each import of sources ({module name: source text}) that MAY_IMPORT does not allow."""
    return sorted(
        f"{module} imports {name}"
        for module, text in sources.items()
        for name in set(imported_modules(ast.parse(text)))
        if name in MAY_IMPORT and name != module and name not in MAY_IMPORT[module]
    )


def test_imports_run_one_way():
    sources = {}
    for module in MODULES:
        with open(os.path.join(REPO, module)) as stream:
            sources[module[: -len(".py")]] = stream.read()
    assert upward_imports(sources) == []


def test_the_import_check_finds_a_planted_upward_import():
    planted = {
        "mi_data_processing": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from mi_main import Config\n",
        "mi_layers": "def later():\n    import mi_model\n",
        "mi_model": "import mi_data_processing, mi_layers\n",
    }
    assert upward_imports(planted) == ["mi_data_processing imports mi_main", "mi_layers imports mi_model"]


def test_no_function_is_over_60_lines():
    long = [
        f"{module}:{node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for module in MODULES
        for node in ast.walk(parsed(module))
        if isinstance(node, ast.FunctionDef) and node.end_lineno - node.lineno + 1 > 60
    ]
    assert long == []


def test_four_in_five_public_functions_are_fully_annotated():
    public, bare = 0, []
    for module in MODULES:
        for node in parsed(module).body:
            if isinstance(node, ast.FunctionDef) and not node.name.startswith("_"):
                public += 1
                arguments = [*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs]
                arguments += [each for each in (node.args.vararg, node.args.kwarg) if each]
                if node.returns is None or any(argument.annotation is None for argument in arguments):
                    bare.append(f"{module}:{node.name}")
    assert len(bare) <= 0.2 * public, bare
