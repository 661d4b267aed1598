"""Benchmark files in their native shapes: real MMLU items from the bundled sample, written the way
MMLU, ARC, HellaSwag, GSM8K, TruthfulQA-MC and lm-eval prompt files hold them."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tasks.common import BENCHMARK_SCHEMA
from benchmarks.native_shapes import SHAPES, prompt_with_choices, to_native
from winnow import io as wio
from winnow.benchmark_formats import FORMATS, detect, split_prompt_choices
from winnow.errors import WinnowError

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "sample" / "benchmarks.parquet"


@pytest.fixture(scope="module")
def mmlu() -> list[dict]:
    rows = [r for r in pq.read_table(SAMPLE).to_pylist() if r["benchmark"] == "mmlu"]
    return rows[:6]


def _native(fmt: str, rows: list[dict]) -> pa.Table:
    return to_native(fmt, rows)


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_each_native_format_is_detected_and_keeps_the_item(fmt, mmlu):
    table = _native(fmt, mmlu)
    assert detect(table) == fmt
    out = wio.canonical_benchmarks(table, f"b.{fmt}", "bench")
    assert out.select(BENCHMARK_SCHEMA.names).schema == BENCHMARK_SCHEMA
    assert out["format"].to_pylist() == [fmt] * len(mmlu)
    for r, got in zip(mmlu, out.to_pylist()):
        assert r["question"] in got["question"]
        assert got["benchmark"] == "bench"
        assert got["id"] == r["id"]
        if fmt == "gsm8k":
            assert got["answer"] == -1 and got["target"] == r["target"]
        else:
            assert got["target"] == r["target"] and got["choices"][got["answer"]] == r["target"]
            assert sorted(got["choices"]) == sorted(r["choices"])
    extra = json.loads(out["extra"][0].as_py())
    kept = {"mmlu": "subject", "mmlu_prompt": "subject", "hellaswag": "activity_label",
            "truthfulqa_mc": "mc2_targets", "arc": None, "gsm8k": None, "lm_eval": None}[fmt]
    if kept:
        assert kept in extra  # extra fields are kept, not errors
    assert set(SHAPES) == set(FORMATS)


def test_prompt_stem_drops_choice_lines_and_answer_cue(mmlu):
    stem, choices = split_prompt_choices(prompt_with_choices(mmlu[0]["question"], mmlu[0]["choices"]))
    assert stem == mmlu[0]["question"] and choices == mmlu[0]["choices"]
    # QuaRTz writes " A: ..." with a leading space
    stem, choices = split_prompt_choices("The resistance\n\n A: increases\n B: decreases")
    assert stem == "The resistance" and choices == ["increases", "decreases"]


def test_format_can_be_forced_and_fields_mapped(mmlu):
    table = pa.Table.from_pylist([{"problem": r["question"], "solution": r["target"], "uid": f"u{i}"}
                                  for i, r in enumerate(mmlu)])
    with pytest.raises(WinnowError, match=r"cannot tell the benchmark format from its fields \(problem, solution, uid\);"
                                          r" known formats: truthfulqa_mc, hellaswag, arc, mmlu"):
        wio.canonical_benchmarks(table, "b.jsonl", "b")
    out = wio.canonical_benchmarks(table, "b.jsonl", "b", fields={"question": "problem", "target": "solution", "id": "uid"})
    assert out["target"].to_pylist() == [r["target"] for r in mmlu] and out["id"][0].as_py() == "u0"
    # a free-text "answer" column read as GSM8K when forced, though its answers look like letters
    letters = pa.Table.from_pylist([{"question": "Pick one", "answer": "B"}])
    with pytest.raises(WinnowError, match="names none of the 0 choices"):
        wio.canonical_benchmarks(letters, "b.jsonl", "b")
    assert wio.canonical_benchmarks(letters, "b.jsonl", "b", fmt="gsm8k")["target"].to_pylist() == ["B"]


def test_bad_benchmark_input_names_rows_and_items(mmlu):
    with pytest.raises(WinnowError, match=r"unknown benchmark field role\(s\) \['questoin'\]"):
        wio.canonical_benchmarks(_native("mmlu", mmlu), "b.jsonl", "b", fields={"questoin": "question"})
    with pytest.raises(WinnowError, match=r"mapped benchmark column\(s\) \['problem'\] not found"):
        wio.canonical_benchmarks(_native("mmlu", mmlu), "b.jsonl", "b", fields={"question": "problem"})
    with pytest.raises(WinnowError, match=r"unknown benchmark format 'mmlu5'"):
        wio.canonical_benchmarks(_native("mmlu", mmlu), "b.jsonl", "b", fmt="mmlu5")
    arc = _native("arc", mmlu).to_pylist()
    arc[2]["answerKey"] = "E"
    with pytest.raises(WinnowError, match=r"b.jsonl: row 2: 'answerKey' 'E' is not one of the labels"):
        wio.canonical_benchmarks(pa.Table.from_pylist(arc), "b.jsonl", "b")
    empty = pa.Table.from_pylist([{"id": "k1", "question": " ", "target": ""}, {"id": "k2", "question": "ok", "target": "x"},
                                  {"id": "k3", "question": "", "target": None}])
    with pytest.raises(WinnowError, match=r"2 item\(s\) have no searchable text .*'k1', 'k3'"):
        wio.canonical_benchmarks(empty, "b.jsonl", "b")
    with pytest.raises(WinnowError, match=r"format 'hellaswag' needs field\(s\) \['endings'\]"):
        wio.canonical_benchmarks(_native("mmlu", mmlu), "b.jsonl", "b", fmt="hellaswag")


def test_datasets_folder_in_a_native_format_is_read(tmp_path, mmlu):
    import datasets

    datasets.Dataset(_native("hellaswag", mmlu)).save_to_disk(str(tmp_path / "hs"))
    out = wio.canonical_benchmarks(wio.read_table(tmp_path / "hs"), str(tmp_path / "hs"), "hellaswag")
    assert out["target"].to_pylist() == [r["target"] for r in mmlu]
