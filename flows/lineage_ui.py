"""The run's lineage as Prefect artifacts that read well in both UIs.

``winnow-lineage`` is a mermaid diagram drawn top-down: Prefect's V2 UI fits the SVG into a column
of about 690 px, so a left-to-right chain of a dozen boxes came out with text a few pixels high,
while a top-down one is a few boxes wide and keeps its natural size. The V1 UI shows mermaid as
source text, so ``winnow-lineage-table`` carries the same graph as a table both UIs render (one
row per entry: stage, parents, a digest of the parameters, code version, rows). No cell is a bare
"-", which V1's markdown cells turn into a list bullet.
"""

from __future__ import annotations

import hashlib
from typing import Any, Mapping

from storage import DatasetStore, short
from storage.fingerprint import canonical_json

EMPTY = "none"


def params_digest(params: Any) -> str:
    """A short digest of an entry's parameters: equal digests, equal parameters."""
    return hashlib.sha256(canonical_json(params).encode()).hexdigest()[:12]


def lineage_table_rows(store: DatasetStore, outputs: Mapping[str, str]) -> list[dict[str, Any]]:
    """One row per entry behind the run's outputs, ancestors first."""
    from flows.receipt import lineage_entries

    rows: list[dict[str, Any]] = []
    for m in lineage_entries(store, outputs):
        parents = [f"{name}={short(p)}" if store.exists(p) else f"{name}=file {short(p)}"
                   for name, p in sorted(m.parents.items())]
        rows.append({
            "entry": short(m.fingerprint),
            "stage": m.stage,
            "parents": ", ".join(parents) or EMPTY,
            "params digest": params_digest(m.params),
            "code version": short(m.code_version),
            "rows": m.rows("data") if m.rows("data") is not None else EMPTY,
        })
    return rows


def publish_lineage(store: DatasetStore, outputs: Mapping[str, str], mermaid: str) -> None:
    """Publish the diagram (V2) and the table (V1 and V2) on the current flow run."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    create_markdown_artifact(
        "# Lineage of this run\n\nEach box is a store entry (`stage@fingerprint`); the "
        "`winnow-lineage-table` artifact lists each one's parents, parameters digest and code "
        "version, and `winnow lineage FINGERPRINT` prints the full parameters.\n\n" + mermaid,
        key="winnow-lineage",
        description="Which data, parameters and code produced what (diagram).",
    )
    create_table_artifact(
        lineage_table_rows(store, outputs),
        key="winnow-lineage-table",
        description="Every entry behind this run: stage, parents, parameters digest, code version, rows.",
    )
