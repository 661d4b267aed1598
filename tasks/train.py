"""Train: a causal LM on the tokenize stage's packed token stream, from scratch or from a checkpoint.

Read it top to bottom like nanoGPT's ``train.py``: settings (the GPU switches are plain fields of
:class:`Params`, resolved for the device by :func:`resolve_settings`), data, model, optimizer, the
one training loop in :func:`fit`, then saving.

* **Deterministic by fingerprint.** The budget is steps or tokens, never time: the same
  fingerprint names the same weights (bit-identical on CPU for the same thread count). The batch
  order is a pure function of ``seed`` and the step (each pass over the blocks in its own seeded
  permutation), so a resumed run reads exactly the batches the uninterrupted one would.
* **Data**: ``tokens.npy`` of the tokenize entry (memory-mapped), cut into blocks of ``seq_len``
  tokens (packing: no padding is ever trained).
* **Model**: a preset (``tiny`` ... ``llama-150m``, see :mod:`tasks.lm`), a user's ``transformers``
  config, or a pretrained model (``init = "smollm2"`` or a folder) for continued pretraining.
* **Loop**: AdamW (fused on CUDA), linear warmup then cosine decay, gradient clipping and
  accumulation, bf16 autocast on CUDA (fp32 on CPU), SDPA attention, optional ``torch.compile``,
  TF32 on CUDA, and ``devices = N`` data-parallel processes (DDP: NCCL on GPUs, gloo on CPU).
* **Resume**: with a ``checkpoint_dir`` (the store passes one keyed by the fingerprint),
  a checkpoint every ``checkpoint_every`` steps (:mod:`tasks.checkpoint`); a rerun after a crash
  or kill continues from the newest one and ends with the same weights.
* **Safety cap**: ``WINNOW_TRAIN_SAFETY_CAP_S`` (environment, never a parameter, so never in the
  fingerprint) stops a run that takes too long: it checkpoints and fails with one line, and
  nothing is committed; a rerun resumes.

The model and tokenizer are written with ``save_pretrained`` (safetensors) into ``out_dir`` with
``loss.png``, the loss curve. Nothing is downloaded: ``HF_HUB_OFFLINE=1`` is set before
``transformers`` is imported.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Literal

import numpy as np
import pyarrow as pa

from tasks import lm, pretrained
from tasks import tokenize as tokenize_stage
from tasks.checkpoint import Checkpoints
from tasks.common import StageResult, track
from winnow.errors import WinnowError

if TYPE_CHECKING:  # torch and transformers load lazily: reading a config must not pay for them
    import torch
    from transformers import PreTrainedModel

# CPU threads that spin while waiting (OpenMP's default) collapse throughput when the cores are
# shared: measured 10x slower with 2 threads on a busy 2-core box, while passive waiting costs a few
# percent at most. Takes effect only if torch is not imported yet; the user's setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# MKL (torch's CPU BLAS) may run a matmul on fewer threads than asked when the machine is busy,
# which changes the order of float sums: the same fingerprint then named different weights on a
# loaded box (measured: model.safetensors differed after 30 steps with 3 CPU hogs, identical with
# this). Fixed thread counts keep CPU training bit-identical for a given num_threads.
os.environ.setdefault("MKL_DYNAMIC", "FALSE")
os.environ.setdefault("OMP_DYNAMIC", "FALSE")

STAGE = "train"
SAFETY_CAP_ENV = "WINNOW_TRAIN_SAFETY_CAP_S"
LOSS_PLOT = "loss.png"
HISTORY_SCHEMA = pa.schema(
    [
        ("step", pa.int64()),
        ("loss", pa.float64()),  # mean training loss (nats/token) over the steps since the last row
        ("lr", pa.float64()),
        ("tokens", pa.int64()),  # tokens trained on so far
        ("elapsed_s", pa.float64()),  # seconds of training loop so far (setup excluded; resumes add up)
        ("cpu_s", pa.float64()),  # CPU seconds of the training process(es) so far
    ]
)


@dataclass(frozen=True)
class Params:
    """Parameters of the train stage.

    Model:
        preset: ``"tiny"`` (default: Llama d=256, 4 layers, 4.3M parameters with a 4k BPE; a few
            minutes on 2 CPU cores), ``"25m"``, ``"gpt2-124m"`` or ``"llama-150m"`` (see
            :mod:`tasks.lm`). The vocabulary is always the tokenizer's, padded to 64.
        model_config: path to a ``transformers`` config JSON to use instead of the preset.
        init: ``"scratch"`` (default), a bundled pretrained model (``"smollm2"``: SmolLM2-135M) or
            a local ``save_pretrained`` folder: continued pretraining / fine-tuning from it. Its
            tokenizer is then used (``tokenize.tokenizer = "auto"``); preset and model_config
            are ignored. ``max_steps = 0`` saves the pretrained model itself as the entry.
        architecture, d_model, n_layers, n_heads: override the preset's value (None: keep it).
        seq_len: tokens per training sequence; None = the preset's context (256 for tiny), the
            config's context, or min(context, 1024) for a pretrained model. Longer than the
            context of a given config or pretrained model is an error.

    Budget (steps or tokens, never time; the tighter one wins):
        batch_size: sequences per optimizer step and micro-batch (8: a CPU gains nothing from
            more). grad_accum_steps: micro-batches per optimizer step (a bigger effective
            batch without more memory; the batch is ``batch_size * grad_accum_steps``).
        max_steps: optimizer steps; 0 saves the initial model (untrained, or the pretrained one).
            Default 200 steps x 8 x 256 = 410k tokens: 2-3 minutes on 2 free cores.
        max_tokens: tokens to train on (rounded up to whole steps); None = no token limit. If both
            are None, one pass over the data.

    Optimiser:
        lr: peak learning rate (3e-3 suits models this small; ~6e-4 at 100M+ params; 1e-4 or less
            to continue a pretrained model). min_lr_ratio: cosine decay ends at lr * this.
        warmup_steps: linear warmup steps (clamped to the planned steps).
        weight_decay: AdamW decay on matrices only (not norms/biases); 0.1 is the usual value.
        beta1, beta2: AdamW betas; 0.95 for beta2 is the LLM-training norm.
        grad_clip: max global gradient norm (1.0); 0 disables clipping.

    Device and speed switches ("auto"/None picks the right value for the device):
        device: ``"auto"`` (cuda if available, else cpu), ``"cpu"`` or ``"cuda"``.
        devices: data-parallel processes (DDP). 1 = this process. On CUDA, one per GPU; on CPU
            (gloo) the threads are split between them. ``batch_size`` must divide by it.
        dtype: autocast dtype: ``"auto"`` (bfloat16 on CUDA, float32 on CPU), ``"float32"`` or
            ``"bfloat16"``. Weights and optimizer state stay float32 either way.
        compile: wrap the model in ``torch.compile``; None = on for CUDA, off on CPU.
        fused_adamw: use the fused AdamW kernel; None = on for CUDA.
        tf32: allow TF32 matmuls on CUDA (ignored on CPU).
        attn_implementation: ``"sdpa"`` (PyTorch scaled_dot_product_attention: flash/efficient
            kernels on GPU) or ``"eager"`` (the reference implementation, for debugging).
        num_threads: CPU threads for torch; None = the CPUs this process may use.

    Other:
        seed: seeds model init and batch order; same seed and data give the same weights on CPU.
        log_every: steps per history row (reading the loss syncs the GPU, so not every step).
        checkpoint_every: steps between checkpoints (a multiple of log_every; only when the
            store gives a checkpoint folder). 0 disables them.
    """

    preset: str = "tiny"
    model_config: str | None = None
    init: str = "scratch"
    architecture: Literal["llama", "gpt2"] | None = None
    d_model: int | None = None
    n_layers: int | None = None
    n_heads: int | None = None
    seq_len: int | None = None
    batch_size: int = 8
    grad_accum_steps: int = 1
    max_steps: int | None = 200
    max_tokens: int | None = None
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 20
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    devices: int = 1
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    compile: bool | None = None
    fused_adamw: bool | None = None
    tf32: bool = True
    attn_implementation: Literal["sdpa", "eager"] = "sdpa"
    num_threads: int | None = None
    seed: int = 0
    log_every: int = 10
    checkpoint_every: int = 50

    def __post_init__(self) -> None:
        if self.preset not in lm.PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; presets: {', '.join(lm.PRESETS)}")
        for name in ("d_model", "n_layers", "n_heads", "seq_len", "num_threads"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("batch_size", "grad_accum_steps", "log_every", "devices"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_steps is not None and self.max_steps < 0:
            raise ValueError(f"max_steps must be >= 0, got {self.max_steps}")
        if self.max_tokens is not None and self.max_tokens < 0:
            raise ValueError(f"max_tokens must be >= 0, got {self.max_tokens}")
        if self.lr <= 0 or not 0 <= self.min_lr_ratio <= 1:
            raise ValueError("lr must be > 0 and min_lr_ratio in [0, 1]")
        if self.batch_size % self.devices:
            raise ValueError(f"batch_size ({self.batch_size}) must be divisible by devices ({self.devices})")
        if self.checkpoint_every < 0 or (self.checkpoint_every and self.checkpoint_every % self.log_every):
            raise ValueError(f"checkpoint_every ({self.checkpoint_every}) must be 0 or a multiple of log_every ({self.log_every})")
        if self.init != "scratch" and self.model_config:
            raise ValueError("set either init (a pretrained model) or model_config (a config to train from scratch), not both")

    @property
    def pretrained(self) -> bool:
        """True when training continues from a pretrained model (``init`` is not ``"scratch"``)."""
        return self.init != "scratch"


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


# --- checks before any compute -----------------------------------------------------------------


def identity(params: Params) -> dict[str, str]:
    """What the fingerprint needs beyond the params: the content of a pretrained init or config file."""
    out = {}
    if params.pretrained:
        out["init"] = pretrained.source_identity(params.init)
    if params.model_config:
        out["model_config"] = lm.config_identity(params.model_config)
    return out


def preflight(params: Params) -> None:
    """Validate the model choice without reading data or weights (before the pipeline starts)."""
    context = None
    if params.pretrained:
        pretrained.check_source(params.init)
        context = lm.context_of(pretrained.model_config(params.init))
    elif params.model_config:
        context = lm.context_of(lm.read_user_config(params.model_config))
    if context and params.seq_len and params.seq_len > context:
        what = f"train.init {params.init!r}" if params.pretrained else f"train.model_config {params.model_config}"
        raise WinnowError(f"train.seq_len = {params.seq_len} is above the context of {what} ({context} positions)")


def seq_len_for(params: Params, context: int | None) -> int:
    """The training sequence length: ``params.seq_len``, else the model's (capped at 1024 when pretrained)."""
    if params.seq_len:
        return params.seq_len
    if params.pretrained or params.model_config:
        return min(context or 1024, 1024)
    return lm.PRESETS[params.preset].context


