"""The code identity of a stage: one hash over the code of the modules that decide its output.

A stage names the modules it runs (its entry points); every dynslice module they import, directly or through
other dynslice modules (imports inside functions included), is followed. Each module counts by its syntax
tree with docstrings dropped, so comments, blank lines and docstrings do not change a key, and any change to
what the code does does. Package `__init__` files only re-export: a name imported from a package is followed
to the module that defines it. Modules in NEUTRAL (below) never count, and another stage's module is not
followed (its output reaches this stage through its artifact key).
"""

from __future__ import annotations

import ast
import importlib.util
from functools import lru_cache
from pathlib import Path

from dynslice.hashing import sha256_bytes, sha256_tree

ROOT = "dynslice"
# modules whose code cannot change what a stage produces, so they neither count nor are followed: error
# classes, hashing and where files live (keys, not outputs), the configuration (its values are the stages'
# inputs), the store, atomic folder replacement, the stage runner and its lease (they move artifacts and
# decide who makes them; they do not make them)
STAGES = "dynslice.pipeline."
NEUTRAL = frozenset({"dynslice.errors", "dynslice.hashing", "dynslice.locations", "dynslice.config",
                     "dynslice.store", "dynslice.storeaccess", "dynslice.atomic", "dynslice.pipeline.stage",
                     "dynslice.pipeline.codeid", "dynslice.pipeline.lease"})


def _source(module: str) -> tuple[str, bool]:
    """(source text, is a package) of a dynslice module."""
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(f"no module {module}")
    return Path(spec.origin).read_text(encoding="utf-8"), spec.submodule_search_locations is not None


def _exists(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def _strip_docstrings(tree: ast.AST) -> ast.AST:
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                node.body = body[1:] or [ast.Pass()]
    return tree


def _absolute(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _package_binding(package: str, name: str) -> str | None:
    """The module a package's __init__ takes `name` from (None if it defines nothing of that name)."""
    source, _ = _source(package)
    for node in ast.walk(_parsed(source)):
        if isinstance(node, ast.ImportFrom) and any((a.asname or a.name) == name for a in node.names):
            return _absolute(package, True, node)
    return None


@lru_cache(maxsize=512)
def _parsed(source: str) -> ast.Module:
    return ast.parse(source)


def _imports(module: str) -> set[str]:
    """The dynslice modules whose code `module` uses (package __init__ files resolved through)."""
    source, is_package = _source(module)
    found: set[str] = set()
    for node in ast.walk(_parsed(source)):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == ROOT)
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(module, is_package, node)
            if base.split(".")[0] != ROOT:
                continue
            for alias in node.names:
                if _exists(f"{base}.{alias.name}"):
                    found.add(f"{base}.{alias.name}")  # `from dynslice import planners`
                elif _source(base)[1]:
                    found.add(_package_binding(base, alias.name) or base)
                else:
                    found.add(base)
    return found - {ROOT} - NEUTRAL  # the top-level package only re-exports


@lru_cache(maxsize=None)
def closure(entries: tuple[str, ...]) -> tuple[str, ...]:
    """Every dynslice module the entry modules depend on, themselves included, sorted."""
    seen: set[str] = set()
    todo = list(entries)
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        # another stage's module is another stage: what it produced enters through its artifact's key
        todo.extend(m for m in _imports(module) - seen if m in entries or not m.startswith(STAGES))
    return tuple(sorted(seen))


def module_hash(module: str) -> str:
    """sha256 of a module's syntax tree without docstrings (comments and formatting never count)."""
    return _tree_hash(_source(module)[0])


@lru_cache(maxsize=512)
def _tree_hash(source: str) -> str:
    tree = _strip_docstrings(ast.parse(source))  # a fresh tree: stripping edits it in place
    return sha256_bytes(ast.dump(tree, annotate_fields=True, include_attributes=False).encode())


@lru_cache(maxsize=None)
def code_identity(entries: tuple[str, ...]) -> str:
    """One hash over the code of the entry modules and everything in dynslice they import."""
    return sha256_tree({module: module_hash(module) for module in closure(entries)})
