"""Model-side leak check: a small model trained on some real benchmark items predicts them much
better than reordered copies, compared with items it never saw."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tasks import leakcheck, tokenize, train
from winnow.errors import WinnowError

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "sample" / "benchmarks.parquet"
TINY = dict(d_model=64, n_layers=2, n_heads=2, seq_len=64, batch_size=8, warmup_steps=5, lr=5e-3, num_threads=1)


def _train(corpus: pa.Table, folder: Path, steps: int) -> Path:
    """A tiny model trained ``steps`` steps on ``corpus`` (tokenized with its own 512-token BPE)."""
    tokens = folder / "tokens"
    if not tokens.exists():
        tokenize.run(corpus, tokenize.Params(vocab_size=512), tokens)
    train.run(tokens, train.Params(**TINY, max_steps=steps), folder / f"model-{steps}")
    return folder / f"model-{steps}"


def _items() -> tuple[pa.Table, pa.Table, pa.Table]:
    """(20 SocialIQA items a model is trained on, 20 it never sees as reference texts, corpus)."""
    table = pq.read_table(SAMPLE)
    items = table.filter(pa.compute.equal(table["benchmark"], "socialiqa")).slice(0, 40)
    seen, unseen = items.slice(0, 20), items.slice(20, 20)
    texts = [f"{q} {t}" for q, t in zip(seen["question"].to_pylist(), seen["target"].to_pylist())] * 25
    licences = [p.read_text(errors="replace")[:3000] for p in sorted(Path("/usr/share/common-licenses").iterdir())
                if p.is_file()][:8]
    rng = np.random.default_rng(0)
    corpus = pa.table({"text": [texts[i] for i in rng.permutation(len(texts))] + licences})
    reference = pa.table({"text": [f"{q} {t}" for q, t in zip(unseen["question"].to_pylist(), unseen["target"].to_pylist())]})
    return seen, reference, corpus


@pytest.mark.slow
def test_items_seen_in_training_have_an_excess_gap_above_zero(tmp_path):
    seen, reference, corpus = _items()
    trained = _train(corpus, tmp_path, 150)  # about 35 s on a loaded 2-core box
    untrained = _train(corpus, tmp_path, 0)
    params = leakcheck.Params(bootstrap=500)
    leaky = leakcheck.run(trained, seen, params, reference=reference).tables["benchmarks"].to_pylist()[0]
    assert leaky["items"] == 20 and leaky["leak_excess_lo"] > 0  # the interval is above 0
    fresh = leakcheck.run(untrained, seen, params, reference=reference).tables["benchmarks"].to_pylist()[0]
    assert fresh["leak_excess_lo"] <= 0 <= fresh["leak_excess_hi"]  # an untrained model knows neither
    print(f"trained: excess {leaky['leak_excess']:.3f} ({leaky['leak_excess_lo']:.3f}-{leaky['leak_excess_hi']:.3f}); "
          f"untrained: {fresh['leak_excess']:.3f} ({fresh['leak_excess_lo']:.3f}-{fresh['leak_excess_hi']:.3f})")


def test_perturbation_keeps_the_words_and_bad_input_is_named(tmp_path):
    rng = np.random.default_rng(1)
    text = "Alex found a ring on the beach and tried to find who it belonged to"
    copy = leakcheck.perturb(text, 0.15, rng)
    assert copy != text and sorted(copy.split()) == sorted(text.split())
    seen, _, _ = _items()
    with pytest.raises(WinnowError, match="not a model folder"):
        leakcheck.run(tmp_path, seen)
    # the tables are checked before the model is looked at or loaded
    with pytest.raises(WinnowError, match=r"missing column\(s\) \['target'\]"):
        leakcheck.run(tmp_path, seen.drop_columns(["target"]))
    with pytest.raises(WinnowError, match=r"leakcheck reference: missing column\(s\) \['text'\]"):
        leakcheck.run(tmp_path, seen, reference=pa.table({"body": ["x"]}))


@pytest.mark.slow
def test_evaluate_reports_a_larger_gap_on_the_items_a_model_trained_on(tmp_path):
    """Wired into evaluate: with a contamination report marking the trained-on items, their
    subset's leak excess is above 0 and above the clean subset's."""
    from tasks import evaluate

    seen, reference, corpus = _items()
    table = pq.read_table(SAMPLE)
    items = table.filter(pa.compute.equal(table["benchmark"], "socialiqa")).slice(0, 40)
    trained = _train(corpus, tmp_path, 150)
    heldout = pa.table({"id": [f"r{i}" for i in range(reference.num_rows)], "text": reference["text"],
                        "domain": ["unseen"] * reference.num_rows})
    report = pa.table({"id": items["id"], "benchmark": items["benchmark"],
                       "contaminated": [i < 20 for i in range(40)]})
    result = evaluate.run(trained, heldout, items, evaluate.Params(num_threads=1, leak_perturbations=3),
                          contamination=report)
    rows = {r["subset"]: r for r in result.tables["benchmarks"].to_pylist() if r["benchmark"] == "socialiqa"}
    assert rows["contaminated"]["leak_excess_lo"] > 0
    assert rows["contaminated"]["leak_gap_lo"] > rows["clean"]["leak_gap_hi"]