def shape_of(params: Params) -> lm.Shape:
    """The preset's shape with the overrides applied; the context grows to ``seq_len`` if asked."""
    base = lm.PRESETS[params.preset]
    return lm.Shape(
        architecture=params.architecture or base.architecture,
        d_model=params.d_model or base.d_model,
        n_layers=params.n_layers or base.n_layers,
        n_heads=params.n_heads or base.n_heads,
        context=params.seq_len or base.context,
    )


# --- the stage ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    """Everything one training process needs (picklable: DDP workers receive it)."""

    tokens_dir: str
    params: Params
    settings: Settings
    out_dir: str
    checkpoint_dir: str | None
    key: dict[str, Any]


def run(tokens: Path, params: Params = Params(), out_dir: Path | None = None,
        checkpoint_dir: Path | None = None) -> StageResult:
    """Train a causal LM on a tokenize entry's token stream and save it into ``out_dir``.

    Args:
        tokens: the tokenize stage's output folder (``tokens.npy``, ``meta.json``, the tokenizer).
        params: see :class:`Params`.
        out_dir: folder to write ``config.json``, ``model.safetensors``, the tokenizer and
            ``loss.png`` into (created if missing). Required.
        checkpoint_dir: where to keep resumable checkpoints (the store's, keyed by the
            fingerprint); a checkpoint found there is resumed. None: no checkpoints.

    Returns:
        table ``history`` (:data:`HISTORY_SCHEMA`), metrics (parameter count, tokens seen,
        tokens/s, final loss, device, dtype, resumed_from, ...). The model lives in ``out_dir``.

    Raises:
        WinnowError: not a tokenize folder, tokenizer not the pretrained model's, too little text
            for one sequence, seq_len above the model's context, a checkpoint of another config,
            ``device='cuda'`` without a GPU, or the safety cap reached (checkpoint kept).
    """
    if out_dir is None:
        raise WinnowError("train: out_dir is required (the folder the model is saved into)")
    tokens = Path(tokens)
    meta = tokenize_stage.read_meta(tokens)
    preflight(params)
    if params.pretrained and meta["tokenizer_identity"] != tokenize_stage.tokenizer_identity(params.init):
        raise WinnowError(f"train.init = {params.init!r} but the tokens were made with tokenizer {meta['tokenizer']!r}: "
                          "set tokenize.tokenizer = 'auto' so the pretrained model reads its own token ids")
    settings = resolve_settings(params)
    if params.devices > 1 and settings.device == "cuda":
        import torch

        if torch.cuda.device_count() < params.devices:
            raise WinnowError(f"train.devices = {params.devices} but only {torch.cuda.device_count()} GPU(s) are visible")
    key = {"params": _result_params(params), "tokens": meta, "settings": asdict(settings) | {"num_threads": None}}
    job = Job(str(tokens), params, settings, str(out_dir), checkpoint_dir and str(checkpoint_dir), key)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    outcome = train_job(job) if params.devices == 1 else _spawn(job)
    history = outcome.pop("history")
    save_loss_plot(history, Path(out_dir) / LOSS_PLOT, title=f"train ({params.init if params.pretrained else params.preset})")
    metrics = {**outcome, "tokenizer": meta["tokenizer"], "tokenizer_vocab": meta["vocab"], "train_tokens": meta["tokens"],
               "device": settings.device, "devices": params.devices, "dtype": settings.dtype, "compile": settings.compile,
               "fused_adamw": settings.fused_adamw, "attn_implementation": settings.attn_implementation,
               "num_threads": settings.num_threads}
    metrics["achieved_tflops"] = round(metrics["flops_per_token"] * metrics["tokens_per_s"] / 1e12, 4)
    return StageResult(tables={"history": pa.Table.from_pylist(history, schema=HISTORY_SCHEMA)}, metrics=metrics)


