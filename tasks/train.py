"""Train: a byte-level BPE tokenizer and a small causal language model from scratch.

Read it top to bottom like nanoGPT's ``train.py``: settings (the GPU switches are plain fields of
:class:`Params`, resolved for the device by :func:`resolve_settings`), tokenizer, data packing,
model, optimizer, then the one training loop in :func:`train_loop`, then saving.

* **Tokenizer**: byte-level BPE (the ``tokenizers`` library) trained on the training text, so it
  never needs a download and covers any UTF-8 input; saved as a ``transformers`` fast tokenizer.
* **Data**: every document becomes ``<|endoftext|>`` + its tokens; the documents are concatenated
  into one stream and cut into blocks of ``seq_len`` tokens (packing: no padding is ever trained).
  Batches draw blocks in a seeded shuffled order, pass after pass.
* **Model**: a ``transformers`` ``LlamaForCausalLM`` (or ``GPT2LMHeadModel``) built from a config,
  with tied embeddings and the vocabulary padded to a multiple of 64 for fast matmuls.
* **Loop**: AdamW (fused on CUDA), linear warmup then cosine decay, gradient clipping, bf16 autocast
  on CUDA (fp32 on CPU), SDPA attention, optional ``torch.compile``, TF32 matmuls on CUDA.

The model and tokenizer are written with ``save_pretrained`` (safetensors) into ``out_dir``, so
``AutoModelForCausalLM.from_pretrained(out_dir)`` loads them, and so does the evaluate stage.
Nothing is downloaded: ``HF_HUB_OFFLINE=1`` is set before ``transformers`` is imported.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tasks.common import StageResult, require_columns, track
from winnow.errors import WinnowError

if TYPE_CHECKING:  # torch and transformers load lazily: reading a config must not pay for them
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerFast

# CPU threads that spin while waiting (OpenMP's default) collapse throughput when the cores are
# shared: measured 10x slower with 2 threads on a busy 2-core box, while passive waiting costs a few
# percent at most. Takes effect only if torch is not imported yet; the user's setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

STAGE = "train"
EOS_TOKEN = "<|endoftext|>"
HISTORY_SCHEMA = pa.schema(
    [
        ("step", pa.int64()),
        ("loss", pa.float64()),  # mean training loss (nats/token) over the steps since the last row
        ("lr", pa.float64()),
        ("tokens", pa.int64()),  # tokens trained on so far
        ("elapsed_s", pa.float64()),  # seconds since the loop started (setup excluded)
        ("cpu_s", pa.float64()),  # CPU seconds of this process (all threads) since the loop started
    ]
)


@dataclass(frozen=True)
class Params:
    """Parameters of the train stage.

    Model (defaults: 4.3M parameters, ~1.6k tokens per CPU-second on a server core, fp32):
        architecture: ``"llama"`` (RMSNorm, RoPE, SwiGLU; default) or ``"gpt2"``.
        vocab_size: BPE vocabulary size, special token included. 4096 keeps the embedding and
            softmax cheap for a d=256 model; use 8192+ for a bigger model or more text.
        d_model, n_layers, n_heads: width, depth, attention heads (d_model % n_heads == 0).
            256/4/4 trains in minutes on 2 CPU cores.
        seq_len: tokens per training sequence, also the model's context (and evaluate's window).

    Budget (training stops at whichever of max_steps / max_tokens / time_budget_s comes first):
        batch_size: sequences per micro-batch (8: a CPU gains nothing from more, and more steps
            fit the time). grad_accum_steps: micro-batches per optimizer step (raise it for a
            bigger effective batch without more memory).
        max_steps: optimizer steps; 0 saves the untrained model (a baseline for evaluation).
            Default 200 steps x 8 x 256 = 410k tokens: about 2-3 minutes on 2 free cores
            (estimated from 1.6k tokens per CPU-second measured on one core of a busy box).
        max_tokens: tokens to train on; None means "no token limit". If both max_steps and
            max_tokens are None, one pass over the data.
        time_budget_s: wall-clock cap on the loop (seconds, None for none). The cosine decay
            follows whichever is further along, steps or time, so a run cut short by a slow or
            busy machine still ends annealed. The price: a run that falls behind the budget's
            pace (more than that fraction of the time used for that fraction of the steps) depends
            on the machine's speed, so it is reproducible only while it keeps ahead; the
            ``stopped_by`` metric says which limit ended the run. Default 240 s: above what the
            200 steps should need on 2 free cores, and on a busy box (where they took ~6 minutes)
            it keeps the whole pipeline within 10 minutes.

    Optimiser:
        lr: peak learning rate (3e-3 suits models this small; use ~6e-4 at 100M+ params).
        min_lr_ratio: cosine decay ends at lr * min_lr_ratio (0.1, as in nanoGPT/Chinchilla).
        warmup_steps: linear warmup steps (clamped to the planned steps).
        weight_decay: AdamW decay on matrices only (not norms/biases); 0.1 is the usual value.
        beta1, beta2: AdamW betas; 0.95 for beta2 is the LLM-training norm.
        grad_clip: max global gradient norm (1.0); 0 disables clipping.

    Device and speed switches ("auto"/None picks the right value for the device; see
    :func:`resolve_settings`):
        device: ``"auto"`` (cuda if available, else cpu), ``"cpu"`` or ``"cuda"``.
        dtype: autocast dtype: ``"auto"`` (bfloat16 on CUDA, float32 on CPU), ``"float32"`` or
            ``"bfloat16"``. Weights and optimizer state stay float32 either way.
        compile: wrap the model in ``torch.compile``; None = on for CUDA, off on CPU (compiling
            costs more than it saves on a short CPU run).
        fused_adamw: use the fused AdamW kernel; None = on for CUDA.
        tf32: allow TF32 matmuls on CUDA (ignored on CPU).
        attn_implementation: ``"sdpa"`` (PyTorch scaled_dot_product_attention: flash/efficient
            kernels on GPU) or ``"eager"`` (the reference implementation, for debugging).
        num_threads: CPU threads for torch; None = the CPUs this process may use.

    Other:
        seed: seeds model init and batch order; same seed and data give the same losses on CPU.
        log_every: steps per history row (reading the loss syncs the GPU, so not every step).
        tokenizer_max_bytes: UTF-8 bytes of training text (in table order) the BPE is fitted on;
            4 MB fits in a few seconds and is plenty for a 4-8k vocabulary.
        tokenizer_min_frequency: a merge must occur this often to be learned.
    """

    architecture: Literal["llama", "gpt2"] = "llama"
    vocab_size: int = 4096
    d_model: int = 256
    n_layers: int = 4
    n_heads: int = 4
    seq_len: int = 256
    batch_size: int = 8
    grad_accum_steps: int = 1
    max_steps: int | None = 200
    max_tokens: int | None = None
    time_budget_s: float | None = 240.0
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 20
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    compile: bool | None = None
    fused_adamw: bool | None = None
    tf32: bool = True
    attn_implementation: Literal["sdpa", "eager"] = "sdpa"
    num_threads: int | None = None
    seed: int = 0
    log_every: int = 10
    tokenizer_max_bytes: int = 4_000_000
    tokenizer_min_frequency: int = 2

    def __post_init__(self) -> None:
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "seq_len", "batch_size", "grad_accum_steps", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.vocab_size < 257 + 1:
            raise ValueError(f"vocab_size must be > 257 (256 bytes + {EOS_TOKEN}), got {self.vocab_size}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
        if self.max_steps is not None and self.max_steps < 0:
            raise ValueError(f"max_steps must be >= 0, got {self.max_steps}")
        if self.max_tokens is not None and self.max_tokens < 0:
            raise ValueError(f"max_tokens must be >= 0, got {self.max_tokens}")
        if self.lr <= 0 or not 0 <= self.min_lr_ratio <= 1:
            raise ValueError("lr must be > 0 and min_lr_ratio in [0, 1]")
        if self.num_threads is not None and self.num_threads < 1:
            raise ValueError(f"num_threads must be >= 1, got {self.num_threads}")


@dataclass(frozen=True)
class Settings:
    """The device-specific switches, resolved from :class:`Params` (see :func:`resolve_settings`)."""

    device: str  # "cpu" or "cuda"
    dtype: str  # autocast dtype: "float32" (no autocast) or "bfloat16"
    compile: bool
    fused_adamw: bool
    tf32: bool
    attn_implementation: str
    num_threads: int


def resolve_settings(params: Params, cuda_available: bool | None = None) -> Settings:
    """Pick device, precision and speed switches: the GPU paths on CUDA, plain fp32 on CPU.

    ``cuda_available`` is normally detected; tests pass it to check the CUDA choices on a CPU box.
    """
    if cuda_available is None:
        import torch

        cuda_available = torch.cuda.is_available()
    if params.device == "cuda" and not cuda_available:
        raise WinnowError("train.device = 'cuda' but no CUDA device is available; use 'auto' or 'cpu'")
    device = "cuda" if params.device == "cuda" or (params.device == "auto" and cuda_available) else "cpu"
    on_gpu = device == "cuda"
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return Settings(
        device=device,
        dtype=("bfloat16" if on_gpu else "float32") if params.dtype == "auto" else params.dtype,
        compile=on_gpu if params.compile is None else params.compile,
        fused_adamw=on_gpu if params.fused_adamw is None else params.fused_adamw,
        tf32=params.tf32 and on_gpu,
        attn_implementation=params.attn_implementation,
        # On GPU the host threads only feed the device; a few suffice and leave cores to others.
        num_threads=params.num_threads or (min(cpus, 8) if on_gpu else cpus),
    )


def run(train: pa.Table, params: Params = Params(), out_dir: Path | None = None) -> StageResult:
    """Fit a tokenizer and a causal LM on ``train['text']`` and save both into ``out_dir``.

    Args:
        train: the mixture stage's ``data`` table; only ``text`` (non-null strings) is read, in
            table order (the tokenizer is fitted on its first ``tokenizer_max_bytes``).
        params: see :class:`Params`.
        out_dir: folder to write ``config.json``, ``model.safetensors`` and the tokenizer files
            into (created if missing). Required.

    Returns:
        table ``history`` (:data:`HISTORY_SCHEMA`), metrics (parameter count, tokens seen,
        tokens/s, final loss, device, dtype, ...). ``data`` is not produced: the model lives in
        ``out_dir``.

    Raises:
        WinnowError: empty table, missing ``text`` column, null/empty text, too little text for
            one training sequence, or ``device='cuda'`` without a GPU.
    """
    if out_dir is None:
        raise WinnowError("train: out_dir is required (the folder the model is saved into)")
    _check(train)
    settings = resolve_settings(params)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    texts = train["text"].to_pylist()

    with torch_settings(settings):
        t0 = time.perf_counter()
        tokenizer = train_tokenizer(texts, params)
        blocks = pack_blocks(tokenizer, texts, params.seq_len)
        tokenize_s = time.perf_counter() - t0
        if len(blocks) == 0:
            raise WinnowError(
                f"train: the training text gives fewer than seq_len={params.seq_len} tokens; "
                "sample more text (mixture.train_bytes) or lower train.seq_len"
            )
        model = build_model(params, tokenizer, settings)
        history, stats = train_loop(model, blocks, params, settings)
        model.save_pretrained(out_dir)
        tokenizer.save_pretrained(out_dir)

    n_params = sum(p.numel() for p in model.parameters())
    metrics: dict[str, Any] = {
        "params": n_params,
        "tokenizer_vocab": len(tokenizer),
        "model_vocab": model.config.vocab_size,
        "train_tokens": int(blocks.size),
        "tokenize_s": round(tokenize_s, 3),
        **stats,
        "device": settings.device,
        "dtype": settings.dtype,
        "compile": settings.compile,
        "fused_adamw": settings.fused_adamw,
        "attn_implementation": settings.attn_implementation,
        "num_threads": settings.num_threads,
    }
    flops_per_token = 6 * n_params + 12 * params.n_layers * params.d_model * params.seq_len
    metrics["flops_per_token"] = flops_per_token
    metrics["achieved_tflops"] = round(flops_per_token * stats["tokens_per_s"] / 1e12, 4)
    return StageResult(tables={"history": pa.Table.from_pylist(history, schema=HISTORY_SCHEMA)}, metrics=metrics)


@contextlib.contextmanager
def torch_settings(settings: Settings) -> Iterator[None]:
    """Apply the process-wide torch switches (threads, TF32) for the run, then restore them."""
    import torch

    threads, precision = torch.get_num_threads(), torch.get_float32_matmul_precision()
    torch.set_num_threads(settings.num_threads)
    if settings.tf32:
        torch.set_float32_matmul_precision("high")  # TF32 tensor cores for fp32 matmuls
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.set_float32_matmul_precision(precision)


# --- tokenizer and data ------------------------------------------------------------------------


def train_tokenizer(texts: list[str], params: Params) -> "PreTrainedTokenizerFast":
    """Fit a byte-level BPE on the first ``tokenizer_max_bytes`` of ``texts`` (deterministic)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    sample, total = [], 0
    for t in texts:
        sample.append(t)
        total += len(t.encode("utf-8"))
        if total >= params.tokenizer_max_bytes:
            break
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=params.vocab_size,
        min_frequency=params.tokenizer_min_frequency,
        special_tokens=[EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte is a token: no <unk>
        show_progress=False,
    )
    bpe.train_from_iterator(sample, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token=EOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=EOS_TOKEN,
    )


