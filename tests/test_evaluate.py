"""Evaluate stage: metric math on hand-made numbers, windowed scoring, bits/byte, benchmark subsets."""

from __future__ import annotations

import glob
import math
import os

import numpy as np
import pyarrow as pa
import pytest

from tasks import evaluate, mixture, tokenize, train
from tasks.common import BENCHMARK_SCHEMA
from tasks.evaluate import (
    Params,
    brier_score,
    choice_scores,
    expected_calibration_error,
    score_requests,
    windows,
)
from winnow.errors import WinnowError

TINY = dict(vocab_size=512, d_model=64, n_layers=2, n_heads=2, seq_len=64, batch_size=8, warmup_steps=5, lr=5e-3, num_threads=1)
FAST = dict(max_docs_per_domain=4, batch_size=32, num_threads=1)


# --- metric math ---------------------------------------------------------------------------------


def test_perfect_knowledge_gives_zero_ece_and_brier():
    conf, correct = np.ones(20), np.ones(20, dtype=bool)
    assert expected_calibration_error(conf, correct) == 0.0
    assert brier_score([np.array([1.0, 0.0, 0.0])] * 20, [0] * 20) == 0.0


def test_confidently_wrong_is_the_worst_case():
    assert expected_calibration_error(np.ones(10), np.zeros(10, dtype=bool)) == pytest.approx(1.0)
    assert brier_score([np.array([0.0, 1.0])] * 10, [0] * 10) == pytest.approx(2.0)


def test_calibrated_bins_give_zero_ece_and_miscalibration_is_weighted_by_bin_size():
    # 10 items at 0.7 with 7 right, 10 at 0.95 with 9.5... use 20 at 0.95 with 19 right.
    conf = np.array([0.7] * 10 + [0.95] * 20)
    correct = np.array([1] * 7 + [0] * 3 + [1] * 19 + [0])
    assert expected_calibration_error(conf, correct, bins=15) == pytest.approx(0.0, abs=1e-12)
    # Same confidences, all right: gaps 0.3 (weight 1/3) and 0.05 (weight 2/3).
    assert expected_calibration_error(conf, np.ones(30), bins=15) == pytest.approx(0.3 / 3 + 0.05 * 2 / 3)


def test_choice_scores_on_hand_made_logits():
    s = choice_scores(np.log([0.7, 0.2, 0.1]), choices=["a", "b", "c"], answer=0)
    assert (s["pred"], s["correct"]) == (0, True)
    assert s["confidence"] == pytest.approx(0.7) and s["prob_answer"] == pytest.approx(0.7)
    assert brier_score([s["probs"]], [0]) == pytest.approx(0.09 + 0.04 + 0.01)
    # Length normalisation flips a long right answer that loses on raw log-likelihood.
    s = choice_scores([-2.0, -1.5, -3.0], choices=["x" * 10, "y", "z"], answer=0)
    assert (s["pred"], s["correct"], s["pred_norm"], s["correct_norm"]) == (1, False, 0, True)
    # acc_norm counts characters (lm-eval), acc_bytes UTF-8 bytes: "éééé" is 4 characters, 8 bytes.
    s = choice_scores([-2.5, -1.0], choices=["éééé", "ab"], answer=0)  # per char -0.625 < -0.5; per byte -0.31 > -0.5
    assert (s["pred_norm"], s["pred_bytes"]) == (1, 0)


def test_windows_score_every_token_once_within_the_context():
    tokens = list(range(1000))
    for ctx, stride in [(64, 63), (64, 32), (64, 500), (128, 1)]:
        ws = windows(tokens, first=1, context_len=ctx, stride=stride)
        scored = []
        for w, first in ws:
            assert 1 <= first < len(w) <= ctx
            scored.extend(w[first:])
            if w[first] > ctx:  # past the start, each window carries at least ctx - stride context
                assert first >= ctx - min(stride, ctx - 1)
        assert scored == tokens[1:]


# --- scoring with a real trained model -----------------------------------------------------------


