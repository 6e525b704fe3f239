"""The version of a stage's code, for Snakemake's `code` rerun trigger.

Snakemake reruns a job when its rule's shell text changes (the `code` trigger) or one of its params does. Rules
that run one stage put `code_version(modules)` into that text; the generic `train` and `reconstruct` rules, which
run a different model or method per job, pass `entry_version` of the job's registry entry as a param. Either way,
editing a module a stage runs (or one it imports, transitively) reruns that stage and its dependants, and editing
an unrelated module reruns nothing. Imports are read statically with `ast` (also those inside functions:
the stages import lazily), so the Snakefile pays no torch import for it.
"""

from __future__ import annotations

import ast
import hashlib
from functools import lru_cache
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parent  # src/ldpm


def module_file(module: str) -> Path | None:
    """The source file of an `ldpm.*` module or package; None for anything outside the package."""
    parts = module.split(".")
    if parts[0] != "ldpm":
        return None
    base = PACKAGE_ROOT.joinpath(*parts[1:])
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


@lru_cache(maxsize=None)
def direct_imports(module: str) -> tuple[str, ...]:
    """The `ldpm.*` modules `module` imports anywhere in its source, with the packages that contain them (importing
    `ldpm.a.b` runs `ldpm/a/__init__.py` too)."""
    path = module_file(module)
    if path is None:
        return ()
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from ldpm.x import y`: y may be a submodule or a name in ldpm.x
            names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
        else:
            continue
        for name in names:
            parts = name.split(".")
            found.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    return tuple(sorted(m for m in found if module_file(m) is not None and m != module))


def module_closure(modules: list[str]) -> list[Path]:
    """Source files of `modules` and of every `ldpm.*` module they import, transitively, sorted."""
    seen, todo = set(), list(modules)
    while todo:
        module = todo.pop()
        if module in seen or module_file(module) is None:
            continue
        seen.add(module)
        todo += direct_imports(module)
        parent = module.rpartition(".")[0]
        if parent:
            todo.append(parent)
    return sorted({module_file(m) for m in seen})


def code_version(modules: list[str]) -> str:
    """12 hex digits of sha256 over the path and text of every file in the closure of `modules`."""
    digest = hashlib.sha256()
    for path in module_closure(modules):
        digest.update(str(path.relative_to(PACKAGE_ROOT)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


def entry_version(entry: str, shared: list[str]) -> str:
    """The code version of one registry entry "module:function" (ldpm.stages TRAINERS / RECONSTRUCTORS): its
    module's closure, the `shared` modules every such job runs (ldpm.train, ldpm.reconstruct), and the entry itself
    (pointing a model at another function is a change). One value per job, so that an edit to one method's code
    reruns that method's jobs and no other method's."""
    digest = hashlib.sha256(entry.encode() + b"\0" + code_version([*shared, entry.split(":")[0]]).encode())
    return digest.hexdigest()[:12]