def _result_params(params: Params) -> dict[str, Any]:
    """The params that shape the weights (not cadence or thread count): a checkpoint's identity."""
    skip = {"log_every", "checkpoint_every", "num_threads"}
    return {k: v for k, v in asdict(params).items() if k not in skip}


def train_job(job: Job, rank: int = 0, world: int = 1) -> dict[str, Any]:
    """Build the model, train it and (rank 0) save it; returns history and stats."""
    import torch

    params, settings = job.params, job.settings
    meta = tokenize_stage.read_meta(Path(job.tokens_dir))
    threads = max(1, settings.num_threads // world) if settings.device == "cpu" else settings.num_threads
    with torch_settings(replace(settings, num_threads=threads)):
        model, seq_len = make_model(params, settings, meta)
        data = BlockStream(tokenize_stage.load_tokens(Path(job.tokens_dir)), seq_len, params.seed)
        if data.n_blocks == 0:
            raise WinnowError(f"train: the training text gives {meta['tokens']} tokens, fewer than seq_len = {seq_len}; "
                              "sample more text (mixture.train_bytes) or lower train.seq_len")
        ckpts = Checkpoints(Path(job.checkpoint_dir), {**job.key, "model": model.config.to_dict()}) if job.checkpoint_dir else None
        history, stats = fit(model, data, params, settings, ckpts, rank, world)
        if rank == 0:
            model.save_pretrained(job.out_dir)
            tokenize_stage.load_tokenizer(job.tokens_dir).save_pretrained(job.out_dir)
    n_params = sum(p.numel() for p in model.parameters())
    cfg = model.config
    n_layers = getattr(cfg, "num_hidden_layers", None) or cfg.n_layer
    d_model = getattr(cfg, "hidden_size", None) or cfg.n_embd
    return {"history": history, **stats, "params": n_params, "model_type": cfg.model_type, "model_vocab": cfg.vocab_size,
            "seq_len": seq_len, "init": params.init,
            # 6N for the matmuls of forward + backward, plus attention's 12·L·d·T (PaLM appendix B).
            "flops_per_token": 6 * n_params + 12 * n_layers * d_model * seq_len}


def make_model(params: Params, settings: Settings, meta: dict[str, Any]) -> tuple["PreTrainedModel", int]:
    """The model to train and the sequence length: pretrained, a user's config, or a preset."""
    vocab, eos = meta["vocab"], meta["eos_token_id"]
    if params.pretrained:
        model, _ = pretrained.load_pretrained(params.init, settings.attn_implementation)
        if model.config.vocab_size < vocab:
            raise WinnowError(f"train.init {params.init!r}: model vocabulary {model.config.vocab_size} < tokenizer's {vocab}")
    else:
        config = (lm.user_config(params.model_config, lm.padded_vocab(vocab), eos) if params.model_config
                  else lm.preset_config(shape_of(params), lm.padded_vocab(vocab), eos))
        model = lm.build(config, params.seed, settings.attn_implementation)
    context = lm.context_of(model.config)
    seq_len = seq_len_for(params, context)
    if context and seq_len > context:
        raise WinnowError(f"train.seq_len = {seq_len} is above the model's context ({context} positions)")
    return model, seq_len


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


# --- data ----------------------------------------------------------------------------------------


class BlockStream:
    """Blocks of ``seq_len`` tokens from the packed stream, in a seeded order that depends only on position.

    Sample position ``p`` (counting every sequence trained on, across steps and processes) is
    block ``perm_e[p mod n]`` of pass ``e = p // n``, with ``perm_e`` a permutation seeded by
    ``(seed, e)``. So step ``s`` reads the same blocks whether the run was resumed or split over
    processes: the data position to save is just the step.
    """

    def __init__(self, stream: np.ndarray, seq_len: int, seed: int) -> None:
        self.stream, self.seq_len, self.seed = stream, seq_len, seed
        self.n_blocks = len(stream) // seq_len
        self._perms: dict[int, np.ndarray] = {}

    def blocks(self, positions: np.ndarray) -> np.ndarray:
        """Block indices of sample positions."""
        epochs, within = np.divmod(positions, self.n_blocks)
        out = np.empty(len(positions), dtype=np.int64)
        for e in np.unique(epochs):
            if e not in self._perms:
                self._perms = {e: np.random.default_rng([self.seed, int(e)]).permutation(self.n_blocks)}
            mask = epochs == e
            out[mask] = self._perms[e][within[mask]]
        return out

    def batch(self, positions: np.ndarray) -> "torch.Tensor":
        """``[len(positions), seq_len]`` int64 token ids."""
        import torch

        starts = self.blocks(positions) * self.seq_len
        rows = np.stack([self.stream[s : s + self.seq_len] for s in starts]).astype(np.int64)
        return torch.from_numpy(rows)


def positions(step: int, micro: int, params: Params, rank: int = 0, world: int = 1) -> np.ndarray:
    """Sample positions of 0-based ``step``'s micro-batch ``micro`` on process ``rank`` of ``world``."""
    local = params.batch_size // world
    first = (step * params.grad_accum_steps + micro) * params.batch_size + rank * local
    return np.arange(first, first + local, dtype=np.int64)


# --- optimizer and schedule ----------------------------------------------------------------------


def configure_optimizer(model: "torch.nn.Module", params: Params, settings: Settings) -> "torch.optim.AdamW":
    """AdamW with weight decay on matrices (embeddings included) and none on norms and biases."""
    import torch

    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": decay, "weight_decay": params.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=params.lr, betas=(params.beta1, params.beta2), fused=settings.fused_adamw)


def lr_at(step: int, total_steps: int, params: Params) -> float:
    """Learning rate for 0-based ``step``: linear warmup, then cosine down to lr·min_lr_ratio."""
    warmup = min(params.warmup_steps, total_steps)
    if step < warmup:
        return params.lr * (step + 1) / warmup
    min_lr = params.lr * params.min_lr_ratio
    progress = (step - warmup) / max(1, total_steps - warmup)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0))) * (params.lr - min_lr)