def _corpus() -> pa.Table:
    rows = []
    for f in sorted(glob.glob("/usr/lib/python3.11/*.py"))[:60]:
        rows.append({"id": f, "text": open(f, encoding="utf-8").read(), "domain": "code"})
    for f in sorted(glob.glob("/usr/share/common-licenses/*")):
        if os.path.isfile(f):
            rows.append({"id": f, "text": open(f, encoding="utf-8", errors="replace").read(), "domain": "legal"})
    return pa.Table.from_pylist(rows)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """(trained_dir, untrained_dir, heldout) from a real mixture of Python code and licences."""
    mixed = mixture.run(_corpus(), mixture.Params(train_bytes=250_000, chunk_bytes=2048, method="uniform"))
    trained = tmp_path_factory.mktemp("trained")
    untrained = tmp_path_factory.mktemp("untrained")
    tokens = tmp_path_factory.mktemp("tokens")
    tokenize.run(mixed.tables["data"], tokenize.Params(vocab_size=TINY["vocab_size"]), tokens)
    shape = {k: v for k, v in TINY.items() if k != "vocab_size"}  # the vocabulary is tokenize's
    train.run(tokens, train.Params(**shape, max_steps=40), trained)
    train.run(tokens, train.Params(**shape, max_steps=0), untrained)
    return trained, untrained, mixed.tables["heldout"]


def _benchmarks() -> pa.Table:
    rows = [
        {"id": "mc1", "benchmark": "toy", "question": "import", "choices": ["os", "banana"], "answer": 0, "target": " os"},
        {"id": "mc2", "benchmark": "toy", "question": "def f(x):\n    return", "choices": ["x", "GNU General Public"], "answer": 0, "target": " x"},
        {"id": "mc3", "benchmark": "toy", "question": "This program is free", "choices": ["software", "lunch", "beer"], "answer": 0, "target": " software"},
        {"id": "mc4", "benchmark": "toy", "question": "for i in", "choices": ["range(10):", "the"], "answer": 0, "target": " range(10):"},
        {"id": "he1", "benchmark": "code_gen", "question": "def add(a, b):\n", "choices": [], "answer": -1, "target": "    return a + b\n"},
    ]
    return pa.Table.from_pylist(rows, schema=BENCHMARK_SCHEMA)


def _load(model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True).eval(), AutoTokenizer.from_pretrained(model_dir)


def test_trained_model_has_lower_bits_per_byte_than_untrained(models):
    trained, untrained, heldout = models
    empty = BENCHMARK_SCHEMA.empty_table()
    good = evaluate.run(trained, heldout, empty, Params(**FAST))
    base = evaluate.run(untrained, heldout, empty, Params(**FAST))
    for g, b in zip(good.tables["data"].to_pylist(), base.tables["data"].to_pylist()):
        assert g["domain"] == b["domain"] and g["bytes"] == b["bytes"]
        assert g["bits_per_byte"] < b["bits_per_byte"] - 0.5
    # An untrained model is near-uniform over the vocabulary: ~ln(512) nats per token.
    assert base.tables["data"]["nats_per_token"][0].as_py() == pytest.approx(math.log(512), abs=0.3)
    assert good.metrics["bits_per_byte_mean"] < base.metrics["bits_per_byte_mean"]


def test_batched_padded_scoring_matches_the_model_loss(models):
    import torch

    model, tok = _load(models[0])
    texts = ["def main():\n    print('hello')\n", "Copyright (C) 2007 Free Software Foundation", "x = 1"]
    reqs = [([tok.eos_token_id, *tok(t)["input_ids"]], 1) for t in texts]
    nll = score_requests(model, reqs, batch_size=3, device="cpu", dtype="float32")
    for (ids, _), got in zip(reqs, nll):
        x = torch.tensor([ids])
        with torch.no_grad():
            want = model(input_ids=x, labels=x).loss.item() * (len(ids) - 1)
        assert got == pytest.approx(want, rel=1e-4)


def test_bits_per_byte_counts_all_bytes_and_ignores_row_order(models):
    trained, _, heldout = models
    a = evaluate.run(trained, heldout, BENCHMARK_SCHEMA.empty_table(), Params(**FAST))
    shuffled = heldout.take(np.random.default_rng(0).permutation(heldout.num_rows))
    b = evaluate.run(trained, shuffled, BENCHMARK_SCHEMA.empty_table(), Params(**FAST))
    for row, other in zip(a.tables["data"].to_pylist(), b.tables["data"].to_pylist()):
        assert (row["domain"], row["docs"], row["bytes"], row["tokens"]) == (other["domain"], other["docs"], other["bytes"], other["tokens"])
        assert row["bits_per_byte"] == pytest.approx(other["bits_per_byte"], rel=1e-5)  # same docs, other batches
        assert row["docs"] == 4
        assert row["bits_per_byte"] == pytest.approx(row["nats_per_token"] * row["tokens"] / (math.log(2) * row["bytes"]))


