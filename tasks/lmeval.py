"""Parity with lm-evaluation-harness: the same items, scored by lm-eval's own ``hf`` model.

:func:`export_tasks` writes the benchmark items evaluate scores as local lm-eval tasks (one JSONL
file and one task YAML per benchmark and kind; ``dataset_path: json`` with ``data_files``, so
nothing comes from a hub). Each document carries the exact context winnow builds
(:func:`tasks.evaluate.example_texts`), its choice strings and the gold index; the YAML sets
``target_delimiter`` to winnow's ``choice_separator``. Multiple-choice items become a
``multiple_choice`` task (metrics ``acc``, ``acc_norm``, ``acc_bytes``), target items a
``loglikelihood`` task. :func:`run_lm_eval` runs them with ``lm_eval.simple_evaluate(model="hf")``
on the saved model folder (float32), keeping every sample, and :func:`compare` lines lm-eval's
per-item log-likelihoods and accuracies up against winnow's ``examples`` table.

lm-eval is an optional extra (``pip install 'winnow[lmeval]'``); :func:`require_lm_eval` fails
with one line when it is missing.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tasks import evaluate
from winnow.errors import WinnowError

#: Per item: winnow vs lm-eval.
PARITY_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("benchmark", pa.string()),
        ("kind", pa.string()),
        ("max_abs_diff", pa.float64()),  # over the item's choices (or its target), nats
        ("max_rel_diff", pa.float64()),  # max |diff| / max(1, |loglik|): lm-eval sums in float32
        ("pred", pa.int64()),
        ("pred_lm_eval", pa.int64()),
        ("pred_norm", pa.int64()),
        ("pred_norm_lm_eval", pa.int64()),
    ]
)


@dataclass
class LmEvalRun:
    """What lm-eval reported: per-task metrics and per-item log-likelihoods (id -> nats)."""

    results: dict[str, dict[str, Any]]
    logliks: dict[str, list[float]]
    preds: dict[str, tuple[int, int]] = field(default_factory=dict)  # id -> (acc pred, acc_norm pred)
    seconds: float = 0.0


def require_lm_eval() -> None:
    """One clear line when the optional lm-eval package is not installed."""
    if importlib.util.find_spec("lm_eval") is None:
        raise WinnowError("--lm-eval needs lm-evaluation-harness: pip install 'winnow[lmeval]' (lm-eval==0.4.13)")


def task_name(benchmark: str, kind: str) -> str:
    """A valid lm-eval task name for one benchmark's items of one kind."""
    safe = re.sub(r"[^A-Za-z0-9_]", "_", benchmark)
    return f"winnow_{safe}" + ("" if kind == "multiple_choice" else "_target")