def pack_blocks(tokenizer: "PreTrainedTokenizerFast", texts: list[str], seq_len: int) -> np.ndarray:
    """Tokenize, prefix each document with EOS, concatenate, cut into ``[n, seq_len]`` blocks.

    The trailing partial block is dropped. EOS before every document lets evaluation score a
    document's first token the same way (conditioned on EOS).
    """
    eos = tokenizer.eos_token_id
    encoded = tokenizer(texts, add_special_tokens=False)["input_ids"]
    stream = np.fromiter((t for ids in encoded for t in (eos, *ids)), dtype=np.int64)
    n = len(stream) // seq_len
    return stream[: n * seq_len].reshape(n, seq_len)


def batches(blocks: "torch.Tensor", batch_size: int, seed: int) -> Iterator["torch.Tensor"]:
    """Endless batches of blocks: each pass over the blocks in a fresh seeded order."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    order = torch.empty(0, dtype=torch.long)
    while True:
        while len(order) < batch_size:
            order = torch.cat([order, torch.randperm(len(blocks), generator=gen)])
        idx, order = order[:batch_size], order[batch_size:]
        yield blocks[idx.to(blocks.device)]


# --- model and optimizer -----------------------------------------------------------------------


def build_model(params: Params, tokenizer: "PreTrainedTokenizerFast", settings: Settings) -> "PreTrainedModel":
    """A freshly initialised causal LM (seeded) sized by ``params``, vocabulary padded to 64."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig

    vocab = math.ceil(len(tokenizer) / 64) * 64  # tensor-core / SIMD friendly matmul shapes
    eos = tokenizer.eos_token_id
    if params.architecture == "llama":
        config = LlamaConfig(
            vocab_size=vocab,
            hidden_size=params.d_model,
            # SwiGLU's 8/3·d keeps the FFN parameter count of a 4·d MLP; rounded up to 64.
            intermediate_size=math.ceil(8 * params.d_model / 3 / 64) * 64,
            num_hidden_layers=params.n_layers,
            num_attention_heads=params.n_heads,
            num_key_value_heads=params.n_heads,
            max_position_embeddings=params.seq_len,
            tie_word_embeddings=True,
            bos_token_id=eos,
            eos_token_id=eos,
            pad_token_id=eos,
        )
    else:
        config = GPT2Config(
            vocab_size=vocab,
            n_positions=params.seq_len,
            n_embd=params.d_model,
            n_layer=params.n_layers,
            n_head=params.n_heads,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            tie_word_embeddings=True,
            bos_token_id=eos,
            eos_token_id=eos,
            pad_token_id=eos,
        )
    torch.manual_seed(params.seed)
    return AutoModelForCausalLM.from_config(config, attn_implementation=settings.attn_implementation)