def test_benchmark_examples_match_direct_log_likelihoods(models):
    import torch

    trained, _, heldout = models
    line = {"id": "line1", "benchmark": "quiz", "question": "Come live with me", "choices": [], "answer": -1, "target": "And we will"}
    benchmarks = pa.concat_tables([_benchmarks(), pa.Table.from_pylist([line], schema=BENCHMARK_SCHEMA)])
    result = evaluate.run(trained, heldout.slice(0, 2), benchmarks, Params(**FAST))
    model, tok = _load(trained)
    ex = {r["id"]: r for r in result.tables["examples"].to_pylist()}

    def loglik(context: str, continuation: str) -> float:
        # lm-eval's _encode_pair: trailing whitespace moves to the continuation, the pair is encoded
        # whole, and the continuation is what follows the context's own tokens.
        n = len(context) - len(context.rstrip())
        if n:
            context, continuation = context[:-n], context[-n:] + continuation
        ctx = tok.encode(context)
        ids = ctx + tok.encode(context + continuation)[len(ctx):]
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].float(), -1)
        return float(sum(logp[p - 1, ids[p]] for p in range(len(ctx), len(ids))))

    prompt = "Question: This program is free\nAnswer:"  # the default mc_template
    assert ex["mc3"]["logliks"] == pytest.approx([loglik(prompt, " " + c) for c in ["software", "lunch", "beer"]], rel=1e-4)
    assert ex["mc1"]["pred"] == int(np.argmax(ex["mc1"]["logliks"]))
    he = ex["he1"]
    # The prompt's final newline is scored with the target (lm-eval moves it), so it is counted too.
    assert he["kind"] == "target" and he["target_bytes"] == len("\n    return a + b\n")
    assert he["bits_per_byte"] == pytest.approx(-loglik("def add(a, b):\n", "    return a + b\n") / (math.log(2) * 18), rel=1e-4)
    # The target separator joins question and target: scored as lm-eval scores a trailing newline.
    want = -loglik("Come live with me\n", "And we will") / (math.log(2) * len("\nAnd we will"))
    assert ex["line1"]["bits_per_byte"] == pytest.approx(want, rel=1e-4)
    rows = {(r["benchmark"], r["subset"]): r for r in result.tables["benchmarks"].to_pylist()}
    toy = rows[("toy", "all")]
    mc = [ex[i] for i in ("mc1", "mc2", "mc3", "mc4")]
    assert toy["n"] == 4 and toy["accuracy"] == pytest.approx(np.mean([e["correct"] for e in mc]))
    assert toy["ece"] == pytest.approx(expected_calibration_error([e["confidence"] for e in mc], [e["correct"] for e in mc]))
    assert rows[("code_gen", "all")]["accuracy"] is None and rows[("code_gen", "all")]["bits_per_byte"] == pytest.approx(he["bits_per_byte"])
    assert result.metrics["accuracy/toy"] == pytest.approx(toy["accuracy"], abs=1e-5)


def test_byte_cap_bounds_the_scored_text_per_domain(models):
    trained, _, heldout = models
    capped = evaluate.run(trained, heldout, BENCHMARK_SCHEMA.empty_table(), Params(**{**FAST, "max_docs_per_domain": None, "max_bytes_per_domain": 5000}))
    for row in capped.tables["data"].to_pylist():
        assert 1 <= row["docs"] and (row["bytes"] <= 5000 or row["docs"] == 1)


def test_contamination_report_splits_every_metric_into_subsets(models):
    trained, _, heldout = models
    report = pa.table(
        {
            "id": ["mc1", "mc2", "mc3", "mc4", "he1"],
            "benchmark": ["toy", "toy", "toy", "toy", "code_gen"],
            "contaminated": [True, False, False, True, False],
        }
    )
    result = evaluate.run(trained, heldout.slice(0, 2), _benchmarks(), Params(**FAST), contamination=report)
    rows = {(r["benchmark"], r["subset"]): r for r in result.tables["benchmarks"].to_pylist()}
    assert [rows[("toy", s)]["n"] for s in ("all", "clean", "contaminated")] == [4, 2, 2]
    ex = {r["id"]: r for r in result.tables["examples"].to_pylist()}
    clean_acc = np.mean([ex["mc2"]["correct"], ex["mc3"]["correct"]])
    assert rows[("toy", "clean")]["accuracy"] == pytest.approx(clean_acc)
    assert result.metrics["accuracy_gap/toy"] == pytest.approx(rows[("toy", "all")]["accuracy"] - clean_acc, abs=1e-5)
    assert rows[("code_gen", "contaminated")]["n"] == 0 and rows[("code_gen", "contaminated")]["bits_per_byte"] is None
    assert ex["mc1"]["contaminated"] is True and ex["mc2"]["contaminated"] is False


