"""Training-loop throughput: winnow's plain loop vs the Hugging Face ``Trainer``, same run.

Run from the repository root::

    python -m benchmarks.bench_train              # train stage defaults (Llama d=256, 4 layers, seq 256)
    python -m benchmarks.bench_train --quick      # d=128, 2 layers: a one-minute check
    python -m benchmarks.bench_train --d-model 768 --n-layers 12 --n-heads 12 --seq-len 1024 \\
        --batch-size 16 --vocab-size 8192 --steps 60   # a GPT-2-small-sized run for a GPU

Both loops train the *same* model (built by ``tasks.train.build_model`` with the same seed) on the
*same* batches in the same order (our seeded block stream, handed to ``Trainer`` as an iterable
dataset so its sampler cannot reorder it), with the same hyper-parameters: AdamW (fused on CUDA),
warmup + cosine to 10% of the peak LR, weight decay 0.1, clipping at 1.0, bf16 autocast and
``torch.compile`` where ``tasks.train.resolve_settings`` turns them on (CUDA), fp32 on CPU.

Measured: steady-state tokens/s over the steps after ``--warmup`` (first steps pay allocator,
kernel-selection and compile costs), the two points read with a device sync. Runs alternate
(ours, Trainer, ours, Trainer, ...) so drifting load on a shared machine hits both; the table
gives the median of each and the overhead of ours vs Trainer (negative = ours faster). Final
losses are printed as a check that both loops did the same training.

Data: ``data/sample/corpus.parquet`` text when it exists, else the Python 3.11 standard library
sources (``/usr/lib/python3.11``). JSON goes to ``benchmarks/out/bench_train.json``.
"""

from __future__ import annotations

import argparse
import glob
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

import numpy as np
import torch

from tasks import train

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "benchmarks" / "out"


def load_texts(max_bytes: int) -> tuple[list[str], str]:
    sample = REPO / "data" / "sample" / "corpus.parquet"
    texts, total = [], 0
    if sample.is_file():
        import pyarrow.parquet as pq

        source = str(sample.relative_to(REPO))
        candidates = pq.read_table(sample, columns=["text"])["text"].to_pylist()
    else:
        source = "/usr/lib/python3.11/**/*.py"
        candidates = (open(f, encoding="utf-8", errors="replace").read() for f in sorted(glob.glob(source, recursive=True)))
    for t in candidates:
        if t:
            texts.append(t)
            total += len(t.encode("utf-8"))
            if total >= max_bytes:
                break
    return texts, source


def run_ours(params: train.Params, settings: train.Settings, tokenizer, blocks: np.ndarray, warmup: int) -> dict:
    model = train.build_model(params, tokenizer, settings)
    t0 = time.perf_counter()
    history, stats = train.train_loop(model, blocks, replace(params, log_every=warmup), settings)
    wall = time.perf_counter() - t0
    first = next(h for h in history if h["step"] == warmup)
    last = history[-1]
    return {
        "tokens_per_s": (last["tokens"] - first["tokens"]) / (last["elapsed_s"] - first["elapsed_s"]),
        "tokens_per_cpu_s": (last["tokens"] - first["tokens"]) / (last["cpu_s"] - first["cpu_s"]),
        "wall_s": wall,
        "final_loss": last["loss"],
    }


