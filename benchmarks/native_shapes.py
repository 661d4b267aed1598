"""Benchmark items written the way their sources ship them (MMLU, ARC, HellaSwag, GSM8K,
TruthfulQA-MC, lm-eval prompts): the inverse of :mod:`winnow.benchmark_formats`, used by the
contamination benchmark and tests to feed real items through every reader."""

from __future__ import annotations

import pyarrow as pa

SHAPES = ("mmlu", "mmlu_prompt", "arc", "hellaswag", "gsm8k", "truthfulqa_mc", "lm_eval")


def prompt_with_choices(question: str, choices: list[str]) -> str:
    """An MMLU-style prompt: the question, ``A. ...`` lines, and an ``Answer:`` cue."""
    opts = "\n".join(f"{chr(65 + i)}. {c}" for i, c in enumerate(choices))
    return f"{question}\n\n{opts}\nAnswer:"


def to_native(shape: str, rows: list[dict]) -> pa.Table:
    """Multiple-choice items (``BENCHMARK_SCHEMA`` dicts) in one native shape, with the extra fields
    a hub copy carries. The searchable text stays question + correct choice."""
    out = []
    for i, r in enumerate(rows):
        n, a = len(r["choices"]), r["answer"]
        if shape == "mmlu":
            out.append({"id": r["id"], "question": r["question"], "subject": "misc", "choices": r["choices"], "answer": a})
        elif shape == "mmlu_prompt":
            out.append({"id": r["id"], "question": prompt_with_choices(r["question"], r["choices"]),
                        "answer": chr(65 + a), "subject": "misc"})
        elif shape == "arc":
            out.append({"id": r["id"], "question": r["question"],
                        "choices": {"text": r["choices"], "label": [str(k + 1) for k in range(n)]},
                        "answerKey": str(a + 1)})
        elif shape == "hellaswag":
            out.append({"id": r["id"], "ind": i, "activity_label": "misc", "ctx_a": r["question"], "ctx_b": "",
                        "ctx": r["question"], "endings": r["choices"], "label": str(a), "split": "val"})
        elif shape == "gsm8k":
            out.append({"id": r["id"], "question": r["question"], "answer": r["target"]})
        elif shape == "truthfulqa_mc":
            order = [a] + [k for k in range(n) if k != a]
            out.append({"id": r["id"], "question": r["question"],
                        "mc1_targets": {"choices": [r["choices"][k] for k in order], "labels": [1] + [0] * (n - 1)},
                        "mc2_targets": {"choices": r["choices"], "labels": [int(k == a) for k in range(n)]}})
        elif shape == "lm_eval":
            out.append({"id": r["id"], "input": [{"role": "system", "content": "Answer with the letter of the option."},
                                                 {"role": "user", "content": prompt_with_choices(r["question"], r["choices"])}],
                        "ideal": chr(65 + a)})
        else:
            raise ValueError(shape)
    return pa.Table.from_pylist(out)