def test_contamination_report_must_cover_every_example(models):
    trained, _, heldout = models
    report = pa.table({"id": ["mc1"], "contaminated": [True]})
    with pytest.raises(WinnowError, match="no row for example id 'mc2'"):
        evaluate.run(trained, heldout.slice(0, 1), _benchmarks(), Params(**FAST), contamination=report)


def test_bad_inputs_name_the_problem(models, tmp_path):
    trained, _, heldout = models
    bad = _benchmarks().to_pylist()
    bad[0]["answer"] = 5
    with pytest.raises(WinnowError, match="'mc1' has answer 5 but 2 choices"):
        evaluate.run(trained, heldout, pa.Table.from_pylist(bad, schema=BENCHMARK_SCHEMA), Params(**FAST))
    with pytest.raises(WinnowError, match="no saved model"):
        evaluate.run(tmp_path, heldout, _benchmarks(), Params(**FAST))
    with pytest.raises(WinnowError, match="held-out table is empty"):
        evaluate.run(trained, heldout.slice(0, 0), _benchmarks(), Params(**FAST))


# --- intervals, temperature scaling, answer position ---------------------------------------------


def test_bootstrap_interval_is_seeded_and_matches_the_normal_approximation():
    from tasks.eval_metrics import mean_with_interval, resamples

    correct = (np.random.default_rng(1).random(400) < 0.3).astype(float)
    idx = resamples(len(correct), 2000, "seed|bench|all")
    mean, lo, hi = mean_with_interval(correct, idx)
    assert (mean, lo, hi) == mean_with_interval(correct, resamples(len(correct), 2000, "seed|bench|all"))
    assert lo < mean < hi
    # lm-eval's mean_stderr for acc: sample std / sqrt(n); a 95% normal interval is ±1.96 of it.
    stderr = correct.std(ddof=1) / math.sqrt(len(correct))
    assert hi - lo == pytest.approx(2 * 1.96 * stderr, rel=0.1)
    assert mean_with_interval(correct, resamples(len(correct), 2000, "other seed"))[1] != lo


def test_vectorised_ece_equals_the_ece_of_each_resample():
    from tasks.eval_metrics import ece_bootstrap, resamples

    rng = np.random.default_rng(2)
    conf, correct = rng.random(50), rng.random(50) < 0.5
    idx = resamples(50, 20, "k")
    fast = ece_bootstrap(conf, correct, idx, 15)
    slow = [expected_calibration_error(conf[i], correct[i], 15) for i in idx]
    assert fast == pytest.approx(slow, abs=1e-12)


def test_temperature_scaling_undoes_overconfidence_on_held_out_items():
    from tasks.eval_metrics import fit_temperature, in_fit_split, softmax

    rng = np.random.default_rng(3)
    true_logits = rng.normal(size=(2000, 4))
    answers = [int(rng.choice(4, p=softmax(z))) for z in true_logits]  # calibrated at T = 1
    logliks = list(3.0 * true_logits)  # the model is 3x too sharp
    fit = in_fit_split([f"q{i}" for i in range(2000)], "salt")
    assert 0.45 < fit.mean() < 0.55 and (fit == in_fit_split([f"q{i}" for i in range(2000)], "salt")).all()
    t = fit_temperature([logliks[i] for i in np.flatnonzero(fit)], [answers[i] for i in np.flatnonzero(fit)])
    assert t == pytest.approx(3.0, rel=0.15)
    test = np.flatnonzero(~fit)

    def ece(temp):
        p = [softmax(logliks[i], temp) for i in test]
        return expected_calibration_error(np.array([q.max() for q in p]), np.array([int(np.argmax(q)) == answers[i] for q, i in zip(p, test)]))

    assert ece(t) < ece(1.0) / 3


