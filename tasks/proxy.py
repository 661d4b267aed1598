"""Proxy: a tiny model trained on one mixture for a fixed token budget, scored per held-out domain.

Learned mixtures (RegMix, DoReMi) and ablation receipts both need many small, cheap training runs.
One proxy is one store entry whose fingerprint is (corpus content, domain weights, budget, model
shape, seed, held-out split), so adding proxies or rerunning a batch after a crash computes only
the ones missing from the store.

A proxy is the main pipeline in miniature, made of the real stages: :func:`tasks.mixture.run`
samples ``train_bytes`` of text with the given weights ("manual" method) and the same held-out
split as the main run (``split`` holds the mixture's split settings), :func:`tasks.tokenize.run`
fits a small BPE on it, :func:`tasks.train.run` trains a ``d_model`` x ``n_layers`` Llama for
``max_tokens`` tokens (deterministic: same fingerprint, same weights), and
:func:`tasks.evaluate.run` reports bits/byte per held-out domain. Bits/byte is
tokenizer-independent, so proxies with different fitted BPEs compare.

Only the per-domain scores are kept (table ``data``); the model is kept in the entry's files when
``keep_model`` (DoReMi's reference model needs its weights), otherwise deleted.
"""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)

from tasks import compare, evaluate, mixture, tokenize, train
from tasks.common import BENCHMARK_SCHEMA, StageResult
from winnow.errors import WinnowError

STAGE = "proxy"
MODEL_DIR = "model"  # inside the entry's files, when keep_model
RESULT_SCHEMA = pa.schema(
    [("domain", pa.string()), ("weight", pa.float64()), ("bits_per_byte", pa.float64()), ("heldout_bytes", pa.int64())]
)
#: Table ``benchmarks`` of a proxy given benchmark items: bits/byte of the gold answers (dev half).
BENCHMARK_RESULT_SCHEMA = pa.schema([("benchmark", pa.string()), ("bits_per_byte", pa.float64()), ("items", pa.int64())])
BENCHMARK_PREFIX = "benchmark:"


@dataclass(frozen=True)
class Params:
    """Parameters of one proxy run.

    Attributes:
        weights: domain -> weight of the training mixture; must name every corpus domain and sum
            to 1 (within 1e-6), so a proxy's mixture is exactly the one the regression reads.
        split: the mixture stage's held-out settings (:func:`tasks.mixture.split_settings`), so
            proxies are scored on the main run's held-out documents.
        train_bytes: UTF-8 bytes of training text sampled with ``weights``. Default 300 kB is
            about 3x the token budget at a 512-token BPE, so a proxy reads each document once.
        max_tokens: training budget in tokens (steps = ceil(max_tokens / (batch_size x seq_len))).
            Default 30,720 = 60 steps of 8 x 64: a few seconds on one CPU thread.
        vocab_size: the proxy's BPE size. 512 keeps the embedding small for a d=64 model.
        tokenizer: ``"bpe"`` (fit ``vocab_size`` on the proxy's own mixture) or a tokenizer
            folder (any :class:`tasks.tokenize.Params` choice) shared by every proxy and main run,
            so a mixture's score does not also measure the tokenizer fitted to it.
        eval_half: the held-out half scored (:func:`tasks.compare.heldout_half`): ``"dev"``
            (default) keeps the ``test`` half unseen by any method tuned on proxies; None: all.
        d_model, n_layers, n_heads, seq_len, batch_size, lr, warmup_steps: the proxy model and
            optimiser (a Llama; defaults: 64 x 2 layers, about 0.1M parameters plus embeddings).
        seed: seeds sampling order, model init and batch order.
        eval_docs_per_domain, eval_bytes_per_domain: held-out documents / bytes scored per
            domain (the hash-ordered subset of the evaluate stage, the same for every proxy).
        benchmark_items: with benchmark items given, gold answers scored per benchmark (their
            ``eval_half``; hash-ordered subset), for a ``benchmark:NAME`` target.
        benchmarks: the benchmarks scored (empty: every one in the items given).
        keep_model: keep the trained model in the entry (a DoReMi reference model).
        num_threads: torch threads. 1: proxies run in parallel, one per core.
    """

    weights: dict[str, float] = field(default_factory=dict)
    split: dict[str, Any] = field(default_factory=dict)
    train_bytes: int = 300_000
    max_tokens: int = 30_720
    vocab_size: int = 512
    tokenizer: str = "bpe"
    eval_half: str | None = "dev"
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 2
    seq_len: int = 64
    batch_size: int = 8
    lr: float = 3e-3
    warmup_steps: int = 5
    seed: int = 0
    eval_docs_per_domain: int = 20
    eval_bytes_per_domain: int = 20_000
    benchmark_items: int = 50
    benchmarks: tuple[str, ...] = ()
    keep_model: bool = False
    num_threads: int = 1

    def __post_init__(self) -> None:
        if not self.weights:
            raise WinnowError("proxy: weights are empty; give every domain a weight")
        for d, w in self.weights.items():
            if not (isinstance(w, (int, float)) and math.isfinite(w) and w >= 0):
                raise WinnowError(f"proxy: weight of domain '{d}' must be a finite number >= 0, got {w!r}")
        total = float(sum(self.weights.values()))
        if abs(total - 1.0) > 1e-6:
            raise WinnowError(f"proxy: weights sum to {total:.6g}, not 1 ({self.weights})")
        per_step = self.batch_size * self.seq_len
        if self.max_tokens < per_step:
            raise WinnowError(f"proxy: max_tokens = {self.max_tokens} is less than one step "
                              f"(batch_size x seq_len = {self.batch_size} x {self.seq_len} = {per_step} tokens)")
        if self.train_bytes < 1:
            raise WinnowError(f"proxy: train_bytes must be >= 1, got {self.train_bytes}")
        if self.eval_half not in (None, *compare.HALVES):
            raise WinnowError(f"proxy: eval_half must be 'dev', 'test' or None, got {self.eval_half!r}")
        unknown = sorted(set(self.split) - set(mixture.SPLIT_FIELDS))
        if unknown:
            raise WinnowError(f"proxy: split has unknown key(s) {', '.join(unknown)}; known: {', '.join(mixture.SPLIT_FIELDS)}")

    @property
    def steps(self) -> int:
        """Optimizer steps the budget gives."""
        return math.ceil(self.max_tokens / (self.batch_size * self.seq_len))