def export_tasks(rows: list[dict[str, Any]], params: evaluate.Params, folder: Path) -> list[str]:
    """Write one lm-eval task (JSONL + YAML) per benchmark and kind into ``folder``; their names.

    ``rows`` are benchmark rows as :func:`tasks.evaluate.select_examples` returns them.
    """
    import yaml

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    docs: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        context, conts, strings = evaluate.example_texts(r, params)
        kind = "multiple_choice" if r["answer"] >= 0 else "target"
        doc = {"id": r["id"], "context": context}
        doc.update({"choices": strings, "answer": r["answer"]} if strings else {"target": conts[0]})
        docs.setdefault(task_name(r["benchmark"], kind), []).append(doc)
    for name, items in sorted(docs.items()):
        data = folder / f"{name}.jsonl"
        data.write_text("".join(json.dumps(d, ensure_ascii=False) + "\n" for d in items), encoding="utf-8")
        spec: dict[str, Any] = {
            "task": name,
            "dataset_path": "json",
            "dataset_kwargs": {"data_files": {"test": str(data.resolve())}},
            "test_split": "test",
            "doc_to_text": "context",
        }
        if "choices" in items[0]:
            spec.update(output_type="multiple_choice", doc_to_choice="choices", doc_to_target="answer",
                        target_delimiter=params.choice_separator,
                        metric_list=[{"metric": m, "aggregation": "mean", "higher_is_better": True}
                                     for m in ("acc", "acc_norm", "acc_bytes")])
        else:
            # lm-eval's default `perplexity` aggregate, exp(-mean ll), overflows for a weak model;
            # the per-item log-likelihoods are what is compared.
            spec.update(output_type="loglikelihood", doc_to_target="target", target_delimiter="",
                        metric_list=[{"metric": "acc", "aggregation": "mean", "higher_is_better": True}])
        (folder / f"{name}.yaml").write_text(yaml.safe_dump(spec, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return sorted(docs)


def run_lm_eval(model_dir: Path, tasks: list[str], folder: Path, batch_size: int = 16,
                device: str = "cpu", num_threads: int | None = None) -> LmEvalRun:
    """Run lm-eval's ``hf`` model (float32) on the exported ``tasks`` in ``folder``."""
    require_lm_eval()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    import torch
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    threads_before = torch.get_num_threads()
    if num_threads:
        torch.set_num_threads(num_threads)
    started = time.perf_counter()
    try:
        out = simple_evaluate(
            model="hf", model_args={"pretrained": str(model_dir), "dtype": "float32"}, tasks=tasks,
            batch_size=batch_size, device=device, task_manager=TaskManager(include_path=str(folder)),
            log_samples=True, bootstrap_iters=1000,
        )
    finally:
        torch.set_num_threads(threads_before)
    seconds = time.perf_counter() - started
    logliks: dict[str, list[float]] = {}
    preds: dict[str, tuple[int, int]] = {}
    for samples in out["samples"].values():
        for s in samples:
            ll = [float(r[0]) for r in s["filtered_resps"]]
            logliks[s["doc"]["id"]] = ll
            if "choices" in s["doc"]:
                chars = np.array([float(len(c)) for c in s["doc"]["choices"]])
                preds[s["doc"]["id"]] = (int(np.argmax(ll)), int(np.argmax(np.array(ll) / chars)))
    return LmEvalRun(results=out["results"], logliks=logliks, preds=preds, seconds=seconds)


def compare(examples: pa.Table, lm: LmEvalRun) -> tuple[pa.Table, list[dict[str, Any]]]:
    """Per-item parity rows and one summary row per benchmark (accuracies side by side).

    Raises:
        WinnowError: lm-eval scored other items than winnow (the export and the run disagree).
    """
    rows = []
    for e in examples.to_pylist():
        theirs = lm.logliks.get(e["id"])
        if theirs is None or len(theirs) != len(e["logliks"]):
            raise WinnowError(f"lm-eval parity: item {e['id']!r} is missing from lm-eval's samples or has other choices")
        pred, pred_norm = lm.preds.get(e["id"], (-1, -1))
        diff = np.array(theirs) - np.array(e["logliks"])
        rows.append({"id": e["id"], "benchmark": e["benchmark"], "kind": e["kind"],
                     "max_abs_diff": float(np.max(np.abs(diff))),
                     "max_rel_diff": float(np.max(np.abs(diff) / np.maximum(1.0, np.abs(np.array(e["logliks"]))))),
                     "pred": e["pred"], "pred_lm_eval": pred, "pred_norm": e["pred_norm"], "pred_norm_lm_eval": pred_norm})
    table = pa.Table.from_pylist(rows, schema=PARITY_SCHEMA)
    summary = []
    for bench in sorted({r["benchmark"] for r in rows}):
        mine = [r for r in rows if r["benchmark"] == bench]
        mc = [r for r in mine if r["kind"] == "multiple_choice"]
        res = lm.results.get(task_name(bench, "multiple_choice"), {})
        summary.append({
            "benchmark": bench,
            "items": len(mine),
            "max_abs_diff": max(r["max_abs_diff"] for r in mine),
            "max_rel_diff": max(r["max_rel_diff"] for r in mine),
            "same_pred": sum(r["pred"] == r["pred_lm_eval"] and r["pred_norm"] == r["pred_norm_lm_eval"] for r in mc),
            "lm_eval_acc": res.get("acc,none"),
            "lm_eval_acc_stderr": res.get("acc_stderr,none"),
            "lm_eval_acc_norm": res.get("acc_norm,none"),
            "lm_eval_acc_bytes": res.get("acc_bytes,none"),
        })
    return table, summary


def parity(model_dir: Path, benchmarks: pa.Table, params: evaluate.Params, examples: pa.Table, folder: Path,
           context_len: int, batch_size: int | None = None, device: str = "cpu") -> tuple[pa.Table, list[dict[str, Any]], LmEvalRun]:
    """Export the items in ``examples`` (winnow's scored items), run lm-eval on them, compare.

    Items longer than ``context_len`` tokens are left out, and counted in the summary as
    ``too_long``: winnow scores them in sliding windows, while lm-eval cuts the context from the
    left (and refuses a continuation longer than the context), so the two are not meant to agree.
    """
    require_lm_eval()
    from transformers import AutoTokenizer

    encoder = evaluate.Encoder(AutoTokenizer.from_pretrained(model_dir, local_files_only=True))
    scored = set(examples["id"].to_pylist())
    rows, too_long = [], {}
    for r in evaluate.select_examples(benchmarks, params):
        if r["id"] not in scored:
            continue
        context, conts, _ = evaluate.example_texts(r, params)
        if max(len(encoder.pair(context, c)[0]) for c in conts) > context_len:
            too_long[r["benchmark"]] = too_long.get(r["benchmark"], 0) + 1
        else:
            rows.append(r)
    if not rows:
        raise WinnowError(f"lm-eval parity: every scored item is longer than the {context_len}-token context")
    names = export_tasks(rows, params, folder)
    lm = run_lm_eval(model_dir, names, folder, batch_size or params.batch_size, device, params.num_threads)
    kept = pa.array([r["id"] for r in rows])
    table, summary = compare(examples.filter(pc.is_in(examples["id"], value_set=kept)), lm)
    for s in summary:
        s["too_long"] = too_long.get(s["benchmark"], 0)
    return table, summary, lm