def test_run_reports_intervals_calibration_split_and_answer_positions(models):
    trained, _, heldout = models
    bench = _benchmarks()
    result = evaluate.run(trained, heldout.slice(0, 3), bench, Params(**FAST, bootstrap_iters=200))
    rows = {(r["benchmark"], r["subset"]): r for r in result.tables["benchmarks"].to_pylist()}
    toy = rows[("toy", "all")]
    for name in ("accuracy", "accuracy_norm", "accuracy_bytes", "ece", "brier"):
        assert toy[f"{name}_lo"] <= toy[name] <= toy[f"{name}_hi"], name
    ex = result.tables["examples"].to_pylist()
    assert toy["n_calibration"] == sum(1 for e in ex if e["kind"] == "multiple_choice" and not e["calibration_fit"])
    assert toy["temperature"] is None and toy["ece_after"] is None and toy["agreement"] is None  # 4 items: no fit
    few = evaluate.run(trained, heldout.slice(0, 1), bench, Params(**FAST, bootstrap_iters=50, min_calibration_items=1))
    fitted = [r for r in few.tables["benchmarks"].to_pylist() if r["benchmark"] == "toy"][0]
    assert fitted["temperature"] > 0 and (fitted["ece_after"] is None) == (fitted["n_calibration"] == 0)
    for d in result.tables["data"].to_pylist():
        assert d["bits_per_byte_lo"] <= d["bits_per_byte"] <= d["bits_per_byte_hi"]
    positions = result.tables["positions"].to_pylist()
    assert [p["position"] for p in positions] == [0, 1, 2]  # mc3 has three choices
    assert positions[0]["n_gold"] == 4 and sum(p["n_pred"] for p in positions) == 4  # every answer is at 0
    assert positions[0]["accuracy"] == pytest.approx(toy["accuracy"])
    again = evaluate.run(trained, heldout.slice(0, 3), bench, Params(**FAST, bootstrap_iters=200))
    assert again.tables["benchmarks"].equals(result.tables["benchmarks"])  # seeded: same intervals


def test_letters_format_lists_the_choices_and_the_rotation_check_scores_them_again(models):
    trained, _, heldout = models
    params = Params(**FAST, mc_format="letters", permutation_check=True, bootstrap_iters=50)
    row = _benchmarks().to_pylist()[2]
    context, conts, strings = evaluate.example_texts(row, params)
    assert context == "This program is free\nA. software\nB. lunch\nC. beer\nAnswer:" and conts == [" A", " B", " C"]
    rotated = evaluate.example_texts(row, params, rotate=True)[0]
    assert rotated == "This program is free\nA. lunch\nB. beer\nC. software\nAnswer:"
    result = evaluate.run(trained, heldout.slice(0, 1), _benchmarks(), params)
    toy = [r for r in result.tables["benchmarks"].to_pylist() if r["benchmark"] == "toy"][0]
    ex = [e for e in result.tables["examples"].to_pylist() if e["kind"] == "multiple_choice"]
    assert toy["agreement"] == pytest.approx(np.mean([e["pred_rotated"] == e["pred"] for e in ex]))
    with pytest.raises(ValueError, match="permutation_check needs mc_format = 'letters'"):
        Params(permutation_check=True)


def test_encoder_moves_trailing_whitespace_and_uses_the_prefix_for_an_empty_context(models):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(models[0])
    enc = evaluate.Encoder(tok)
    toks, first = enc.pair("Answer: ", "yes")
    assert toks[:first] == tok.encode("Answer:") and toks[first:] == tok.encode("Answer: yes")[first:]
    toks, first = enc.pair("", "yes")
    assert (toks[0], first) == (tok.eos_token_id, 1)


def test_a_model_folder_that_does_not_load_fails_before_scoring(models, tmp_path):
    import shutil

    trained, _, heldout = models
    broken = tmp_path / "broken"
    shutil.copytree(trained, broken)
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(WinnowError, match=r"the model in .*broken does not load"):
        evaluate.run(broken, heldout, _benchmarks(), Params(**FAST))
    (broken / "model.safetensors").unlink()
    with pytest.raises(WinnowError, match="no weights"):
        evaluate.run(broken, heldout, _benchmarks(), Params(**FAST))
    with pytest.raises(WinnowError, match="context_len=4096 exceeds the model's context of 64 tokens"):
        evaluate.run(trained, heldout, _benchmarks(), Params(**FAST, context_len=4096))


