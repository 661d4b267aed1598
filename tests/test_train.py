"""Train stage: device settings, the training loop on real text, budgets, saving, determinism."""

from __future__ import annotations

import glob
import math

import pyarrow as pa
import pytest

from tasks import train
from tasks.train import Params, lr_at, planned_steps, resolve_settings
from winnow.errors import WinnowError

# Tiny enough that a run takes a second or two on 2 cores, big enough to learn Python's syntax.
# One thread: on a shared 2-core box that is faster than two contending ones, and leaves a core free.
TINY = dict(
    vocab_size=512, d_model=64, n_layers=2, n_heads=2, seq_len=64, batch_size=8, warmup_steps=5, log_every=5, lr=5e-3,
    num_threads=1,
)


@pytest.fixture(scope="module")
def text_table() -> pa.Table:
    """~150 KB of real Python source, one row per file."""
    texts, total = [], 0
    for f in sorted(glob.glob("/usr/lib/python3.11/*.py")):
        t = open(f, encoding="utf-8").read()
        texts.append(t)
        total += len(t)
        if total > 150_000:
            break
    return pa.table({"id": [f"py{i}" for i in range(len(texts))], "text": texts})


@pytest.fixture(scope="module")
def trained(text_table, tmp_path_factory):
    out = tmp_path_factory.mktemp("model")
    result = train.run(text_table, Params(**{**TINY, "vocab_size": 300}, max_steps=40), out)
    return out, result


def test_cuda_settings_pick_the_gpu_paths():
    s = resolve_settings(Params(), cuda_available=True)
    assert (s.device, s.dtype, s.compile, s.fused_adamw, s.tf32, s.attn_implementation) == (
        "cuda", "bfloat16", True, True, True, "sdpa"
    )


def test_cpu_settings_stay_plain_fp32():
    s = resolve_settings(Params(), cuda_available=False)
    assert (s.device, s.dtype, s.compile, s.fused_adamw, s.tf32) == ("cpu", "float32", False, False, False)
    forced = resolve_settings(Params(compile=True, fused_adamw=True, dtype="bfloat16", num_threads=1), cuda_available=False)
    assert (forced.compile, forced.fused_adamw, forced.dtype, forced.num_threads) == (True, True, "bfloat16", 1)


def test_asking_for_cuda_without_a_gpu_is_a_user_error():
    with pytest.raises(WinnowError, match="no CUDA device"):
        resolve_settings(Params(device="cuda"), cuda_available=False)


def test_loss_decreases_on_real_text(trained):
    _, result = trained
    losses = result.tables["history"]["loss"].to_pylist()
    assert losses[0] > 5.0  # near ln(320) at the start
    assert losses[-1] < losses[0] - 1.0
    assert result.metrics["final_loss"] == losses[-1]
    assert result.metrics["tokens_seen"] == 40 * 8 * 64
    assert result.metrics["stopped_by"] == "max_steps"


