"""DoReMi: domain weights by Group DRO against a reference model (Xie et al. 2023, sangmichaelxie/doremi).

The flow first trains a *reference* proxy on the baseline mixture (``mixture.doremi_reference``,
an ordinary :mod:`tasks.proxy` entry that keeps its model). This stage then trains a fresh proxy
of the same shape, with the reference's tokenizer, on batches holding one sequence per domain, and
after each step updates the domain weights α by the per-domain *excess loss*
``λ_i = Σ_{tokens of domain i} max(ℓ_proxy − ℓ_ref, 0) / (tokens of domain i)``:

    α' = α · exp(η λ);   α = (1 − c) · α' / Σα' + c / k

(η = ``doremi_eta``, c = ``doremi_smoothing``, the paper's Algorithm 1). The proxy's loss is
Σ_i α_i · (mean loss of domain i). The result is the average of α over all steps, as the paper
returns. Everything is seeded, so one fingerprint names one set of weights on CPU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from tasks import lm, mixture, pretrained, proxy, tokenize, train
from tasks.common import StageResult, track
from winnow.errors import WinnowError

STAGE = "doremi"
WEIGHTS_SCHEMA = pa.schema([("domain", pa.string()), ("weight", pa.float64()), ("final_weight", pa.float64()),
                            ("mean_excess_loss", pa.float64())])


@dataclass(frozen=True)
class Params:
    """Parameters of the DoReMi proxy run.

    Attributes:
        split: the mixture's held-out settings (:func:`tasks.mixture.split_settings`): the proxy
            trains only on the training pool.
        train_bytes: text sampled uniformly over domains for the proxy to read.
        max_tokens: the proxy's budget in tokens (steps = ceil(max_tokens / (domains x seq_len))).
        seq_len: tokens per sequence (one sequence per domain per step).
        eta, smoothing: the step size on the domain weights and the mix with uniform (1, 1e-3).
        min_weight: floor on each returned weight (the mean α is mixed with uniform to reach it).
        lr, warmup_steps, seed, num_threads: the proxy's optimiser, seed and torch threads.
    """

    split: dict[str, Any] = field(default_factory=dict)
    train_bytes: int = 300_000
    max_tokens: int = 30_720
    seq_len: int = 64
    eta: float = 1.0
    smoothing: float = 1e-3
    min_weight: float = 0.0
    lr: float = 3e-3
    warmup_steps: int = 5
    seed: int = 0
    num_threads: int = 1


def run(corpus: pa.Table, reference: Path, params: Params = Params()) -> StageResult:
    """Train the Group-DRO proxy against the reference proxy in ``reference`` and return α.

    Args:
        corpus: the curated corpus (id, text, domain[, label]).
        reference: the files folder of a proxy entry made with ``keep_model`` (``model/`` inside).
        params: see :class:`Params`.

    Returns:
        table ``data`` (:data:`WEIGHTS_SCHEMA`), ``history`` (α per logged step) and metrics.
    """
    import torch
    from transformers import AutoConfig

    model_dir = Path(reference) / proxy.MODEL_DIR
    if not (model_dir / "config.json").is_file():
        raise WinnowError(f"doremi: {reference} holds no reference model (model/config.json); run the reference proxy with keep_model")
    stats, _, _ = mixture.prepare(corpus, mixture.Params(**params.split))
    k = len(stats.domains)
    blocks = _domain_blocks(corpus, params, tokenize.load_tokenizer(str(model_dir)), stats.domains)
    steps = math.ceil(params.max_tokens / (k * params.seq_len))
    threads = torch.get_num_threads()
    torch.set_num_threads(params.num_threads)
    try:
        ref = pretrained.load_model(model_dir).eval()
        model = lm.build(AutoConfig.from_pretrained(model_dir, local_files_only=True), params.seed, "sdpa")
        alphas, excess = _group_dro(model, ref, blocks, steps, params)
    finally:
        torch.set_num_threads(threads)
    mean_alpha = alphas.mean(axis=0)
    if params.min_weight > 0:
        mean_alpha = params.min_weight + (1 - params.min_weight * k) * mean_alpha
    mean_alpha = mean_alpha / mean_alpha.sum()
    table = pa.table({"domain": stats.domains, "weight": mean_alpha, "final_weight": alphas[-1],
                      "mean_excess_loss": excess.mean(axis=0)}, schema=WEIGHTS_SCHEMA)
    logged = range(0, steps, max(1, steps // 20))
    history = pa.table({"step": list(logged), **{d: [float(alphas[s, j]) for s in logged] for j, d in enumerate(stats.domains)}})
    metrics = {"method": "doremi", "steps": steps, "tokens": steps * k * params.seq_len,
               "weights": {d: round(float(w), 6) for d, w in zip(stats.domains, mean_alpha)}}
    return StageResult(tables={"data": table, "history": history}, metrics=metrics)


def _domain_blocks(corpus: pa.Table, params: Params, tokenizer: Any, domains: list[str]) -> list[np.ndarray]:
    """Per domain, ``[n, seq_len]`` token blocks of a uniform sample of its training pool."""
    uniform = {d: 1.0 / len(domains) for d in domains}
    mix = mixture.run(corpus, mixture.Params(method="manual", manual_weights=uniform, train_bytes=params.train_bytes,
                                             seed=params.seed, **params.split))
    data = mix.tables["data"]
    out = []
    for d in domains:
        texts = [t for t, dd in zip(data["text"].to_pylist(), data["domain"].to_pylist()) if dd == d]
        stream, _ = tokenize.encode(tokenizer, texts)
        n = len(stream) // params.seq_len
        if n == 0:
            raise WinnowError(f"doremi: domain '{d}' gives fewer than seq_len = {params.seq_len} tokens; "
                              "raise mixture.proxy_train_bytes")
        out.append(np.asarray(stream[: n * params.seq_len], dtype=np.int64).reshape(n, params.seq_len))
    return out


def _group_dro(model: Any, ref: Any, blocks: list[np.ndarray], steps: int, params: Params) -> tuple[np.ndarray, np.ndarray]:
    """The DoReMi loop; returns α after every step and the excess losses, both ``[steps, k]``."""
    import torch
    import torch.nn.functional as F

    k = len(blocks)
    tp = train.Params(lr=params.lr, warmup_steps=params.warmup_steps, max_steps=steps)
    optimizer = train.configure_optimizer(model, tp, train.resolve_settings(tp, cuda_available=False))
    alpha = np.full(k, 1.0 / k)
    alphas, excesses = np.zeros((steps, k)), np.zeros((steps, k))
    model.train()
    for step in track(range(steps), desc="doremi steps"):
        rng = np.random.default_rng([params.seed, step])
        x = torch.from_numpy(np.stack([b[rng.integers(len(b))] for b in blocks]))
        with torch.no_grad():
            ref_loss = _token_losses(ref, x, F)
        losses = _token_losses(model, x, F)  # [k, seq_len - 1], row i is domain i
        excess = torch.clamp(losses.detach() - ref_loss, min=0).mean(dim=1).double().numpy()
        alpha = alpha * np.exp(params.eta * excess)
        alpha = (1 - params.smoothing) * alpha / alpha.sum() + params.smoothing / k
        loss = (torch.from_numpy(alpha).float() * losses.mean(dim=1)).sum()
        for group in optimizer.param_groups:
            group["lr"] = train.lr_at(step, steps, tp)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        alphas[step], excesses[step] = alpha, excess
    return alphas, excesses


def _token_losses(model: Any, x: "Any", F: Any) -> "Any":
    logits = model(input_ids=x, use_cache=False).logits[:, :-1].float()
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)), x[:, 1:].reshape(-1), reduction="none").view(x.size(0), -1)
