"""The code's shape, as the design asks of it: short functions, read in one screen."""

import ast

from bnlab.config import REPO_ROOT

MAX_LINES = 40  # a function longer than this is split (an analysis: measure / draw / table)


def test_no_function_in_the_package_or_the_analyses_is_over_forty_lines():
    long = [f"{path.relative_to(REPO_ROOT)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
            for folder in ("bnlab", "experiments") for path in sorted((REPO_ROOT / folder).rglob("*.py"))
            for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_LINES]
    assert not long, "\n".join(long)