def test_bf16_autocast_path_runs_on_cpu_and_stays_close_to_float32(models):
    """The GPU recipe (bf16 autocast, log-probabilities in float32), exercised on CPU for its logic."""
    model, tok = _load(models[0])
    reqs = [([tok.eos_token_id, *tok(t)["input_ids"]], 1) for t in ["def main():\n    return 0\n", "GNU General Public License"]]
    full = score_requests(model, reqs, batch_size=2, device="cpu", dtype="float32")
    half = score_requests(model, reqs, batch_size=2, device="cpu", dtype="bfloat16")
    assert half.dtype == np.float64 and not np.allclose(half, full, rtol=0, atol=0)  # bf16 really ran
    assert half == pytest.approx(full, rel=0.05)


def test_leak_check_is_per_item_and_per_subset_and_can_be_turned_off(models):
    """Each scored item gets a gap (swapped copies minus the item, bits/byte), each subset a mean
    with an interval and an excess over held-out reference text; leak_perturbations=0 is off."""
    trained, _, heldout = models
    report = pa.table({"id": ["mc1", "mc2", "mc3", "mc4", "he1"], "benchmark": ["toy"] * 4 + ["code_gen"],
                       "contaminated": [True, False, False, True, False]})
    result = evaluate.run(trained, heldout, _benchmarks(), Params(**FAST), contamination=report)
    ex = {r["id"]: r for r in result.tables["examples"].to_pylist()}
    assert all(ex[i]["leak_gap"] is not None for i in ex)
    rows = {(r["benchmark"], r["subset"]): r for r in result.tables["benchmarks"].to_pylist()}
    toy = rows[("toy", "contaminated")]
    assert toy["leak_gap"] == pytest.approx(np.mean([ex["mc1"]["leak_gap"], ex["mc4"]["leak_gap"]]))
    assert toy["leak_gap_lo"] <= toy["leak_gap"] <= toy["leak_gap_hi"]
    assert toy["leak_excess_lo"] <= toy["leak_excess"] <= toy["leak_excess_hi"]
    assert result.metrics["leak_gap/toy/contaminated"] == pytest.approx(toy["leak_gap"], abs=1e-5)
    off = evaluate.run(trained, heldout.slice(0, 2), _benchmarks(), Params(**FAST, leak_perturbations=0))
    assert all(r["leak_gap"] is None for r in off.tables["examples"].to_pylist())
    assert not any(k.startswith("leak_") for k in off.metrics)
    # same accuracy with and without the check: it only adds scoring
    assert off.metrics["accuracy/toy"] == result.metrics["accuracy/toy"]


def test_an_uninformative_model_fits_the_temperature_bound_and_the_receipt_says_uniform():
    from flows.receipt import benchmark_rows
    from tasks.eval_metrics import at_upper_bound, fit_temperature

    rng = np.random.default_rng(0)
    noise = rng.normal(size=(200, 4))
    answers = rng.integers(0, 4, size=200)
    misled = noise.copy()
    misled[np.arange(200), answers] -= 0.5  # worse than chance: any sharpening costs, uniform is best
    flat = fit_temperature(misled.tolist(), answers.tolist())
    informed = noise.copy()
    informed[np.arange(200), answers] += 1.0  # the right choice usually scores higher
    sharp = fit_temperature(informed.tolist(), answers.tolist())
    assert at_upper_bound(flat) and not at_upper_bound(sharp)
    row = {"benchmark": "b", "subset": "all", "n": 200, "ece": 0.5, "ece_before": 0.5, "ece_after": 0.01}
    assert "uniform (T at its bound)" in benchmark_rows([{**row, "temperature": flat}])[0]["ece"]
    assert f"T={sharp:.2f}" in benchmark_rows([{**row, "temperature": sharp}])[0]["ece"]


def test_models_load_whole_when_threads_load_them_at_once(models):
    # Proxies are scored side by side on the thread runner; unguarded, two concurrent
    # from_pretrained calls left the tied lm_head on the meta device in every load (measured).
    from concurrent.futures import ThreadPoolExecutor

    import torch

    from tasks.evaluate import _load

    trained, _, _ = models
    x = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        want = _load(trained, "cpu")[0](input_ids=x).logits
    with ThreadPoolExecutor(4) as pool:
        loaded = list(pool.map(lambda _: _load(trained, "cpu")[0], range(8)))
    for model in loaded:
        assert not any(p.is_meta for p in model.parameters())
        with torch.no_grad():
            assert torch.equal(model(input_ids=x).logits, want)