def test_saved_model_and_tokenizer_reload(trained, text_table):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out, result = trained
    assert (out / "model.safetensors").is_file()
    tok = AutoTokenizer.from_pretrained(out, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(out, local_files_only=True)
    sample = text_table["text"][0].as_py()[:500] + " ünïcödé ✓"
    assert tok.decode(tok(sample)["input_ids"]) == sample  # byte-level: lossless on any text
    assert len(tok) == 300 and model.config.vocab_size == 320  # padded to a multiple of 64
    assert result.metrics["params"] == sum(p.numel() for p in model.parameters())
    assert tok.eos_token == train.EOS_TOKEN


def test_same_seed_gives_the_same_losses(text_table, tmp_path):
    p = Params(**{**TINY, "log_every": 1}, max_steps=4)
    a = train.run(text_table, p, tmp_path / "a").tables["history"]["loss"].to_pylist()
    b = train.run(text_table, p, tmp_path / "b").tables["history"]["loss"].to_pylist()
    c = train.run(text_table, Params(**{**TINY, "seed": 1, "log_every": 1}, max_steps=4), tmp_path / "c")
    c = c.tables["history"]["loss"].to_pylist()
    assert a == b
    assert a != c


def test_gpu_code_paths_run_on_cpu(text_table, tmp_path):
    """bf16 autocast and fused AdamW: the switches CUDA uses, exercised for their logic on CPU."""
    result = train.run(text_table, Params(**TINY, max_steps=10, dtype="bfloat16", fused_adamw=True), tmp_path)
    losses = result.tables["history"]["loss"].to_pylist()
    assert result.metrics["dtype"] == "bfloat16" and result.metrics["fused_adamw"] is True
    assert all(math.isfinite(x) for x in losses) and losses[-1] < losses[0]


@pytest.mark.slow
def test_compiled_model_trains_on_cpu(text_table, tmp_path):
    result = train.run(text_table, Params(**TINY, max_steps=10, compile=True), tmp_path)
    losses = result.tables["history"]["loss"].to_pylist()
    assert result.metrics["compile"] is True and losses[-1] < losses[0]


def test_gpt2_architecture_trains(text_table, tmp_path):
    result = train.run(text_table, Params(**TINY, max_steps=8, architecture="gpt2"), tmp_path)
    losses = result.tables["history"]["loss"].to_pylist()
    assert losses[-1] < losses[0]
    assert '"model_type": "gpt2"' in (tmp_path / "config.json").read_text()


def test_token_and_time_budgets(text_table, tmp_path):
    by_tokens = train.run(text_table, Params(**TINY, max_steps=None, max_tokens=2000), tmp_path / "t")
    assert by_tokens.metrics["steps"] == math.ceil(2000 / (8 * 64))
    assert by_tokens.metrics["stopped_by"] == "max_tokens"
    by_time = train.run(text_table, Params(**TINY, max_steps=10_000, time_budget_s=0.5), tmp_path / "s")
    assert by_time.metrics["stopped_by"] == "time_budget"
    assert by_time.metrics["steps"] < 10_000
    assert by_time.tables["history"]["step"].to_pylist()[-1] == by_time.metrics["steps"]


def test_zero_steps_saves_the_untrained_model(text_table, tmp_path):
    result = train.run(text_table, Params(**TINY, max_steps=0), tmp_path)
    assert result.metrics["steps"] == 0 and result.tables["history"].num_rows == 0
    assert (tmp_path / "model.safetensors").is_file()


def test_lr_schedule_warms_up_then_decays_to_the_floor():
    p = Params(lr=1e-3, warmup_steps=10, min_lr_ratio=0.1)
    lrs = [lr_at(s, 100, p) for s in range(100)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))
    assert lrs[-1] == pytest.approx(1e-4, rel=0.01)


def test_lr_decay_follows_the_clock_when_time_runs_out_first():
    p = Params(lr=1e-3, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_at(20, 100, p, time_fraction=1.0) == pytest.approx(1e-4)
    assert lr_at(20, 100, p, time_fraction=0.0) == lr_at(20, 100, p)  # steps ahead: clock ignored
    assert lr_at(90, 100, p, time_fraction=0.2) == lr_at(90, 100, p)


def test_planned_steps_takes_the_tighter_budget():
    p = Params(batch_size=4, seq_len=10, max_steps=100, max_tokens=400)
    assert planned_steps(p, n_blocks=1000) == 10
    assert planned_steps(Params(batch_size=4, seq_len=10, max_steps=None, max_tokens=None), n_blocks=42) == 11


@pytest.mark.parametrize(
    "table, message",
    [
        (pa.table({"text": pa.array([], pa.string())}), "empty"),
        (pa.table({"id": ["a", "b"], "text": ["x", None]}), "row 1 .*'b'"),
        (pa.table({"body": ["x"]}), "missing column 'text'"),
        (pa.table({"text": ["tiny"]}), "fewer than seq_len"),
    ],
)
def test_bad_input_names_the_problem(table, message, tmp_path):
    with pytest.raises(WinnowError, match=message):
        train.run(table, Params(**TINY, max_steps=1), tmp_path)