def identity(params: Params) -> dict[str, str]:
    """A shared tokenizer folder's content, for the fingerprint (the tokenize stage's rule)."""
    return tokenize.identity(tokenize.Params(tokenizer=params.tokenizer, vocab_size=params.vocab_size))


def preload() -> None:
    """Import torch and resolve the ``transformers`` names a proxy uses, once, in this thread.

    ``transformers`` resolves its names lazily, and two threads resolving them at once can fail
    (measured: ``ImportError: cannot import name 'PreTrainedTokenizerFast'`` when proxies start
    together on the thread runner), so the flow calls this before it submits a batch.
    """
    import torch  # noqa: F401
    import transformers

    for name in ("PreTrainedTokenizerFast", "AutoTokenizer", "AutoConfig", "AutoModelForCausalLM", "LlamaConfig",
                 "GPT2Config", "LlamaForCausalLM", "GPT2LMHeadModel"):
        getattr(transformers, name)


def check_domains(weights: dict[str, float], domains: list[str], where: str = "proxy") -> None:
    """The weights must name exactly the corpus domains: a missing one would be silently zero."""
    absent = sorted(set(weights) - set(domains))
    if absent:
        raise WinnowError(f"{where}: domain(s) {', '.join(absent)} not in the data; data domains: {', '.join(domains)}")
    missing = sorted(set(domains) - set(weights))
    if missing:
        raise WinnowError(f"{where}: no weight for domain(s) {', '.join(missing)}; weights must cover every domain")


def run(corpus: pa.Table, params: Params, out_dir: Path | None = None, benchmarks: pa.Table | None = None) -> StageResult:
    """Train and score one proxy on ``corpus`` (the curated corpus: id, text, domain[, label]).

    Returns table ``data`` (:data:`RESULT_SCHEMA`: one row per domain, its weight and held-out
    bits/byte), with ``benchmarks`` (benchmark items) also table ``benchmarks``
    (:data:`BENCHMARK_RESULT_SCHEMA`), and metrics (mean and worst bits/byte, parameters, tokens,
    seconds).

    Raises:
        WinnowError: weights that do not cover the corpus domains, or a training error (too
            little text for one sequence).
    """
    if out_dir is None:
        raise WinnowError("proxy: out_dir is required (scratch for the proxy's tokens and model)")
    out_dir = Path(out_dir)
    domains = sorted(set(corpus["domain"].to_pylist()))
    check_domains(params.weights, domains)
    mix = mixture.run(corpus, mixture.Params(method="manual", manual_weights=dict(params.weights),
                                             train_bytes=params.train_bytes, seed=params.seed, **params.split))
    tokens_dir, model_dir = out_dir / "tokens", out_dir / MODEL_DIR
    tokenize.run(mix.tables["data"], tokenize.Params(tokenizer=params.tokenizer, vocab_size=params.vocab_size), tokens_dir)
    trained = train.run(tokens_dir, _train_params(params), model_dir)
    heldout = compare.heldout_half(mix.tables["heldout"], params.eval_half)
    scored = evaluate.run(model_dir, heldout, BENCHMARK_SCHEMA.empty_table(), evaluate.Params(
        max_docs_per_domain=params.eval_docs_per_domain, max_bytes_per_domain=params.eval_bytes_per_domain,
        num_threads=params.num_threads, device="cpu"))
    tables = {"benchmarks": _benchmarks(model_dir, benchmarks, params)} if benchmarks is not None else {}
    shutil.rmtree(tokens_dir, ignore_errors=True)
    if not params.keep_model:
        shutil.rmtree(model_dir, ignore_errors=True)
    per_domain = scored.tables["data"]
    bpb = dict(zip(per_domain["domain"].to_pylist(), per_domain["bits_per_byte"].to_pylist()))
    nbytes = dict(zip(per_domain["domain"].to_pylist(), per_domain["bytes"].to_pylist()))
    table = pa.table({"domain": domains, "weight": [float(params.weights[d]) for d in domains],
                      "bits_per_byte": [float(bpb[d]) for d in domains], "heldout_bytes": [int(nbytes[d]) for d in domains]},
                     schema=RESULT_SCHEMA)
    values = np.array(table["bits_per_byte"].to_pylist())
    metrics = {"bits_per_byte_mean": float(values.mean()), "bits_per_byte_worst": float(values.max()),
               "worst_domain": domains[int(values.argmax())], "params": trained.metrics["params"],
               "tokens_seen": trained.metrics["tokens_seen"], "flops_per_token": trained.metrics["flops_per_token"],
               "train_s": trained.metrics["train_s"], "weights": {d: round(params.weights[d], 6) for d in domains}}
    return StageResult(tables={"data": table, **tables}, metrics=metrics)