def planned_steps(params: Params, n_blocks: int, seq_len: int | None = None) -> int:
    """Optimizer steps the budget allows (see :class:`Params` for the rule)."""
    seq_len = seq_len or shape_of(params).context
    tokens_per_step = params.batch_size * params.grad_accum_steps * seq_len
    if params.max_steps is None and params.max_tokens is None:
        return math.ceil(n_blocks * seq_len / tokens_per_step)
    limits = []
    if params.max_steps is not None:
        limits.append(params.max_steps)
    if params.max_tokens is not None:
        limits.append(math.ceil(params.max_tokens / tokens_per_step))
    return min(limits)


def stopped_by(params: Params, seq_len: int) -> str:
    """Which budget ends the run: ``max_steps``, ``max_tokens`` or ``one_pass``."""
    if params.max_steps is None and params.max_tokens is None:
        return "one_pass"
    if params.max_tokens is None:
        return "max_steps"
    per_step = params.batch_size * params.grad_accum_steps * seq_len
    return "max_tokens" if params.max_steps is None or math.ceil(params.max_tokens / per_step) < params.max_steps else "max_steps"


def safety_cap_s() -> float | None:
    """The wall-clock safety stop from ``WINNOW_TRAIN_SAFETY_CAP_S`` (seconds), or None."""
    raw = os.environ.get(SAFETY_CAP_ENV, "").strip()
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise WinnowError(f"{SAFETY_CAP_ENV}={raw!r}: expected a number of seconds") from None
    return value if value > 0 else None


