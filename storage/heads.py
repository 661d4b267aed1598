"""The pipeline head: the newest whole-pipeline run, which stage names resolve against.

``runs/latest.json`` is the newest run of any kind, and a single-stage run (``winnow run --only
dedup`` or a ``stage_dedup/dedup`` deployment) holds only ingest and that stage. Answering
``winnow lineage evaluate`` or ``winnow why ROW`` from it would say "no evaluate" or "not removed"
about rows the current pipeline output does mask. So every run that went through the whole
pipeline also writes ``runs/head.json``, and a bare stage name means the newest entry of that
stage reachable from the head's outputs; ``latest:STAGE`` and ``RUN:STAGE`` still name a
particular run's entry.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from storage.store import DatasetStore

HEAD = "head"


def record_head(store: "DatasetStore", record: dict[str, Any]) -> None:
    """Make ``record`` (a whole-pipeline run record) the store's head."""
    from storage.store import _atomic_write_json

    _atomic_write_json(store.runs / f"{HEAD}.json", record)


def head_record(store: "DatasetStore") -> dict[str, Any] | None:
    """The head run's record; a store written before heads existed falls back to ``latest``."""
    for name in (HEAD, "latest"):
        path = store.runs / f"{name}.json"
        if path.is_file():
            return json.loads(path.read_text(encoding="utf-8"))
    return None


def head_entries(store: "DatasetStore") -> list[str]:
    """Every store entry the head's outputs come from (its outputs and all their ancestors)."""
    record = head_record(store)
    if record is None:
        return []
    seen: dict[str, None] = {}
    for fp in record["outputs"].values():
        if store.exists(fp) and fp not in seen:
            seen.update((m.fingerprint, None) for m in store.lineage(fp))
    return list(seen)


def resolve_stage(store: "DatasetStore", stage: str) -> str | None:
    """The newest entry of ``stage`` reachable from the head, or None if the head has none.

    A store that only one-stage commands wrote (``winnow dedup IN --out OUT``) has no pipeline
    run, so there the newest entry of the stage answers: it is what the user just made.
    """
    record = head_record(store)
    if record is None:
        found = [m for m in store.entries() if m.stage == stage]
    elif stage in record["outputs"]:
        return record["outputs"][stage]
    else:
        found = [m for m in (store.manifest(fp) for fp in head_entries(store)) if m.stage == stage]
    return max(found, key=lambda m: (m.created_at, m.fingerprint)).fingerprint if found else None
