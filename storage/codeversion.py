"""The code version of a stage: what, besides data and parameters, decides its output.

Prefect's ``TASK_SOURCE`` hashes only the task function's own source, so an edit to a helper the
stage calls does not invalidate its cache (PrefectHQ/prefect#23062). We hash instead the source of
the stage module *and every project module it imports, transitively*, plus the versions of the
third-party libraries it declares in a module-level ``LIBRARIES`` tuple (a new cleanlab or
datasketch can change results). Editing a comment therefore invalidates the stage; that costs a
recompute, never a wrong cache hit.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.metadata
import importlib.util
import re
from pathlib import Path

#: Top-level packages whose modules count as "our code".
PROJECT_PACKAGES = ("tasks", "storage", "winnow", "flows")


def _module_file(name: str) -> Path | None:
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return None
    return Path(spec.origin)


#: One import statement: ``from BASE import NAMES`` (NAMES possibly a parenthesised, multi-line
#: list) or ``import MODS``. A regex instead of ``ast.parse``: parsing every project module cost
#: 0.2-0.6 s of each short command; on this tree the two give identical import sets. A match
#: inside a docstring can only add a module to the hash (an extra recompute, never a missed one).
_IMPORT = re.compile(r"^[ \t]*(?:from[ \t]+(?P<base>\.*[\w.]*)[ \t]+import[ \t]+"
                     r"(?P<names>\([^)]*\)|[^\n]*)|import[ \t]+(?P<mods>[^\n]*))", re.M)
_COMMENT = re.compile(r"#[^\n]*")


def _names(listed: str) -> list[str]:
    """``a as b, c`` (comments, parentheses and line continuations removed) -> ``["a", "c"]``."""
    listed = _COMMENT.sub("", listed).strip().strip("()").replace("\\", "")
    return [part.split(" as ")[0].strip() for part in listed.split(",") if part.strip()]


def _project_imports(name: str, path: Path) -> set[str]:
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for match in _IMPORT.finditer(path.read_text(encoding="utf-8")):
        if match["mods"] is not None:
            candidates = _names(match["mods"])
        else:
            base = match["base"].lstrip(".")
            level = len(match["base"]) - len(base)
            if level:
                parts = package.split(".")
                parts = parts[: len(parts) - level + 1]
                base = ".".join(p for p in [*parts, base] if p)
            # `from tasks import common` imports a submodule; `from tasks.common import x` does not.
            candidates = [base] + [f"{base}.{n}" for n in _names(match["names"])]
        for cand in candidates:
            if cand and cand.split(".")[0] in PROJECT_PACKAGES and _module_file(cand) is not None:
                found.add(cand)
    return found


@functools.lru_cache(maxsize=None)
def code_version(module_name: str) -> str:
    """SHA-256 over a module's source, its project imports' sources and declared library versions."""
    seen: dict[str, Path] = {}
    todo = [module_name]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        path = _module_file(name)
        if path is None:
            raise ValueError(f"code_version: cannot find the source of module {name!r}")
        seen[name] = path
        todo.extend(_project_imports(name, path) - set(seen))
    h = hashlib.sha256()
    for name in sorted(seen):
        h.update(name.encode() + b"\0" + seen[name].read_bytes() + b"\0")
    libraries = getattr(importlib.import_module(module_name), "LIBRARIES", ())
    for lib in sorted(libraries):
        try:
            version = importlib.metadata.version(lib)
        except importlib.metadata.PackageNotFoundError:
            version = "absent"
        h.update(f"{lib}=={version}\0".encode())
    return h.hexdigest()