# --- the training loop ---------------------------------------------------------------------------


@dataclass
class LoopState:
    """What the loop carries from step to step, and what a checkpoint saves besides the tensors."""

    step: int = 0
    tokens: int = 0
    history: list[dict[str, Any]] | None = None
    loss_sum: float = 0.0  # summed micro-batch losses since the last history row (all processes)
    micro: int = 0
    elapsed_s: float = 0.0
    cpu_s: float = 0.0


def fit(model: "PreTrainedModel", data: BlockStream, params: Params, settings: Settings,
        ckpts: Checkpoints | None = None, rank: int = 0, world: int = 1) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Train ``model`` in place on ``data``; resume from ``ckpts`` if one is there. Returns history and stats."""
    import torch

    device = torch.device(f"cuda:{rank}" if settings.device == "cuda" and world > 1 else settings.device)
    model.to(device)
    model.train()
    optimizer = configure_optimizer(model, params, settings)
    saved = ckpts.load(model, optimizer) if ckpts else None  # after .to(device), before wrapping
    st = LoopState(**{k: saved[k] for k in LoopState.__dataclass_fields__}) if saved else LoopState(history=[])
    resumed_from = st.step
    wrapped = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        wrapped = DistributedDataParallel(model, device_ids=[rank] if device.type == "cuda" else None)
    # Compiling returns a wrapper; the optimizer, clipping and saving use the original module.
    step_model = torch.compile(wrapped) if settings.compile else wrapped
    total = planned_steps(params, data.n_blocks, data.seq_len)
    tokens_per_step = params.batch_size * params.grad_accum_steps * data.seq_len
    loss_sum = torch.tensor(st.loss_sum if rank == 0 else 0.0, device=device)  # on device: no sync per step
    cap, t0, cpu0 = safety_cap_s(), time.perf_counter(), time.process_time()
    clock = lambda: (st.elapsed_s + time.perf_counter() - t0, st.cpu_s + time.process_time() - cpu0)  # noqa: E731
    for step in track(range(st.step + 1, total + 1), desc="train steps"):
        lr = lr_at(step - 1, total, params)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss_sum += _accumulate(step_model, wrapped, data, step - 1, params, settings, device, rank, world)
        if params.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), params.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        st.step, st.tokens, st.micro = step, st.tokens + tokens_per_step, st.micro + params.grad_accum_steps
        if step % params.log_every == 0 or step == total:
            elapsed, cpu = clock()
            st.history.append({"step": step, "loss": _all_sum(loss_sum, world) / (st.micro * world), "lr": lr,
                               "tokens": st.tokens, "elapsed_s": elapsed, "cpu_s": cpu})
            loss_sum.zero_()
            st.micro = 0
        if ckpts and params.checkpoint_every and step % params.checkpoint_every == 0 and step < total:
            _checkpoint(ckpts, model, optimizer, st, loss_sum, clock, rank, world)
        if cap is not None and step < total and _over(clock()[0] - st.elapsed_s, cap, device, world):
            where = _checkpoint(ckpts, model, optimizer, st, loss_sum, clock, rank, world) if ckpts else None
            raise WinnowError(f"train: stopped by the safety cap ({SAFETY_CAP_ENV}={cap:g} s) after {step}/{total} steps; "
                              + (f"checkpoint kept in {where}; rerun to resume" if where else "no checkpoint folder; nothing saved"))
    model.eval()
    run_s = time.perf_counter() - t0
    trained = (st.step - resumed_from) * tokens_per_step
    return st.history, {
        "steps": st.step, "planned_steps": total, "stopped_by": stopped_by(params, data.seq_len),
        "resumed_from": resumed_from, "tokens_seen": st.tokens,
        "epochs": round(st.tokens / (data.n_blocks * data.seq_len), 4), "train_s": round(run_s, 3),
        "tokens_per_s": round(trained / run_s, 1) if trained else 0.0,
        "final_loss": st.history[-1]["loss"] if st.history else None,
    }


def _accumulate(step_model: Any, wrapped: Any, data: BlockStream, step: int, params: Params, settings: Settings,
                device: "torch.device", rank: int, world: int) -> "torch.Tensor":
    """Forward and backward over one step's micro-batches; returns their summed loss (on device)."""
    import torch

    use_bf16 = settings.dtype == "bfloat16"
    total = torch.zeros((), device=device)
    for micro in range(params.grad_accum_steps):
        x = data.batch(positions(step, micro, params, rank, world)).to(device, non_blocking=True)
        last = micro == params.grad_accum_steps - 1
        # DDP all-reduces gradients on every backward unless told not to: only the last one needs it.
        sync = contextlib.nullcontext() if last or world == 1 else wrapped.no_sync()
        with sync:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                # The model shifts the labels itself; no KV cache is wanted while training.
                loss = step_model(input_ids=x, labels=x, use_cache=False).loss
            (loss / params.grad_accum_steps).backward()
        total += loss.detach()
    return total


