"""Receipts and lineage views, built from the store's manifests (so they work on cache hits too)."""

from __future__ import annotations

from typing import Any, Mapping

import pyarrow as pa

from storage import DatasetStore, Manifest, short
from tasks.eval_metrics import at_upper_bound


def _removed_text(m: Manifest) -> str:
    parts = []
    for action, reasons in sorted(m.removed.items()):
        parts.extend(f"{action} {reason} {n}" for reason, n in sorted(reasons.items()))
    return ", ".join(parts) or "none"  # not "-": the V1 UI renders a bare "-" cell as a list bullet


def _rows_in(store: DatasetStore, m: Manifest) -> int | None:
    for name in ("corpus", "train"):
        fp = m.parents.get(name)
        if fp and store.exists(fp):
            return store.manifest(fp).rows("data")
    return None


def receipt_rows(store: DatasetStore, outputs: Mapping[str, str], cached: Mapping[str, bool]) -> list[dict[str, Any]]:
    """One row per stage of a run: status, rows in/out, what was removed and why, time, entry."""
    rows = []
    for stage, fp in outputs.items():
        m = store.manifest(fp)
        rows.append(
            {
                "stage": stage,
                "status": "cached" if cached.get(stage) else "computed",
                "rows_in": _rows_in(store, m),
                "rows_out": m.rows("data"),
                "removed": _removed_text(m),
                "seconds": m.elapsed_s,
                "entry": short(fp),
            }
        )
    return rows


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def format_table(rows: list[dict[str, Any]]) -> str:
    """Plain-text table for the terminal."""
    if not rows:
        return "(nothing)"
    cols = list(rows[0])
    cells = [[_cell(r[c]) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    line = lambda vals: "  ".join(v.ljust(w) for v, w in zip(vals, widths)).rstrip()  # noqa: E731
    return "\n".join([line(cols), line(["-" * w for w in widths]), *(line(r) for r in cells)])


def mixture_weights(store: DatasetStore, fp: str) -> list[dict[str, Any]]:
    """The weights table of a mixture entry, as rows."""
    try:
        return store.table(fp, "weights").to_pylist()
    except Exception:
        return []


def evaluation_summary(store: DatasetStore, fp: str) -> dict[str, Any]:
    """Per-domain bits/byte and per-benchmark scores of an evaluate entry."""
    out: dict[str, Any] = {"metrics": store.manifest(fp).metrics}
    for name in ("data", "benchmarks"):
        try:
            out[name] = store.table(fp, name).to_pylist()
        except Exception:
            out[name] = []
    return out


def with_interval(row: Mapping[str, Any], name: str) -> str | None:
    """``0.312 [0.270, 0.360]``: a metric and its 95% bootstrap interval; None when absent."""
    value = row.get(name)
    if value is None:
        return None
    lo, hi = row.get(f"{name}_lo"), row.get(f"{name}_hi")
    return f"{value:.3f}" if lo is None or hi is None else f"{value:.3f} [{lo:.3f}, {hi:.3f}]"


def benchmark_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Benchmark scores for the terminal: each metric with its 95% interval (the table has more)."""
    out = []
    for r in rows:
        if r.get("n", 0) == 0:
            continue
        ece = with_interval(r, "ece")
        if r.get("ece_after") is not None:
            t = "uniform (T at its bound)" if at_upper_bound(r["temperature"]) else f"T={r['temperature']:.2f}"
            ece = f"{ece}; split {r['ece_before']:.3f} -> {r['ece_after']:.3f} at {t}"
        out.append({"benchmark": r["benchmark"], "subset": r["subset"], "n": r["n"],
                    "accuracy": with_interval(r, "accuracy"), "acc_norm": with_interval(r, "accuracy_norm"),
                    "ece": ece, "bits/byte": with_interval(r, "bits_per_byte"),
                    "leak excess": with_interval(r, "leak_excess")})
    return out


def domain_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Held-out bits/byte per domain with its interval (documents resampled)."""
    return [{"domain": r["domain"], "docs": r["docs"], "bytes": r["bytes"],
             "bits/byte": with_interval(r, "bits_per_byte")} for r in rows]


def lineage_entries(store: DatasetStore, outputs: Mapping[str, str]) -> list[Manifest]:
    """Every entry behind a run's outputs, once each, ancestors before the entries made from them."""
    seen: dict[str, Manifest] = {}
    for fp in outputs.values():
        for m in store.lineage(fp):
            seen.setdefault(m.fingerprint, m)
    return list(seen.values())


def lineage_mermaid(store: DatasetStore, outputs: Mapping[str, str]) -> str:
    """A mermaid flowchart of every entry the run touched and the input files behind them.

    Node labels are quoted: the Prefect UI's mermaid rejects unquoted labels containing '@'.
    """
    # Top-down: the V2 UI fits the SVG into its column, which made a wide left-to-right chain unreadable.
    lines = ["```mermaid", "flowchart TD"]
    seen: set[str] = set()
    for m in lineage_entries(store, outputs):
        seen.add(m.fingerprint)
        node = f"n{m.fingerprint[:12]}"
        rows = m.rows("data")
        label = f"{m.stage}@{short(m.fingerprint)}" + (f"<br/>{rows} rows" if rows is not None else "")
        lines.append(f'    {node}["{label}"]')
        for name, parent in sorted(m.parents.items()):
            if store.exists(parent):
                lines.append(f'    n{parent[:12]} -->|"{name.split(":")[0]}"| {node}')
            else:  # an ingest's parents are the input files' content fingerprints
                fnode = f"f{parent[:12]}"
                if fnode not in seen:
                    seen.add(fnode)
                    path = next((i["path"] for i in m.inputs if i.get("fingerprint") == parent), name)
                    lines.append(f'    {fnode}[("{_mermaid_escape(path)}")]')
                lines.append(f"    {fnode} --> {node}")
        for name, hint in sorted(m.hints.items()):
            # Dotted: an earlier entry read as a cache, not an input of the fingerprint. Its
            # own ancestors are not drawn (each nightly embed would pull in the last night's).
            # A list of entries (dedup's map tasks, one per shard) is not drawn either: one node
            # per shard would bury the stages; and the joined list is no folder name (from 4
            # shards it is longer than a file name may be, and exists() raised).
            if "," in hint or not store.exists(hint):
                continue
            if hint not in seen:
                lines.append(f'    n{hint[:12]}["{store.manifest(hint).stage}@{short(hint)}"]')
            lines.append(f'    n{hint[:12]} -.->|"{name} (cache)"| {node}')
    lines.append("```")
    return "\n".join(lines)


def _mermaid_escape(text: str) -> str:
    return text.replace('"', "'")


def _hint_text(value: str) -> str:
    """One hint of a manifest: an entry (embed's earlier vectors), or a reduce's map entries."""
    fps = value.split(",")
    return short(fps[0]) if len(fps) == 1 else f"{len(fps)} map entries ({short(fps[0])} ... {short(fps[-1])})"


def lineage_text(store: DatasetStore, fp: str) -> str:
    """The chain from an entry back to its input files, one block per step, inputs first."""
    blocks = []
    for m in store.lineage(fp):
        head = f"{m.stage}  {m.fingerprint}"
        detail = [
            f"  kind: {m.kind}   created: {m.created_at}   took: {m.elapsed_s}s",
            f"  code version: {short(m.code_version)}   winnow {m.winnow_version}",
            "  parents: " + (", ".join(f"{k}={short(v)}" for k, v in sorted(m.parents.items())) or "-"),
            *(["  reused from: " + ", ".join(f"{k}={_hint_text(v)}" for k, v in sorted(m.hints.items()))]
              if m.hints else []),
            f"  params: {_compact(m.params)}",
            "  tables: " + ", ".join(f"{k} ({v['rows']} rows)" for k, v in m.tables.items()),
        ]
        if m.inputs:
            detail += [f"  input file: {i['path']} ({i.get('rows')} rows, sha256 {short(i['fingerprint'])})" for i in m.inputs]
        if m.removed:
            detail.append(f"  removed: {_removed_text(m)}")
        if m.files:
            detail.append(f"  files: {len(m.files)} under {store.files_dir(m.fingerprint)}")
        blocks.append("\n".join([head, *detail]))
    return "\n   |\n   v\n".join(blocks)


def _compact(params: Any, limit: int = 400) -> str:
    import json

    text = json.dumps(params, sort_keys=True)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def publish_run(store: DatasetStore, rows: list[dict[str, Any]], outputs: Mapping[str, str]) -> None:
    """Show the receipt, the lineage diagram and the lineage table on the flow run's Artifacts tab."""
    from prefect.artifacts import create_table_artifact

    from flows.lineage_ui import publish_lineage

    create_table_artifact(rows, key="winnow-receipt", description="Rows in/out per stage, what was removed and why.")
    publish_lineage(store, outputs, lineage_mermaid(store, outputs))


def why_rows(table: pa.Table) -> list[dict[str, Any]]:
    """Ledger hits as plain rows for printing."""
    return table.to_pylist()