def _benchmarks(model_dir: Path, benchmarks: pa.Table, params: Params) -> pa.Table:
    """Bits/byte of the gold answers per benchmark, on the ``eval_half`` of the items."""
    if params.benchmarks:
        absent = sorted(set(params.benchmarks) - set(benchmarks["benchmark"].to_pylist()))
        if absent:
            raise WinnowError(f"proxy: benchmark(s) {', '.join(absent)} not in the benchmark items")
        benchmarks = benchmarks.filter(pa.compute.is_in(benchmarks["benchmark"], pa.array(list(params.benchmarks))))
    items = compare.benchmark_bits(model_dir, compare.heldout_half(benchmarks, params.eval_half, "benchmark"),
                                   params.benchmark_items, params.num_threads)
    names = sorted(set(items["domain"].to_pylist()))
    rows = []
    for b in names:
        sel = [r for r in items.to_pylist() if r["domain"] == b]
        rows.append({"benchmark": b, "bits_per_byte": sum(r["bits"] for r in sel) / sum(r["bytes"] for r in sel),
                     "items": len(sel)})
    return pa.Table.from_pylist(rows, schema=BENCHMARK_RESULT_SCHEMA)


def _train_params(params: Params) -> train.Params:
    return train.Params(d_model=params.d_model, n_layers=params.n_layers, n_heads=params.n_heads, seq_len=params.seq_len,
                        batch_size=params.batch_size, max_steps=None, max_tokens=params.max_tokens, lr=params.lr,
                        warmup_steps=params.warmup_steps, seed=params.seed, num_threads=params.num_threads,
                        device="cpu", log_every=max(1, params.steps // 10) if params.steps >= 10 else 1,
                        checkpoint_every=0)


def score(table: pa.Table, target: str) -> float:
    """A proxy result's value under ``target``: ``mean``, ``worst`` or ``domain:NAME`` bits/byte."""
    bpb = dict(zip(table["domain"].to_pylist(), table["bits_per_byte"].to_pylist()))
    return target_value(bpb, target)


def target_value(bpb: dict[str, float], target: str) -> float:
    """Aggregate per-domain bits/byte by ``target`` (see :func:`score`).

    Keys starting with :data:`BENCHMARK_PREFIX` are benchmarks' gold-answer bits/byte: only the
    target ``benchmark:NAME`` reads them; ``mean`` and ``worst`` are over domains.
    """
    domains = [v for k, v in bpb.items() if not k.startswith(BENCHMARK_PREFIX)]
    if target == "mean":
        return float(np.mean(domains))
    if target == "worst":
        return float(max(domains))
    if target.startswith(BENCHMARK_PREFIX):
        if target not in bpb:
            known = sorted(k.removeprefix(BENCHMARK_PREFIX) for k in bpb if k.startswith(BENCHMARK_PREFIX))
            raise WinnowError(f"target {target!r}: no such benchmark among the proxies' ({', '.join(known) or 'none given'})")
        return float(bpb[target])
    if target.startswith("domain:"):
        name = target.removeprefix("domain:")
        if name not in bpb:
            raise WinnowError(f"target {target!r}: domain '{name}' not in the data ({', '.join(sorted(bpb))})")
        return float(bpb[name])
    raise WinnowError(f"target {target!r}: use 'mean', 'worst', 'domain:NAME' or 'benchmark:NAME'")
