"""Training throughput and MFU: winnow's loop vs the Hugging Face ``Trainer``, per model preset, same run.

Run from the repository root::

    python -m benchmarks.bench_train                       # tiny and 25m presets, vs Trainer, CPU
    python -m benchmarks.bench_train --presets tiny,25m,gpt2-124m --trainer tiny,25m
    python -m benchmarks.bench_train --presets gpt2-124m --seq-len 1024 --batch-size 16 --steps 40 \\
        --tokenizer gpt2                                   # the GPU check (bf16, compile, fused AdamW)

For each preset both loops train the *same* model (``tasks.train.make_model``, same seed) on the
*same* batches in the same order (``tasks.train.BlockStream``, handed to ``Trainer`` as an iterable
dataset so its sampler cannot reorder it), with the same hyper-parameters and the device choices
of ``tasks.train.resolve_settings`` (bf16 autocast, ``torch.compile``, fused AdamW, TF32 on CUDA;
fp32 on CPU). Runs alternate (ours, Trainer, ours, ...) so drifting load on a shared machine hits
both.

Measured: steady-state tokens/s over the steps after ``--warmup`` (the first steps pay allocator,
kernel-selection and compile costs). **MFU** = flops/token × tokens/s ÷ peak, with flops/token =
6N + 12·L·d·T (forward + backward matmuls of N parameters plus attention scores, PaLM appendix B)
and the peak measured here: the best of several square matmuls (fp32 on CPU with the same thread
count, bf16 on CUDA) timed in this process. JSON goes to ``benchmarks/out/bench_train.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as tasks.train sets it; must precede torch

import pyarrow as pa  # noqa: E402
import torch  # noqa: E402

from tasks import tokenize, train  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "benchmarks" / "out"
#: Per-preset CPU defaults: (batch, seq_len, BPE vocab); small enough for a shared 2-core box.
CPU_SHAPES = {"tiny": (8, 256, 4096), "25m": (4, 512, 8192), "gpt2-124m": (2, 512, 0), "llama-150m": (2, 512, 0)}


def load_texts(max_bytes: int) -> list[str]:
    """The bundled sample's text (first ``max_bytes``)."""
    import pyarrow.parquet as pq

    texts, total = [], 0
    for t in pq.read_table(REPO / "data" / "sample" / "corpus.parquet", columns=["text"])["text"].to_pylist():
        texts.append(t)
        total += len(t.encode("utf-8"))
        if total >= max_bytes:
            break
    return texts


def matmul_peak(device: str, threads: int, n: int = 2048, repeats: int = 8) -> float:
    """Best achieved FLOP/s of an n×n matmul (fp32 CPU / bf16 CUDA): the machine's practical peak."""
    torch.set_num_threads(threads)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    best = 0.0
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(4 if device == "cpu" else 50):
            a @ b
        if device == "cuda":
            torch.cuda.synchronize()
        reps = 4 if device == "cpu" else 50
        best = max(best, reps * 2 * n**3 / (time.perf_counter() - t0))
    return best


def run_ours(params: train.Params, settings: train.Settings, meta: dict, data: train.BlockStream, warmup: int) -> dict:
    model, _ = train.make_model(params, settings, meta)
    history, _ = train.fit(model, data, replace(params, log_every=warmup, checkpoint_every=0), settings)
    first = next(h for h in history if h["step"] == warmup)
    last = history[-1]
    return {"tokens_per_s": (last["tokens"] - first["tokens"]) / (last["elapsed_s"] - first["elapsed_s"]),
            "final_loss": last["loss"]}


def run_trainer(params: train.Params, settings: train.Settings, meta: dict, data: train.BlockStream, warmup: int) -> dict:
    from transformers import PrinterCallback, Trainer, TrainerCallback, TrainingArguments

    model, _ = train.make_model(params, settings, meta)

    class SameStream(torch.utils.data.IterableDataset):
        """Our batch order, one sequence at a time, so Trainer sees identical batches."""

        def __iter__(self):
            for step in range(params.max_steps):
                for micro in range(params.grad_accum_steps):
                    for row in data.batch(train.positions(step, micro, params)):
                        yield {"input_ids": row, "labels": row}

    marks: dict[int, float] = {}
    losses: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step in (warmup, params.max_steps):
                if settings.device == "cuda":
                    torch.cuda.synchronize()
                marks[state.global_step] = time.perf_counter()

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                losses.append(float(logs["loss"]))

    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(
            output_dir=tmp, per_device_train_batch_size=params.batch_size,
            gradient_accumulation_steps=params.grad_accum_steps, max_steps=params.max_steps,
            learning_rate=params.lr, lr_scheduler_type="cosine_with_min_lr",
            lr_scheduler_kwargs={"min_lr_rate": params.min_lr_ratio}, warmup_steps=params.warmup_steps,
            weight_decay=params.weight_decay, adam_beta1=params.beta1, adam_beta2=params.beta2,
            max_grad_norm=params.grad_clip, optim="adamw_torch_fused" if settings.fused_adamw else "adamw_torch",
            bf16=settings.dtype == "bfloat16", tf32=settings.tf32 if settings.device == "cuda" else None,
            torch_compile=settings.compile, use_cpu=settings.device == "cpu", logging_steps=warmup,
            save_strategy="no", report_to="none", dataloader_num_workers=0, disable_tqdm=True, seed=params.seed,
        )
        trainer = Trainer(model=model, args=args, train_dataset=SameStream(), callbacks=[Clock()])
        trainer.remove_callback(PrinterCallback)  # keep the benchmark's output to its own lines
        trainer.train()
    steady = (params.max_steps - warmup) * params.batch_size * params.grad_accum_steps * data.seq_len
    return {"tokens_per_s": steady / (marks[params.max_steps] - marks[warmup]),
            "final_loss": losses[-1] if losses else float("nan")}