def configure_optimizer(model: "torch.nn.Module", params: Params, settings: Settings) -> "torch.optim.AdamW":
    """AdamW with weight decay on matrices (embeddings included) and none on norms and biases."""
    import torch

    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": decay, "weight_decay": params.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=params.lr, betas=(params.beta1, params.beta2), fused=settings.fused_adamw)


def lr_at(step: int, total_steps: int, params: Params, time_fraction: float = 0.0) -> float:
    """Learning rate for 0-based ``step``: linear warmup, then cosine down to lr·min_lr_ratio.

    ``time_fraction`` (elapsed / time budget) pushes the decay ahead when time, not steps, is the
    binding budget, so a run stopped by the clock still ends at the low learning rate.
    """
    warmup = min(params.warmup_steps, total_steps)
    if step < warmup:
        return params.lr * (step + 1) / warmup
    min_lr = params.lr * params.min_lr_ratio
    progress = max((step - warmup) / max(1, total_steps - warmup), time_fraction)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0))) * (params.lr - min_lr)


def planned_steps(params: Params, n_blocks: int) -> int:
    """Optimizer steps the budget allows (see :class:`Params` for the rule)."""
    tokens_per_step = params.batch_size * params.grad_accum_steps * params.seq_len
    if params.max_steps is None and params.max_tokens is None:
        return math.ceil(n_blocks * params.seq_len / tokens_per_step)
    limits = []
    if params.max_steps is not None:
        limits.append(params.max_steps)
    if params.max_tokens is not None:
        limits.append(math.ceil(params.max_tokens / tokens_per_step))
    return min(limits)