def _all_sum(value: "torch.Tensor", world: int) -> float:
    if world > 1:
        import torch.distributed as dist

        value = value.clone()
        dist.all_reduce(value)
    return float(value.item())  # .item() waits for the GPU: only at log and checkpoint points


def _over(elapsed: float, cap: float, device: "torch.device", world: int) -> bool:
    """Whether the safety cap is reached; rank 0's clock decides for every process."""
    if world == 1:
        return elapsed > cap
    import torch
    import torch.distributed as dist

    flag = torch.tensor([1.0 if elapsed > cap else 0.0], device=device)
    dist.broadcast(flag, 0)
    return bool(flag.item())


def _checkpoint(ckpts: Checkpoints, model: Any, optimizer: Any, st: LoopState, loss_sum: "torch.Tensor",
                clock: Any, rank: int, world: int) -> Path | None:
    """Save the loop state (rank 0 writes; every process waits for it)."""
    pending = _all_sum(loss_sum, world)  # every rank joins the reduction
    where = None
    if rank == 0:
        elapsed, cpu = clock()
        state = asdict(replace(st, loss_sum=pending, elapsed_s=elapsed, cpu_s=cpu))
        state.pop("step")
        where = ckpts.save(st.step, model, optimizer, state)
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
    return where


# --- data-parallel processes ---------------------------------------------------------------------