def run_trainer(params: train.Params, settings: train.Settings, tokenizer, blocks: np.ndarray, warmup: int) -> dict:
    from transformers import PrinterCallback, Trainer, TrainerCallback, TrainingArguments

    model = train.build_model(params, tokenizer, settings)
    device_blocks = torch.from_numpy(blocks)

    class SameStream(torch.utils.data.IterableDataset):
        """Our seeded batch stream, one sequence at a time, so Trainer sees identical batches."""

        def __iter__(self):
            for batch in train.batches(device_blocks, params.batch_size, params.seed):
                for row in batch:
                    yield {"input_ids": row, "labels": row}

    marks: dict[int, float] = {}
    cpu_marks: dict[int, float] = {}

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step in (warmup, params.max_steps):
                if settings.device == "cuda":
                    torch.cuda.synchronize()
                marks[state.global_step] = time.perf_counter()
                cpu_marks[state.global_step] = time.process_time()

    losses: list[float] = []

    class Losses(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                losses.append(float(logs["loss"]))

    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(
            output_dir=tmp,
            per_device_train_batch_size=params.batch_size,
            gradient_accumulation_steps=params.grad_accum_steps,
            max_steps=params.max_steps,
            learning_rate=params.lr,
            lr_scheduler_type="cosine_with_min_lr",
            lr_scheduler_kwargs={"min_lr_rate": params.min_lr_ratio},
            warmup_steps=params.warmup_steps,
            weight_decay=params.weight_decay,
            adam_beta1=params.beta1,
            adam_beta2=params.beta2,
            max_grad_norm=params.grad_clip,
            optim="adamw_torch_fused" if settings.fused_adamw else "adamw_torch",
            bf16=settings.dtype == "bfloat16",
            tf32=settings.tf32 if settings.device == "cuda" else None,
            torch_compile=settings.compile,
            use_cpu=settings.device == "cpu",
            logging_steps=warmup,
            save_strategy="no",
            report_to="none",
            dataloader_num_workers=0,
            disable_tqdm=True,
            seed=params.seed,
        )
        trainer = Trainer(model=model, args=args, train_dataset=SameStream(), callbacks=[Clock(), Losses()])
        trainer.remove_callback(PrinterCallback)  # keep the benchmark's output to its own lines
        t0 = time.perf_counter()
        trainer.train()
        wall = time.perf_counter() - t0
    steady_tokens = (params.max_steps - warmup) * params.batch_size * params.grad_accum_steps * params.seq_len
    return {
        "tokens_per_s": steady_tokens / (marks[params.max_steps] - marks[warmup]),
        "tokens_per_cpu_s": steady_tokens / (cpu_marks[params.max_steps] - cpu_marks[warmup]),
        "wall_s": wall,
        "final_loss": losses[-1] if losses else float("nan"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    defaults = train.Params()
    ap.add_argument("--quick", action="store_true", help="small model (d=128, 2 layers, seq 128) for a fast check")
    ap.add_argument("--steps", type=int, default=30, help="optimizer steps per run (default 30)")
    ap.add_argument("--warmup", type=int, default=5, help="steps excluded from the rate (default 5)")
    ap.add_argument("--repeats", type=int, default=2, help="runs of each loop, alternating (default 2)")
    ap.add_argument("--d-model", type=int, default=defaults.d_model)
    ap.add_argument("--n-layers", type=int, default=defaults.n_layers)
    ap.add_argument("--n-heads", type=int, default=defaults.n_heads)
    ap.add_argument("--seq-len", type=int, default=defaults.seq_len)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--vocab-size", type=int, default=defaults.vocab_size)
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--compile", default=None, choices=["on", "off"], help="override the device default")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--data-mb", type=float, default=4.0, help="MB of text to tokenize (default 4)")
    a = ap.parse_args()
    if a.quick:
        a.d_model, a.n_layers, a.n_heads, a.seq_len = 128, 2, 2, 128

    params = train.Params(
        d_model=a.d_model, n_layers=a.n_layers, n_heads=a.n_heads, seq_len=a.seq_len, batch_size=a.batch_size,
        vocab_size=a.vocab_size, max_steps=a.steps, warmup_steps=a.warmup, device=a.device, num_threads=a.threads,
        compile=None if a.compile is None else a.compile == "on", time_budget_s=None,
    )
    settings = train.resolve_settings(params)
    texts, source = load_texts(int(a.data_mb * 1e6))
    with train.torch_settings(settings):
        tokenizer = train.train_tokenizer(texts, params)
        blocks = train.pack_blocks(tokenizer, texts, params.seq_len)
        runs: dict[str, list[dict]] = {"winnow loop": [], "HF Trainer": []}
        for r in range(a.repeats):
            for name, fn in (("winnow loop", run_ours), ("HF Trainer", run_trainer)):
                res = fn(params, settings, tokenizer, blocks, a.warmup)
                runs[name].append(res)
                print(f"  run {r + 1} {name}: {res['tokens_per_s']:.0f} tokens/s, final loss {res['final_loss']:.3f}", flush=True)

    n_params = sum(p.numel() for p in train.build_model(params, tokenizer, settings).parameters())
    med = {k: statistics.median(x["tokens_per_s"] for x in v) for k, v in runs.items()}
    med_cpu = {k: statistics.median(x["tokens_per_cpu_s"] for x in v) for k, v in runs.items()}
    # > 0 means Trainer is faster, i.e. our loop has overhead; < 0 means ours is faster.
    overhead = med["HF Trainer"] / med["winnow loop"] - 1.0
    overhead_cpu = med_cpu["HF Trainer"] / med_cpu["winnow loop"] - 1.0
    device_name = torch.cuda.get_device_name() if settings.device == "cuda" else platform.processor() or platform.machine()
    print()
    print(
        f"Model: {params.architecture} d={params.d_model} L={params.n_layers} H={params.n_heads}, {n_params / 1e6:.2f}M params, "
        f"vocab {len(tokenizer)}; batch {params.batch_size} x seq {params.seq_len}; {a.steps} steps ({a.warmup} warm-up) x "
        f"{a.repeats} runs each; device {settings.device} ({device_name}), {settings.dtype}, compile={settings.compile}, "
        f"fused AdamW={settings.fused_adamw}, threads={settings.num_threads}; data {source}"
    )
    print()
    print("| loop | tokens/s (median) | tokens/s per run | tokens per CPU-s (median) | final loss (median) | wall s per run (median) |")
    print("|---|---|---|---|---|---|")
    for name, v in runs.items():
        rates = ", ".join(f"{x['tokens_per_s']:.0f}" for x in v)
        print(
            f"| {name} | {med[name]:.0f} | {rates} | {med_cpu[name]:.0f} | "
            f"{statistics.median(x['final_loss'] for x in v):.3f} | {statistics.median(x['wall_s'] for x in v):.1f} |"
        )
    print()
    print(
        f"Overhead of ours vs Trainer: {overhead * 100:+.1f}% wall-clock, {overhead_cpu * 100:+.1f}% CPU time "
        "(target <= +10%; negative means ours is faster)"
    )

    OUT.mkdir(parents=True, exist_ok=True)
    record = {
        "params": {k: getattr(params, k) for k in ("architecture", "d_model", "n_layers", "n_heads", "seq_len", "batch_size", "vocab_size")},
        "n_params": n_params,
        "steps": a.steps,
        "warmup": a.warmup,
        "settings": settings.__dict__,
        "device_name": device_name,
        "torch": torch.__version__,
        "load_average": os.getloadavg(),
        "data": source,
        "runs": runs,
        "median_tokens_per_s": med,
        "median_tokens_per_cpu_s": med_cpu,
        "overhead_ours_vs_trainer": overhead,
        "overhead_ours_vs_trainer_cpu": overhead_cpu,
    }
    (OUT / "bench_train.json").write_text(json.dumps(record, indent=2, default=str))


if __name__ == "__main__":
    main()
