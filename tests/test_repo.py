"""Repository promises: CI runs the README's test command; the README names exactly two set-up commands; the ldpm
import graph has no cycle and weight-file I/O sits below the trainers and reconstructors (ldpm.weights)."""

from __future__ import annotations

import ast
import re

from conftest import REPO

from ldpm.code_version import PACKAGE_ROOT, direct_imports


def readme_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    block = text.split("## Set up and run", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^```bash\n(.+?)\n```", block, flags=re.M | re.S)


def test_ci_runs_the_readme_test_command():
    commands = readme_commands()
    assert len(commands) == 2, "exactly two set-up commands: run the pipeline, run the tests"
    assert "snakemake --cores all" in commands[0]
    assert commands[1] in (REPO / ".ci" / "run").read_text()


# ------------------------------------------------------------------------------------------ import graph
WEIGHT_IO = {"save_weights", "load_weights", "load_official_unet", "load_official_varnet"}


def ldpm_modules() -> list[str]:
    """Every module and package of src/ldpm, dotted ('ldpm', 'ldpm.baselines', 'ldpm.baselines.unet', ...)."""
    names = []
    for path in sorted(PACKAGE_ROOT.rglob("*.py")):
        parts = path.relative_to(PACKAGE_ROOT.parent).with_suffix("").parts
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def import_graph() -> dict[str, set[str]]:
    """module → the ldpm modules it imports anywhere in its source (lazy imports inside functions too: a cycle
    through one is still a cycle, just one that waits for the call).

    An edge from a module to one of its own ancestor packages is left out: Python initialises `ldpm.a` before
    `ldpm.a.b` whatever `ldpm.a.b` imports, so that edge is the same for every submodule, not a choice of the
    code, and keeping it would call every package whose __init__ imports a submodule a cycle. The other
    direction, a package's __init__ importing a submodule, is an import like any other and counts."""
    graph = {}
    for module in ldpm_modules():
        graph[module] = {m for m in direct_imports(module) if not module.startswith(m + ".")}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of `graph` as [a, b, ..., a], or None (iterative depth-first search, deterministic order)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for root in sorted(graph):
        if state.get(root):
            continue
        path, stack = [root], [iter(sorted(graph[root]))]
        state[root] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            elif not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph.get(nxt, ()))))
    return None


def test_find_cycle_finds_a_cycle_and_only_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set(), "d": {"b", "c"}}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"x": {"y"}, "y": {"y"}}) == ["y", "y"]


def test_the_ldpm_import_graph_has_no_cycle():
    graph = import_graph()
    assert {"ldpm.weights", "ldpm.baselines.unet", "ldpm.baselines.varnet", "ldpm.train"} <= set(graph)
    assert "ldpm.weights" in graph["ldpm.baselines.unet"]  # the graph sees what it should
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def closure(module: str, graph: dict[str, set[str]]) -> set[str]:
    seen, todo = set(), [module]
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo += graph.get(m, ())
    return seen - {module}


def test_weight_io_sits_below_training_and_the_baselines():
    """ldpm.weights reaches neither training code nor any baseline or LDPM stage, and every module takes weight-file
    I/O from it: one definition each, no copy or re-export in ldpm.train or ldpm.baselines.*."""
    below = closure("ldpm.weights", import_graph())
    assert not {m for m in below if m == "ldpm.train" or m.startswith(("ldpm.baselines", "ldpm.method"))}, below
    for module in ldpm_modules():
        path = PACKAGE_ROOT.parent.joinpath(*module.split(".")).with_suffix(".py")
        if not path.is_file():
            path = path.with_suffix("") / "__init__.py"
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                names = {alias.name for alias in node.names} & WEIGHT_IO
                assert not names or node.module == "ldpm.weights", f"{module} imports {names} from {node.module}"
            elif isinstance(node, (ast.FunctionDef, ast.Assign)) and module != "ldpm.weights":
                defined = {node.name} if isinstance(node, ast.FunctionDef) else {
                    t.id for t in node.targets if isinstance(t, ast.Name)}
                assert not defined & WEIGHT_IO, f"{module} defines {defined & WEIGHT_IO}: it lives in ldpm.weights"
