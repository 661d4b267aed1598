"""Ablation receipts: the repetition probe, the paired bootstrap, and `winnow ablate` end to end."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

from tasks import ablation, compare, repeat
from winnow.cli import main
from winnow.errors import WinnowError


def _corpus(n: int = 50) -> pa.Table:
    return pa.table({"id": [f"d{i}" for i in range(n)], "text": [f"document number {i}" for i in range(n)],
                     "domain": ["a" if i % 2 else "b" for i in range(n)]})


def test_repeat_probe_copies_a_seeded_share_under_new_ids_with_a_ledger():
    result = repeat.run(_corpus(), repeat.Params(fraction=0.04, times=5, seed=3))
    out = result.tables["data"]
    assert out.num_rows == 50 + 2 * 5
    copies = out.slice(50)
    assert len(set(copies["id"].to_pylist())) == 10 and all("#rep" in i for i in copies["id"].to_pylist())
    sources = {json.loads(e)["copy_of"] for e in result.removed["evidence"].to_pylist()}
    assert len(sources) == 2 and set(copies["text"].to_pylist()) == {t for i, t in zip(out["id"].to_pylist()[:50], out["text"].to_pylist()[:50]) if i in sources}
    assert repeat.run(_corpus(), repeat.Params(fraction=0.04, times=5, seed=3)).tables["data"].equals(out)
    assert repeat.run(_corpus(), repeat.Params(fraction=0.0)).tables["data"].num_rows == 50
    with pytest.raises(WinnowError, match="fraction must be in"):
        repeat.Params(fraction=2)


def _docs(bits: np.ndarray, domains: list[str]) -> pa.Table:
    return pa.table({"key": [f"k{i}" for i in range(len(bits))], "domain": domains, "bits": bits,
                     "bytes": [100] * len(bits)}, schema=compare.DOCS_SCHEMA)


def test_bootstrap_difference_finds_a_real_gap_and_calls_noise_no_effect():
    rng = np.random.default_rng(0)
    domains = ["x"] * 40 + ["y"] * 40
    base = rng.normal(300, 30, size=80)
    a = [_docs(base + rng.normal(0, 2, 80), domains) for _ in range(3)]
    better = [_docs(base - 20 + rng.normal(0, 2, 80), domains) for _ in range(3)]  # 0.2 bits/byte better everywhere
    same = [_docs(base + rng.normal(0, 2, 80), domains) for _ in range(3)]
    rows = {r["domain"]: r for r in compare.bootstrap_difference(better, a, n_boot=500)}
    assert rows["mean"]["verdict"] == "better" and rows["mean"]["hi"] < 0
    assert rows["mean"]["difference"] == pytest.approx(-0.2, abs=0.02)
    rows = {r["domain"]: r for r in compare.bootstrap_difference(same, a, n_boot=500)}
    assert rows["mean"]["verdict"] == "no measurable effect" and rows["mean"]["lo"] < 0 < rows["mean"]["hi"]
    with pytest.raises(ValueError, match="same held-out rows"):
        compare.bootstrap_difference(a, [a[0].slice(1)])


def test_receipt_needs_the_full_variant_and_an_ablated_one():
    with pytest.raises(WinnowError, match="needs the full pipeline"):
        ablation.run(pa.table({"id": ["a"]}), ablation.Params(), model__full__0="x", examples__full__0=pa.table({}))


def test_ablate_rejects_unknown_stages_before_anything_runs(tmp_path, capsys):
    assert main(["ablate", "--stages", "dedup,tokenize", "--store", str(tmp_path / "s")]) == 2
    assert "unknown stage(s) tokenize" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_server")
def test_winnow_ablate_smoke_prints_a_receipt_with_intervals(tmp_path, capsys):
    code = main(["ablate", "--profile", "smoke", "--store", str(tmp_path / "s"), "--seeds", "2", "--stages", "dedup",
                 "--repeat-fraction", "0.01", "--repeat-times", "20", "--json"])
    assert code == 0, capsys.readouterr().err
    rows = json.loads(capsys.readouterr().out)["rows"]
    mean = next(r for r in rows if r["stage"] == "dedup" and r["subject"] == "mean")
    assert mean["lo"] <= mean["difference"] <= mean["hi"]
    assert mean["verdict"] in ("better", "worse", "no measurable effect")
