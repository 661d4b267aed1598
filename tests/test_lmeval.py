"""Parity with lm-evaluation-harness: lm-eval's own ``hf`` model on the same items and model folder."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from tasks import evaluate, lmeval
from tasks.common import BENCHMARK_SCHEMA
from winnow.errors import WinnowError

SAMPLE = "data/sample/benchmarks.parquet"


def tiny_model(folder, seed: int = 0):
    """A 2-layer Llama with a byte-level BPE trained here in a second: a real model folder."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    text = open("/usr/share/common-licenses/GPL-3", encoding="utf-8").read()
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator([text], trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<|endoftext|>", eos_token="<|endoftext|>")
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=2048,
                         initializer_range=0.3, bos_token_id=0, eos_token_id=0, tie_word_embeddings=True)
    model = LlamaForCausalLM(config).eval()
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_model(tmp_path_factory.mktemp("tiny_llama"))


def _sample(per_benchmark: int) -> pa.Table:
    t = pq.read_table(SAMPLE)
    rows, seen = [], {}
    for r in t.to_pylist():
        if seen.get(r["benchmark"], 0) < per_benchmark:
            seen[r["benchmark"]] = seen.get(r["benchmark"], 0) + 1
            rows.append(r)
    return pa.Table.from_pylist(rows, schema=BENCHMARK_SCHEMA)


@pytest.mark.parametrize("mc_format", ["cloze", "letters"])
def test_lm_eval_scores_every_item_as_winnow_does(model_dir, tmp_path, mc_format):
    bench = _sample(5)
    params = evaluate.Params(max_examples_per_benchmark=None, num_threads=1, batch_size=8, mc_format=mc_format,
                             bootstrap_iters=50)
    heldout = pa.table({"id": ["h"], "text": ["GNU General Public License"], "domain": ["legal"]})
    ours = evaluate.run(model_dir, heldout, bench, params)
    table, summary, lm = lmeval.parity(model_dir, bench, params, ours.tables["examples"], tmp_path / "tasks",
                                       ours.metrics["context_len"])
    assert table.num_rows == bench.num_rows
    mc = table.filter(pc.equal(table["kind"], "multiple_choice"))
    assert max(mc["max_abs_diff"].to_pylist()) < 1e-4
    # Targets of a random model reach -1000 nats, where lm-eval's float32 sum is good to ~1e-4.
    assert max(table["max_rel_diff"].to_pylist()) < 1e-6
    rows = {r["benchmark"]: r for r in ours.tables["benchmarks"].to_pylist()}
    for s in summary:
        if s["lm_eval_acc"] is None:  # target-only benchmark (humaneval, quiz)
            continue
        assert s["same_pred"] == rows[s["benchmark"]]["n_choice"]
        assert s["lm_eval_acc"] == rows[s["benchmark"]]["accuracy"]
        assert s["lm_eval_acc_norm"] == rows[s["benchmark"]]["accuracy_norm"]
        assert s["lm_eval_acc_bytes"] == rows[s["benchmark"]]["accuracy_bytes"]
    # The exported task is plain JSONL + YAML: the context is exactly the one winnow scored.
    doc = json.loads((tmp_path / "tasks" / "winnow_mmlu.jsonl").read_text().splitlines()[0])
    first = next(r for r in bench.to_pylist() if r["id"] == doc["id"])
    assert doc["context"] == evaluate.example_texts(first, params)[0]


def test_a_changed_tokenisation_is_caught(model_dir, tmp_path):
    """Scoring with an EOS prefix (winnow's old recipe) moves the log-likelihoods past the tolerance."""
    bench = _sample(2).filter(pc.equal(pc.field("benchmark"), "mmlu"))
    params = evaluate.Params(max_examples_per_benchmark=None, num_threads=1, bootstrap_iters=50)
    heldout = pa.table({"id": ["h"], "text": ["x y"], "domain": ["d"]})
    ours = evaluate.run(model_dir, heldout, bench, params).tables["examples"]
    shifted = ours.set_column(ours.schema.get_field_index("logliks"), "logliks",
                              pa.array([[v + 1e-3 for v in ll] for ll in ours["logliks"].to_pylist()]))
    names = lmeval.export_tasks(evaluate.select_examples(bench, params), params, tmp_path)
    lm = lmeval.run_lm_eval(model_dir, names, tmp_path, num_threads=1)
    assert max(lmeval.compare(ours, lm)[0]["max_abs_diff"].to_pylist()) < 1e-4
    assert min(lmeval.compare(shifted, lm)[0]["max_abs_diff"].to_pylist()) > 5e-4


def test_compare_names_an_item_lm_eval_did_not_score(model_dir):
    ex = pa.Table.from_pylist([{"id": "q1", "benchmark": "b", "kind": "multiple_choice", "logliks": [-1.0, -2.0],
                                "pred": 0, "pred_norm": 0}])
    with pytest.raises(WinnowError, match="'q1' is missing"):
        lmeval.compare(ex, lmeval.LmEvalRun(results={}, logliks={}))
