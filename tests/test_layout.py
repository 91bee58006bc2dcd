"""The package's shape: no import cycles, and task types decided in tasks/ alone."""

from __future__ import annotations

import ast
from pathlib import Path

import distill_cli
from distill_cli import tasks

PACKAGE = Path(distill_cli.__file__).parent
# what a task type is called anywhere: registry names and logits layouts
TASK_NAMES = set(tasks.TASKS) | set(tasks.LAYOUTS)
TASK_FIELDS = {"task_type", "task"}  # where code keeps a task type's name


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def runtime_nodes(tree: ast.AST):
    """Every node except those under ``if TYPE_CHECKING:`` (imports for annotations only)."""
    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and is_type_checking(child):
                todo.extend(child.orelse)
                continue
            todo.append(child)


def imported(name: str, module: str) -> set[str]:
    """The package modules that importing ``name`` from inside ``module`` runs: the module
    itself and each package above it that ``module`` is not already inside."""
    found = set()
    parts = name.split(".")
    for i in range(2, len(parts) + 1):
        target = ".".join(parts[:i])
        if target in MODULES and not module.startswith(target + ".") and target != module:
            found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    graph = {}
    for module, path in MODULES.items():
        edges = set()
        for node in runtime_nodes(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    edges |= imported(alias.name, module)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                if node.module.startswith("distill_cli"):
                    edges |= imported(node.module, module)
                    for alias in node.names:
                        edges |= imported(f"{node.module}.{alias.name}", module)
        graph[module] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_package_has_no_import_cycle():
    graph = import_graph()
    assert "distill_cli.tasks" in graph["distill_cli.training.losses"]  # the walk sees imports
    assert find_cycle(graph) is None, " → ".join(find_cycle(graph))


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def names_task(node: ast.expr, equality: bool) -> bool:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value in TASK_NAMES
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return any(names_task(e, equality) for e in node.elts)
    if equality and isinstance(node, (ast.Attribute, ast.Name)):
        return (node.attr if isinstance(node, ast.Attribute) else node.id) in TASK_FIELDS
    return False


def task_comparisons(source: str) -> list[int]:
    """Lines that compare a task-type name: a literal one (``kind == "span"``, ``x in
    ("classification", "regression")``), or a task field by equality (``step.task == X``)."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare):
            equality = all(isinstance(op, (ast.Eq, ast.NotEq)) for op in node.ops)
            if any(names_task(n, equality) for n in [node.left, *node.comparators]):
                lines.append(node.lineno)
    return lines


def test_no_module_outside_tasks_compares_a_task_type_name():
    found = {
        module: lines
        for module, path in MODULES.items()
        if not module.startswith("distill_cli.tasks")
        and (lines := task_comparisons(path.read_text()))
    }
    assert found == {}


def test_the_task_name_check_catches_comparisons():
    assert task_comparisons('if kind(t) == "span":\n    pass') == [1]
    assert task_comparisons('x = t in ("classification", "regression")') == [1]
    assert task_comparisons("ok = step.task == TOKEN") == [1]
    assert task_comparisons('y = task.metric == "squad"\nz = d.task_type in TASKS') == []


def test_every_task_type_is_registered_under_its_name():
    assert set(tasks.TASKS) >= {
        "classification", "regression", "token_classification", "question_answering",
    }  # fmt: skip
    for name, task in tasks.TASKS.items():
        assert task.name == name and tasks.LAYOUTS[task.layout.name] is task.layout