def _spawn(job: Job) -> dict[str, Any]:
    """Run ``job`` in ``devices`` processes (DDP); rank 0 saves the model and reports the result."""
    import torch.multiprocessing as mp

    scratch = Path(tempfile.mkdtemp(prefix="winnow-ddp-"))
    try:
        mp.start_processes(_worker, args=(job, str(scratch)), nprocs=job.params.devices, join=True, start_method="spawn")
    except mp.ProcessRaisedException as e:
        error = scratch / "error.txt"
        raise WinnowError(error.read_text(encoding="utf-8")) if error.is_file() else RuntimeError(str(e)) from None
    finally:
        result = json.loads((scratch / "result.json").read_text()) if (scratch / "result.json").is_file() else None
        shutil.rmtree(scratch, ignore_errors=True)
    return result


def _worker(rank: int, job: Job, scratch: str) -> None:
    """One DDP process: join the group, train its share of every batch, rank 0 writes the result."""
    import torch
    import torch.distributed as dist

    world = job.params.devices
    backend = "nccl" if job.settings.device == "cuda" else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(rank)
    dist.init_process_group(backend, init_method=f"file://{scratch}/rendezvous", rank=rank, world_size=world)
    try:
        outcome = train_job(job, rank, world)
        if rank == 0:
            (Path(scratch) / "result.json").write_text(json.dumps(outcome))
    except WinnowError as e:
        if rank == 0:
            (Path(scratch) / "error.txt").write_text(str(e), encoding="utf-8")
        raise
    finally:
        dist.destroy_process_group()


# --- the loss curve ------------------------------------------------------------------------------


def save_loss_plot(history: list[dict[str, Any]], path: Path, title: str = "train") -> Path | None:
    """Training loss (nats/token) against tokens seen, as a PNG; None when there is nothing to plot."""
    if not history:
        return None
    import matplotlib

    matplotlib.use("Agg")  # no display; safe in worker threads
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 3.6), dpi=100)
    ax = fig.subplots()
    ax.plot([h["tokens"] for h in history], [h["loss"] for h in history], marker="." if len(history) < 40 else None)
    ax.set_xlabel("tokens")
    ax.set_ylabel("training loss (nats/token)")
    ax.set_title(f"{title}: final loss {history[-1]['loss']:.3f} after {history[-1]['step']} steps")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, format="png")
    return path