# --- the training loop -------------------------------------------------------------------------


def train_loop(
    model: "PreTrainedModel", blocks: np.ndarray, params: Params, settings: Settings
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Train ``model`` in place on packed ``blocks``; return history rows and summary stats."""
    import torch

    device = torch.device(settings.device)
    model.to(device)
    model.train()
    # Compiling returns a wrapper; the optimizer, clipping and saving use the original module.
    step_model = torch.compile(model) if settings.compile else model
    optimizer = configure_optimizer(model, params, settings)
    use_bf16 = settings.dtype == "bfloat16"
    data = batches(torch.from_numpy(blocks).to(device), params.batch_size, params.seed)
    total_steps = planned_steps(params, len(blocks))
    tokens_per_step = params.batch_size * params.grad_accum_steps * params.seq_len

    history: list[dict[str, Any]] = []
    loss_sum = torch.zeros((), device=device)  # summed on device: no GPU sync per step
    micro_since_log, step, tokens, stopped_by = 0, 0, 0, "max_steps"
    if params.max_tokens is not None and params.max_steps is not None:
        stopped_by = "max_tokens" if math.ceil(params.max_tokens / tokens_per_step) < params.max_steps else "max_steps"
    elif params.max_tokens is not None:
        stopped_by = "max_tokens"
    elif params.max_steps is None:
        stopped_by = "one_pass"
    t0, cpu0 = time.perf_counter(), time.process_time()
    for step in track(range(1, total_steps + 1), desc="train steps"):
        time_fraction = (time.perf_counter() - t0) / params.time_budget_s if params.time_budget_s else 0.0
        lr = lr_at(step - 1, total_steps, params, time_fraction)
        for group in optimizer.param_groups:
            group["lr"] = lr
        for _ in range(params.grad_accum_steps):
            x = next(data)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                # The model shifts the labels itself; no KV cache is wanted while training.
                loss = step_model(input_ids=x, labels=x, use_cache=False).loss
            (loss / params.grad_accum_steps).backward()
            loss_sum += loss.detach()
            micro_since_log += 1
        if params.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), params.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        tokens += tokens_per_step

        out_of_time = params.time_budget_s is not None and time.perf_counter() - t0 > params.time_budget_s
        if step % params.log_every == 0 or step == total_steps or out_of_time:
            mean_loss = loss_sum.item() / micro_since_log  # .item() waits for the GPU: only here
            loss_sum.zero_()
            micro_since_log = 0
            history.append(
                {
                    "step": step,
                    "loss": mean_loss,
                    "lr": lr,
                    "tokens": tokens,
                    "elapsed_s": time.perf_counter() - t0,
                    "cpu_s": time.process_time() - cpu0,
                }
            )
        if out_of_time:
            stopped_by = "time_budget"
            break
    elapsed = time.perf_counter() - t0
    model.eval()
    stats = {
        "steps": step if total_steps else 0,
        "planned_steps": total_steps,
        "stopped_by": stopped_by,
        "tokens_seen": tokens,
        "epochs": round(tokens / blocks.size, 4) if blocks.size else 0.0,
        "train_s": round(elapsed, 3),
        "tokens_per_s": round(tokens / elapsed, 1) if tokens else 0.0,
        "final_loss": history[-1]["loss"] if history else None,
    }
    return history, stats


def _check(train: pa.Table) -> None:
    if train.num_rows == 0:
        raise WinnowError("train: the training table is empty")
    require_columns(train, {"text": pa.string()}, "train")
    bad = pc.or_kleene(pc.is_null(train["text"]), pc.equal(pc.utf8_length(train["text"]), 0))
    if pc.any(bad).as_py():
        row = pc.index(bad, True).as_py()
        rid = train["id"][row].as_py() if "id" in train.column_names else None
        raise WinnowError(f"train: column 'text' is null or empty in row {row}" + (f" (id {rid!r})" if rid is not None else ""))
