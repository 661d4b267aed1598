"""What ``winnow deploy`` prints: every deployment in ``deployments/prefect.yaml`` and the exact
``prefect deployment run`` command that starts it with the given profile, store and overrides.

The names come from the file and from the flows themselves (``flow/deployment``), so the listing
cannot drift from what ``prefect deploy`` registers.
"""

from __future__ import annotations

import importlib
import json
import shlex
from pathlib import Path
from typing import Any

from winnow.config import REPO_DIR, _parse_overrides
from winnow.errors import WinnowError

PREFECT_FILE = REPO_DIR / "deployments" / "prefect.yaml"


def deployments(path: Path = PREFECT_FILE) -> list[dict[str, Any]]:
    """The deployments of a prefect.yaml, each with its full ``flow/deployment`` name added."""
    import yaml

    if not path.is_file():
        raise WinnowError(f"{path}: deployment file not found")
    spec = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    out = []
    for i, dep in enumerate(spec.get("deployments") or []):
        entry = dep.get("entrypoint", "")
        file, colon, attr = entry.partition(":")
        if not colon or not file.endswith(".py"):
            raise WinnowError(f"{path}: deployments[{i}].entrypoint {entry!r}: expected FILE.py:FLOW")
        module = importlib.import_module(file[:-3].replace("/", "."))
        flow = getattr(module, attr, None)
        if flow is None or not hasattr(flow, "name"):
            raise WinnowError(f"{path}: deployments[{i}].entrypoint {entry!r}: no flow named {attr}")
        out.append({**dep, "full_name": f"{flow.name}/{dep['name']}"})
    return out


def run_command(full_name: str, profile: str | None = None, store: str | None = None,
                overrides: list[str] | None = None) -> str:
    """The ``prefect deployment run`` line for one deployment, its parameters as Prefect parses them."""
    parts = ["prefect", "deployment", "run", full_name]
    if profile:
        parts += ["-p", f"profile={profile}"]
    if store:
        parts += ["-p", f"store={Path(store).resolve()}"]
    if overrides:
        parts += ["-p", "config=" + json.dumps(_parse_overrides(overrides), separators=(", ", ": "))]
    return shlex.join(parts)


def listing(profile: str | None = None, store: str | None = None, overrides: list[str] | None = None) -> str:
    """One line per deployment: its name, schedule and run command."""
    lines = []
    for dep in deployments():
        crons = ", ".join(f"cron '{s['cron']}' {s.get('timezone', 'UTC')}" for s in dep.get("schedules") or [] if "cron" in s)
        lines.append(f"{dep['full_name']}{'  (' + crons + ')' if crons else ''}")
        lines.append("    " + run_command(dep["full_name"], profile, store, overrides))
    return "\n".join(lines)