def bench_preset(name: str, a: argparse.Namespace, texts: list[str], peak: float, tmp: Path) -> dict:
    """Tokenize, then time our loop (and Trainer, if asked) on one preset; returns the record."""
    batch, seq_len, vocab = CPU_SHAPES[name]
    batch, seq_len = a.batch_size or batch, a.seq_len or seq_len
    choice = a.tokenizer or ("bpe" if vocab else "gpt2")
    tok_dir = tmp / f"tokens-{name}-{choice}"
    if not tok_dir.exists():
        tokenize.run(pa.table({"text": texts}), tokenize.Params(tokenizer=choice, vocab_size=vocab or 4096), tok_dir)
    meta = tokenize.read_meta(tok_dir)
    params = train.Params(preset=name, seq_len=seq_len, batch_size=batch, max_steps=a.steps, warmup_steps=a.warmup,
                          device=a.device, num_threads=a.threads, lr=1e-3)
    settings = train.resolve_settings(params)
    data = train.BlockStream(tokenize.load_tokens(tok_dir), seq_len, params.seed)
    loops = [("winnow loop", run_ours)] + ([("HF Trainer", run_trainer)] if name in a.trainer else [])
    runs: dict[str, list[dict]] = {n: [] for n, _ in loops}
    with train.torch_settings(settings):
        for r in range(a.repeats):
            for loop, fn in loops:
                res = fn(params, settings, meta, data, a.warmup)
                runs[loop].append(res)
                print(f"  {name} run {r + 1} {loop}: {res['tokens_per_s']:.0f} tokens/s, loss {res['final_loss']:.3f}", flush=True)
        model, _ = train.make_model(params, settings, meta)
    cfg = model.config
    n_params = sum(p.numel() for p in model.parameters())
    layers = getattr(cfg, "num_hidden_layers", None) or cfg.n_layer
    d = getattr(cfg, "hidden_size", None) or cfg.n_embd
    flops_per_token = 6 * n_params + 12 * layers * d * seq_len
    med = {k: statistics.median(x["tokens_per_s"] for x in v) for k, v in runs.items()}
    return {"preset": name, "n_params": n_params, "tokenizer": choice, "vocab": meta["vocab"], "batch": batch,
            "seq_len": seq_len, "flops_per_token": flops_per_token, "runs": runs, "median_tokens_per_s": med,
            "mfu": {k: flops_per_token * v / peak for k, v in med.items()}, "settings": settings.__dict__}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", default="tiny,25m", help="comma-separated presets (default tiny,25m)")
    ap.add_argument("--trainer", default="tiny,25m", help="presets also timed with HF Trainer (default tiny,25m)")
    ap.add_argument("--steps", type=int, default=12, help="optimizer steps per run (default 12)")
    ap.add_argument("--warmup", type=int, default=3, help="steps excluded from the rate (default 3)")
    ap.add_argument("--repeats", type=int, default=2, help="runs of each loop, alternating (default 2)")
    ap.add_argument("--batch-size", type=int, default=None, help="override the per-preset batch")
    ap.add_argument("--seq-len", type=int, default=None, help="override the per-preset sequence length")
    ap.add_argument("--tokenizer", default=None, help="bpe or gpt2 (default: bpe, gpt2 for the 124M+ presets)")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--data-mb", type=float, default=3.0, help="MB of text to tokenize (default 3)")
    a = ap.parse_args()
    a.presets, a.trainer = a.presets.split(","), a.trainer.split(",")
    settings = train.resolve_settings(train.Params(device=a.device, num_threads=a.threads))
    load_before = os.getloadavg()
    peak = matmul_peak(settings.device, settings.num_threads)
    print(f"matmul peak: {peak / 1e9:.1f} GFLOP/s ({settings.device}, {settings.num_threads} threads); "
          f"load average {load_before[0]:.2f}", flush=True)
    texts = load_texts(int(a.data_mb * 1e6))
    with tempfile.TemporaryDirectory() as tmp:
        records = [bench_preset(name, a, texts, peak, Path(tmp)) for name in a.presets]
    device_name = torch.cuda.get_device_name() if settings.device == "cuda" else platform.processor() or platform.machine()
    print(f"\nDevice {settings.device} ({device_name}), {settings.num_threads} threads, matmul peak "
          f"{peak / 1e9:.1f} GFLOP/s; load average before {load_before[0]:.2f}, after {os.getloadavg()[0]:.2f}\n")
    print("| preset | params | batch x seq | loop | tokens/s (median) | per run | MFU | final loss |")
    print("|---|---|---|---|---|---|---|---|")
    for r in records:
        for loop, runs in r["runs"].items():
            per_run = ", ".join(f"{x['tokens_per_s']:.0f}" for x in runs)
            print(f"| {r['preset']} | {r['n_params'] / 1e6:.1f}M | {r['batch']} x {r['seq_len']} | {loop} | "
                  f"{r['median_tokens_per_s'][loop]:.0f} | {per_run} | "
                  f"{r['mfu'][loop] * 100:.1f}% | {statistics.median(x['final_loss'] for x in runs):.3f} |")
    for r in records:
        if "HF Trainer" in r["median_tokens_per_s"]:
            m = r["median_tokens_per_s"]
            print(f"{r['preset']}: ours vs Trainer {(m['winnow loop'] / m['HF Trainer'] - 1) * 100:+.1f}% tokens/s")
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "bench_train.json").write_text(json.dumps(
        {"records": records, "peak_flops": peak, "device_name": device_name, "torch": torch.__version__,
         "load_average": [load_before, os.getloadavg()]}, indent=2, default=str))


if __name__ == "__main__":
    main()
