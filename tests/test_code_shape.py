"""The shape the four modules keep: functions a reader can hold, mi_main.py
the smaller part, and the public functions' types written down (mypy checks
them in CI)."""

import ast
import os

from conftest import REPO

MODULES = ("mi_main.py", "mi_layers.py", "mi_model.py", "mi_data_processing.py")


def parsed(module):
    with open(os.path.join(REPO, module)) as stream:
        text = stream.read()
    return text, ast.parse(text)


def test_no_function_is_over_60_lines():
    long = [
        f"{module}:{node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for module in MODULES
        for node in ast.walk(parsed(module)[1])
        if isinstance(node, ast.FunctionDef) and node.end_lineno - node.lineno + 1 > 60
    ]
    assert long == []


def test_mi_main_is_at_most_45_percent_of_the_lines():
    lines = {module: len(parsed(module)[0].splitlines()) for module in MODULES}
    assert lines["mi_main.py"] <= 0.45 * sum(lines.values()), lines


def test_four_in_five_public_functions_are_fully_annotated():
    public, bare = 0, []
    for module in MODULES:
        for node in parsed(module)[1].body:
            if isinstance(node, ast.FunctionDef) and not node.name.startswith("_"):
                public += 1
                arguments = [*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs]
                arguments += [each for each in (node.args.vararg, node.args.kwarg) if each]
                if node.returns is None or any(argument.annotation is None for argument in arguments):
                    bare.append(f"{module}:{node.name}")
    assert len(bare) <= 0.2 * public, bare
