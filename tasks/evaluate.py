"""Evaluate: per-domain held-out bits/byte, benchmark accuracy and calibration of a trained model.

Everything is a log-likelihood under the model, computed by one function (:func:`score_requests`):

* **Held-out bits/byte** per domain = total NLL (nats) of the domain's documents / (ln 2 × their
  UTF-8 bytes). Each document is scored as ``<|endoftext|>`` + its tokens (as in training), so every
  byte counts, including the first token's. A document longer than the model's context is scored in
  windows (:func:`windows`): each window scores ``stride`` new tokens and sees the tokens before them
  as context. Bits/byte is tokenizer-independent, so models with different vocabularies compare.
* **Multiple-choice benchmarks** (``answer`` >= 0): each choice's log-likelihood given the question
  (lm-eval's recipe: the choice follows the question after ``choice_separator``). Accuracy takes the
  argmax; ``accuracy_norm`` divides each log-likelihood by the choice's UTF-8 bytes first (removes the
  bias towards short answers). Confidence = softmax over the choices' log-likelihoods; from it,
  ECE (``ece_bins`` equal-width bins over the top probability, Guo et al. 2017) and the multi-class
  Brier score (sum over choices of (p - onehot)², averaged; 0 is perfect, 2 the worst).
* **Other benchmark items** (``answer`` = -1, e.g. HumanEval: question = prompt, target = canonical
  solution): bits/byte of the target given the question.
* **Contamination subsets**: given the contamination stage's per-example report, every benchmark
  metric is also reported on the ``clean`` and ``contaminated`` subsets (``all`` is both), so the
  gap (all − clean) shows how much contamination inflates the score.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import xxhash

from tasks.common import BENCHMARK_SCHEMA, StageResult, require_columns, track
from winnow.errors import WinnowError

# CPU threads that spin while waiting (OpenMP's default) collapse throughput when the cores are
# shared: measured 10x slower with 2 threads on a busy 2-core box, while passive waiting costs a few
# percent at most. Takes effect only if torch is not imported yet; the user's setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

STAGE = "evaluate"
SUBSETS = ("all", "clean", "contaminated")

DOMAINS_SCHEMA = pa.schema(
    [
        ("domain", pa.string()),
        ("docs", pa.int64()),
        ("bytes", pa.int64()),
        ("tokens", pa.int64()),
        ("nats_per_token", pa.float64()),
        ("bits_per_byte", pa.float64()),
    ]
)
BENCHMARKS_SCHEMA = pa.schema(
    [
        ("benchmark", pa.string()),
        ("subset", pa.string()),  # "all", "clean" or "contaminated"
        ("n", pa.int64()),  # examples in the subset (multiple-choice and others)
        ("accuracy", pa.float64()),  # null where the subset has no multiple-choice item
        ("accuracy_norm", pa.float64()),
        ("ece", pa.float64()),
        ("brier", pa.float64()),
        ("bits_per_byte", pa.float64()),  # of targets of non-multiple-choice items; null if none
    ]
)
EXAMPLES_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("benchmark", pa.string()),
        ("kind", pa.string()),  # "multiple_choice" or "target"
        ("answer", pa.int64()),
        ("pred", pa.int64()),  # argmax of raw log-likelihood (-1 for target items)
        ("pred_norm", pa.int64()),  # argmax of per-byte log-likelihood
        ("correct", pa.bool_()),
        ("correct_norm", pa.bool_()),
        ("confidence", pa.float64()),  # softmax probability of pred
        ("prob_answer", pa.float64()),  # softmax probability of the right choice
        ("logliks", pa.list_(pa.float64())),  # per choice, nats
        ("target_bytes", pa.int64()),
        ("bits_per_byte", pa.float64()),  # target items only
        ("contaminated", pa.bool_()),  # null when no contamination report was given
    ]
)


@dataclass(frozen=True)
class Params:
    """Parameters of the evaluate stage.

    Attributes:
        max_docs_per_domain: held-out documents (rows) scored per domain, or None for all. The
            subset is fixed by a hash of the ids (the same documents for every model). Default 200.
        max_bytes_per_domain: stop adding a domain's documents (in the same hash order) once this
            many UTF-8 bytes are taken; at least one document is always scored. None for no cap.
            Default 50 kB (~15k tokens) bounds the cost per domain (a few CPU-seconds for the
            default model; evaluation of the sample's 6 domains and 4 benchmarks took ~1-2 min
            on a busy 2-core box) whatever the document sizes; raise it for tighter estimates.
        max_examples_per_benchmark: benchmark examples scored per benchmark (hash-ordered subset),
            or None for all. Default 100: accuracy's standard error is then at most 5 points.
        context_len: window length in tokens; None uses the model's context
            (``max_position_embeddings``). Longer than the model's context is an error.
        stride: new tokens scored per window of a long text; the remaining ``context_len -
            stride`` tokens are context already scored. None = half the context (each token sees at
            least half a window of context, at twice the cost of disjoint windows); ``context_len
            - 1`` gives disjoint windows (lm-eval's rolling log-likelihood, cheapest).
        mc_template: how a multiple-choice question is shown before its choices, with a
            ``{question}`` placeholder; None uses the question as it is. Default
            ``"Question: {question}\nAnswer:"`` is lm-eval's cloze prompt (ARC, MMLU-cloze), which
            makes the choice read as an answer rather than as more question text.
        choice_separator: put between the (templated) question and a choice when the question
            does not end (and the choice does not start) with whitespace. " " is lm-eval's
            target delimiter.
        target_separator: put between question and target of a non-multiple-choice item, on the
            same rule. "\n" suits "line -> next line" items; HumanEval prompts end in a newline
            already, so nothing is added there. The separator is context, not scored.
        ece_bins: equal-width confidence bins for ECE (15, as in Guo et al. 2017).
        batch_size: sequences per forward pass (padded to the longest in the batch; requests are
            sorted by length, so little padding). 16 amortises per-call overhead on CPU.
        device: "auto" (cuda if available), "cpu" or "cuda".
        dtype: "auto" (bfloat16 autocast on CUDA, float32 on CPU), "float32" or "bfloat16".
            Log-probabilities are always computed in float32.
        num_threads: CPU threads for torch; None = the CPUs this process may use.
        sample_salt: mixed into the id hash that picks the capped subsets.
    """

    max_docs_per_domain: int | None = 200
    max_bytes_per_domain: int | None = 50_000
    max_examples_per_benchmark: int | None = 100
    context_len: int | None = None
    stride: int | None = None
    mc_template: str | None = "Question: {question}\nAnswer:"
    choice_separator: str = " "
    target_separator: str = "\n"
    ece_bins: int = 15
    batch_size: int = 16
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    num_threads: int | None = None
    sample_salt: str = "winnow-eval"

    def __post_init__(self) -> None:
        for name in ("max_docs_per_domain", "max_bytes_per_domain", "max_examples_per_benchmark"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ValueError(f"{name} must be >= 1 or none, got {v}")
        if self.context_len is not None and self.context_len < 2:
            raise ValueError(f"context_len must be >= 2, got {self.context_len}")
        if self.stride is not None and self.stride < 1:
            raise ValueError(f"stride must be >= 1, got {self.stride}")
        if self.mc_template is not None and "{question}" not in self.mc_template:
            raise ValueError(f"mc_template must contain {{question}}, got {self.mc_template!r}")
        if self.ece_bins < 1 or self.batch_size < 1:
            raise ValueError("ece_bins and batch_size must be >= 1")


# --- metric math (pure numpy, checked against hand-made numbers in the tests) -------------------


def softmax(logliks: Sequence[float]) -> np.ndarray:
    """Probabilities from log-likelihoods (numerically stable)."""
    z = np.asarray(logliks, dtype=np.float64)
    e = np.exp(z - z.max())
    return e / e.sum()


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int = 15) -> float:
    """ECE = Σ_m (|B_m|/n)·|acc(B_m) − conf(B_m)| over equal-width bins (lo, hi] of confidence."""
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    if len(confidence) == 0:
        return float("nan")
    idx = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    ece = 0.0
    for m in range(bins):
        in_bin = idx == m
        if in_bin.any():
            ece += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return float(ece)


def brier_score(probs: Sequence[np.ndarray], answers: Sequence[int]) -> float:
    """Mean over examples of Σ_k (p_k − 1[k = answer])²; choice counts may differ per example."""
    if len(answers) == 0:
        return float("nan")
    total = 0.0
    for p, a in zip(probs, answers):
        onehot = np.zeros(len(p))
        onehot[a] = 1.0
        total += float(((np.asarray(p) - onehot) ** 2).sum())
    return total / len(answers)


def choice_scores(logliks: Sequence[float], choice_bytes: Sequence[int], answer: int) -> dict[str, Any]:
    """One multiple-choice item: predictions (raw and per-byte), confidence, correctness."""
    ll = np.asarray(logliks, dtype=np.float64)
    p = softmax(ll)
    pred = int(np.argmax(ll))
    pred_norm = int(np.argmax(ll / np.maximum(np.asarray(choice_bytes, dtype=np.float64), 1.0)))
    return {
        "pred": pred,
        "pred_norm": pred_norm,
        "correct": pred == answer,
        "correct_norm": pred_norm == answer,
        "confidence": float(p[pred]),
        "prob_answer": float(p[answer]),
        "probs": p,
    }


def bits_per_byte(nll_nats: float, n_bytes: int) -> float:
    """Total negative log-likelihood in nats over ``n_bytes`` UTF-8 bytes, as bits per byte."""
    return nll_nats / (math.log(2) * n_bytes) if n_bytes else float("nan")


# --- scoring ------------------------------------------------------------------------------------


def windows(tokens: Sequence[int], first: int, context_len: int, stride: int) -> list[tuple[list[int], int]]:
    """Split the scoring of ``tokens[first:]`` into requests that fit the context.

    Returns ``(window_tokens, first_scored_index_in_window)`` pairs; each window scores at most
    ``stride`` (clamped to ``context_len - 1``) new tokens, conditioned on everything before them
    inside the window. ``first`` must be >= 1 (token 0 is context only, e.g. EOS).
    """
    if first < 1:
        raise ValueError("first must be >= 1: the first token has nothing to be predicted from")
    stride = max(1, min(stride, context_len - 1))
    out = []
    a, n = first, len(tokens)
    while a < n:
        e = min(n, a + stride)
        b = max(0, e - context_len)
        out.append((list(tokens[b:e]), a - b))
        a = e
    return out


def score_requests(
    model: Any,
    requests: Sequence[tuple[list[int], int]],
    batch_size: int,
    device: str,
    dtype: str,
    real_vocab: int | None = None,
) -> np.ndarray:
    """Negative log-likelihood (nats) of ``tokens[first:]`` for each ``(tokens, first)`` request.

    Requests run longest-first in padded batches. Padding goes on the right and is never scored;
    under causal attention it cannot change the earlier positions, so no attention mask is needed
    (which keeps SDPA on its fast causal path). Logits of padded vocabulary rows (ids >=
    ``real_vocab``) are masked out so they cannot take probability mass.
    """
    import torch

    out = np.zeros(len(requests), dtype=np.float64)
    order = sorted(range(len(requests)), key=lambda i: -len(requests[i][0]))
    use_bf16 = dtype == "bfloat16"
    with torch.inference_mode():
        for start in track(range(0, len(order), batch_size), desc="scoring batches"):
            idx = order[start : start + batch_size]
            width = max(len(requests[i][0]) for i in idx)
            ids = torch.zeros((len(idx), width), dtype=torch.long)
            score = torch.zeros((len(idx), width - 1), dtype=torch.float32)
            for row, i in enumerate(idx):
                toks, first = requests[i]
                ids[row, : len(toks)] = torch.tensor(toks, dtype=torch.long)
                score[row, first - 1 : len(toks) - 1] = 1.0  # logits at t predict token t+1
            ids = ids.to(device)
            with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=use_bf16):
                logits = model(input_ids=ids, use_cache=False).logits
            logits = logits[:, :-1].float()
            if real_vocab is not None and real_vocab < logits.shape[-1]:
                logits[..., real_vocab:] = float("-inf")
            nll = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="none"
            ).view(len(idx), width - 1)
            totals = (nll * score.to(nll.device)).sum(dim=1).double().cpu().numpy()
            out[idx] = totals
    return out


def run(
    model_dir: Path,
    heldout: pa.Table,
    benchmarks: pa.Table,
    params: Params = Params(),
    contamination: pa.Table | None = None,
) -> StageResult:
    """Score a saved model on held-out text and benchmarks.

    Args:
        model_dir: a folder written by the train stage (``save_pretrained`` model + tokenizer).
        heldout: the mixture stage's ``heldout`` table: ``id``, ``text``, ``domain`` (and ``part``
            when documents were chunked). At least one row.
        benchmarks: rows in :data:`~tasks.common.BENCHMARK_SCHEMA`; may be empty. A
            multiple-choice item needs >= 2 non-empty choices and 0 <= answer < len(choices); an item
            with answer -1 needs a non-empty target.
        params: see :class:`Params`.
        contamination: optional per-example report with ``id``, ``contaminated`` (bool) and
            optionally ``benchmark``; it must cover every scored benchmark example.

    Returns:
        tables ``data`` (per domain, :data:`DOMAINS_SCHEMA`), ``benchmarks``
        (:data:`BENCHMARKS_SCHEMA`) and ``examples`` (:data:`EXAMPLES_SCHEMA`), and a flat metrics
        dict: ``bits_per_byte_mean`` (macro over domains), ``bits_per_byte/<domain>``,
        ``<metric>/<benchmark>`` and, with a contamination report, ``<metric>/<benchmark>/clean``,
        ``.../contaminated`` and ``accuracy_gap/<benchmark>`` (all − clean).

    Raises:
        WinnowError: missing model folder, bad table columns or values, or a contamination report
            that misses a scored example.
    """
    _check_heldout(heldout)
    _check_benchmarks(benchmarks)
    contaminated_of = _contamination_lookup(contamination) if contamination is not None else None

    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise WinnowError(f"evaluate: {model_dir} holds no saved model (config.json missing); run the train stage first")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = _resolve_device(params.device, torch.cuda.is_available())
    dtype = ("bfloat16" if device == "cuda" else "float32") if params.dtype == "auto" else params.dtype
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    threads_before = torch.get_num_threads()
    torch.set_num_threads(params.num_threads or cpus)
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True).to(device).eval()
        model_ctx = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions")
        ctx = params.context_len or model_ctx
        if ctx > model_ctx:
            raise WinnowError(f"evaluate.context_len={ctx} exceeds the model's context of {model_ctx} tokens")
        stride = params.stride or max(1, ctx // 2)
        eos = tokenizer.eos_token_id
        real_vocab = len(tokenizer)

        def score(items: list[tuple[list[int], int]]) -> np.ndarray:
            """NLL per (tokens, first) item, splitting long ones into windows and summing back."""
            reqs, owner = [], []
            for k, (toks, first) in enumerate(items):
                for w in windows(toks, first, ctx, stride):
                    reqs.append(w)
                    owner.append(k)
            nll = score_requests(model, reqs, params.batch_size, device, dtype, real_vocab)
            return np.bincount(np.array(owner, dtype=np.int64), weights=nll, minlength=len(items))

        domain_table, domain_metrics = _evaluate_heldout(heldout, params, tokenizer, eos, score)
        bench_table, examples, bench_metrics = _evaluate_benchmarks(
            benchmarks, params, tokenizer, eos, score, contaminated_of
        )
    finally:
        torch.set_num_threads(threads_before)

    metrics = {**domain_metrics, **bench_metrics, "context_len": ctx, "stride": stride, "device": device, "dtype": dtype}
    return StageResult(tables={"data": domain_table, "benchmarks": bench_table, "examples": examples}, metrics=metrics)


def _evaluate_heldout(heldout: pa.Table, params: Params, tokenizer: Any, eos: int, score: Any) -> tuple[pa.Table, dict]:
    keys = heldout["id"].to_pylist()
    if "part" in heldout.column_names:
        keys = [f"{i}#{p}" for i, p in zip(keys, heldout["part"].to_pylist())]
    domains = heldout["domain"].to_pylist()
    texts = heldout["text"].to_pylist()
    sizes = [len(t.encode("utf-8")) for t in texts]
    chosen = _capped(keys, domains, params.max_docs_per_domain, params.sample_salt, sizes, params.max_bytes_per_domain)
    enc = tokenizer([texts[i] for i in chosen], add_special_tokens=False)["input_ids"]
    nll = score([([eos, *ids], 1) for ids in enc])
    rows, metrics = [], {}
    chosen_domains = np.array([domains[i] for i in chosen], dtype=object)
    n_bytes = np.array([len(texts[i].encode("utf-8")) for i in chosen], dtype=np.int64)
    n_tokens = np.array([len(ids) for ids in enc], dtype=np.int64)
    for d in sorted(set(domains)):
        m = chosen_domains == d
        total_nll, b, t = float(nll[m].sum()), int(n_bytes[m].sum()), int(n_tokens[m].sum())
        bpb = bits_per_byte(total_nll, b)
        rows.append(
            {"domain": d, "docs": int(m.sum()), "bytes": b, "tokens": t, "nats_per_token": total_nll / t, "bits_per_byte": bpb}
        )
        metrics[f"bits_per_byte/{d}"] = round(bpb, 5)
    metrics["bits_per_byte_mean"] = round(float(np.mean([r["bits_per_byte"] for r in rows])), 5)
    metrics["bits_per_byte_worst"] = round(float(np.max([r["bits_per_byte"] for r in rows])), 5)
    return pa.Table.from_pylist(rows, schema=DOMAINS_SCHEMA), metrics


def _evaluate_benchmarks(
    benchmarks: pa.Table,
    params: Params,
    tokenizer: Any,
    eos: int,
    score: Callable[[list[tuple[list[int], int]]], np.ndarray],
    contaminated_of: Callable[[str, str], bool | None] | None,
) -> tuple[pa.Table, pa.Table, dict]:
    if benchmarks.num_rows == 0:
        return BENCHMARKS_SCHEMA.empty_table(), EXAMPLES_SCHEMA.empty_table(), {}
    rows = benchmarks.select(list(BENCHMARK_SCHEMA.names)).to_pylist()
    chosen = _capped([r["id"] for r in rows], [r["benchmark"] for r in rows], params.max_examples_per_benchmark, params.sample_salt)
    rows = [rows[i] for i in chosen]

    # One scoring pass for every (question, continuation) pair of every example.
    items, spans = [], []
    for r in rows:
        question = r["question"] or ""
        if r["answer"] >= 0:
            # A choice follows lm-eval's joining rules (its leading space is part of what is scored).
            if params.mc_template is not None:
                question = params.mc_template.format(question=question)
            pairs = [_split_context(question, c, params.choice_separator) for c in r["choices"]]
        else:
            # A target is scored exactly as given: its bytes are the bits/byte denominator.
            pairs = [(question + _separator(question, r["target"], params.target_separator), r["target"])]
        spans.append((len(items), len(pairs)))
        ctx_cache: dict[str, list[int]] = {}
        for ctx, cont in pairs:
            if ctx not in ctx_cache:
                ctx_cache[ctx] = tokenizer(ctx, add_special_tokens=False)["input_ids"] if ctx else []
            ctx_ids = ctx_cache[ctx]
            cont_ids = tokenizer(cont, add_special_tokens=False)["input_ids"]
            items.append(([eos, *ctx_ids, *cont_ids], 1 + len(ctx_ids)))
    nll = score(items)

    examples = []
    for r, (start, k) in zip(rows, spans):
        contaminated = None
        if contaminated_of is not None:
            contaminated = contaminated_of(r["benchmark"], r["id"])
            if contaminated is None:
                raise WinnowError(f"evaluate: the contamination report has no row for example id {r['id']!r} ({r['benchmark']})")
        ex = {"id": r["id"], "benchmark": r["benchmark"], "answer": r["answer"], "contaminated": contaminated}
        if r["answer"] >= 0:
            ll = [-float(v) for v in nll[start : start + k]]
            s = choice_scores(ll, [len(c.encode("utf-8")) for c in r["choices"]], r["answer"])
            ex.update(kind="multiple_choice", logliks=ll, target_bytes=None, bits_per_byte=None, probs=s.pop("probs"), **s)
        else:
            nb = len(r["target"].encode("utf-8"))
            ex.update(
                kind="target", pred=-1, pred_norm=-1, correct=None, correct_norm=None, confidence=None,
                prob_answer=None, logliks=[-float(nll[start])], target_bytes=nb,
                bits_per_byte=bits_per_byte(float(nll[start]), nb), nll=float(nll[start]), probs=None,
            )
        examples.append(ex)

    table_rows, metrics = [], {}
    subsets = SUBSETS if contaminated_of is not None else ("all",)
    for bench in sorted({e["benchmark"] for e in examples}):
        for subset in subsets:
            sel = [
                e for e in examples
                if e["benchmark"] == bench and (subset == "all" or e["contaminated"] == (subset == "contaminated"))
            ]
            row = _subset_metrics(bench, subset, sel, params.ece_bins)
            table_rows.append(row)
            suffix = "" if subset == "all" else f"/{subset}"
            for name in ("accuracy", "accuracy_norm", "ece", "brier", "bits_per_byte"):
                if row[name] is not None:
                    metrics[f"{name}/{bench}{suffix}"] = round(row[name], 5)
            metrics[f"n/{bench}{suffix}"] = row["n"]
        if contaminated_of is not None:
            acc_all, acc_clean = metrics.get(f"accuracy/{bench}"), metrics.get(f"accuracy/{bench}/clean")
            if acc_all is not None and acc_clean is not None:
                metrics[f"accuracy_gap/{bench}"] = round(acc_all - acc_clean, 5)
    example_table = pa.Table.from_pylist(
        [{k: e.get(k) for k in EXAMPLES_SCHEMA.names} for e in examples], schema=EXAMPLES_SCHEMA
    )
    return pa.Table.from_pylist(table_rows, schema=BENCHMARKS_SCHEMA), example_table, metrics


def _subset_metrics(bench: str, subset: str, sel: list[dict], ece_bins: int) -> dict[str, Any]:
    mc = [e for e in sel if e["kind"] == "multiple_choice"]
    tg = [e for e in sel if e["kind"] == "target"]
    row: dict[str, Any] = {"benchmark": bench, "subset": subset, "n": len(sel)}
    if mc:
        row["accuracy"] = float(np.mean([e["correct"] for e in mc]))
        row["accuracy_norm"] = float(np.mean([e["correct_norm"] for e in mc]))
        row["ece"] = expected_calibration_error(
            np.array([e["confidence"] for e in mc]), np.array([e["correct"] for e in mc]), ece_bins
        )
        row["brier"] = brier_score([e["probs"] for e in mc], [e["answer"] for e in mc])
    else:
        row.update(accuracy=None, accuracy_norm=None, ece=None, brier=None)
    # Micro-average: total bits over total bytes, like the held-out domains.
    row["bits_per_byte"] = bits_per_byte(sum(e["nll"] for e in tg), sum(e["target_bytes"] for e in tg)) if tg else None
    return row


def _separator(question: str, continuation: str, separator: str) -> str:
    """``separator`` unless the question ends, or the continuation starts, with whitespace."""
    return "" if (not question or question[-1:].isspace() or continuation[:1].isspace()) else separator


def _split_context(question: str, choice: str, separator: str) -> tuple[str, str]:
    """Context and continuation texts; trailing whitespace moves from context to continuation.

    As in lm-eval: a BPE merges a space with the word after it, so " Paris" must be scored as one
    continuation rather than leaving the space at the end of the context.
    """
    cont = _separator(question, choice, separator) + choice
    stripped = question.rstrip()
    if len(stripped) < len(question):
        cont = question[len(stripped) :] + cont
        question = stripped
    return question, cont


def _capped(
    keys: list[str],
    groups: list[str],
    cap: int | None,
    salt: str,
    sizes: list[int] | None = None,
    max_size: int | None = None,
) -> list[int]:
    """Indices of the rows kept per group, in table order.

    Rows are taken in order of a salted hash of their key (so the subset does not depend on the
    table's order) until ``cap`` rows or, with ``sizes``, ``max_size`` in total; a group always
    keeps its first row.
    """
    if cap is None and max_size is None:
        return list(range(len(keys)))
    s = salt.encode("utf-8") + b"\x00"
    by_group: dict[str, list[tuple[int, int]]] = {}
    for i, (k, g) in enumerate(zip(keys, groups)):
        by_group.setdefault(g, []).append((xxhash.xxh64_intdigest(s + k.encode("utf-8")), i))
    keep = []
    for members in by_group.values():
        total = 0
        for n, (_, i) in enumerate(sorted(members)):
            if cap is not None and n >= cap:
                break
            if max_size is not None and sizes is not None and n > 0 and total + sizes[i] > max_size:
                break
            keep.append(i)
            total += sizes[i] if sizes is not None else 0
    return sorted(keep)


def _resolve_device(device: str, cuda_available: bool) -> str:
    if device == "cuda" and not cuda_available:
        raise WinnowError("evaluate.device = 'cuda' but no CUDA device is available; use 'auto' or 'cpu'")
    return "cuda" if device == "cuda" or (device == "auto" and cuda_available) else "cpu"


def _first_bad(table: pa.Table, mask: pa.ChunkedArray) -> tuple[int, Any] | None:
    mask = pc.fill_null(mask, True)
    if not pc.any(mask).as_py():
        return None
    row = pc.index(mask, True).as_py()
    return row, table["id"][row].as_py() if "id" in table.column_names else None


def _check_heldout(heldout: pa.Table) -> None:
    if heldout.num_rows == 0:
        raise WinnowError("evaluate: the held-out table is empty")
    require_columns(heldout, {"id": pa.string(), "text": pa.string(), "domain": pa.string()}, "evaluate (heldout)")
    for col in ("id", "domain"):
        bad = _first_bad(heldout, pc.is_null(heldout[col]))
        if bad:
            raise WinnowError(f"evaluate (heldout): column '{col}' is null in row {bad[0]}")
    bad = _first_bad(heldout, pc.equal(pc.utf8_length(heldout["text"]), 0))
    if bad:
        raise WinnowError(f"evaluate (heldout): column 'text' is null or empty in row {bad[0]} (id {bad[1]!r})")


def _check_benchmarks(benchmarks: pa.Table) -> None:
    types = {f.name: f.type for f in BENCHMARK_SCHEMA}
    require_columns(benchmarks, types, "evaluate (benchmarks)")
    if benchmarks.num_rows == 0:
        return
    for col in ("id", "benchmark", "answer"):
        bad = _first_bad(benchmarks, pc.is_null(benchmarks[col]))
        if bad:
            raise WinnowError(f"evaluate (benchmarks): column '{col}' is null in row {bad[0]} (id {bad[1]!r})")
    counts = pc.value_counts(benchmarks["id"])
    dup = pc.filter(counts, pc.greater(counts.field("counts"), 1))
    if len(dup):
        raise WinnowError(f"evaluate (benchmarks): duplicate id {dup[0]['values'].as_py()!r}")
    for r in benchmarks.select(["id", "choices", "answer", "target"]).to_pylist():
        choices, answer = r["choices"] or [], r["answer"]
        if answer >= 0:
            if len(choices) < 2 or answer >= len(choices):
                raise WinnowError(
                    f"evaluate (benchmarks): example {r['id']!r} has answer {answer} but {len(choices)} choices "
                    "(multiple-choice items need >= 2 choices and 0 <= answer < len(choices))"
                )
            if any(not c for c in choices):
                raise WinnowError(f"evaluate (benchmarks): example {r['id']!r} has an empty choice")
        elif answer == -1:
            if not r["target"]:
                raise WinnowError(f"evaluate (benchmarks): example {r['id']!r} has answer -1 and no target to score")
        else:
            raise WinnowError(f"evaluate (benchmarks): example {r['id']!r} has answer {answer}; use -1 for non-multiple-choice")


def _contamination_lookup(contamination: pa.Table) -> Callable[[str, str], bool | None]:
    """``lookup(benchmark, id)`` -> contaminated flag, or None when the report has no such row.

    Rows are matched on (benchmark, id) when the report has a ``benchmark`` column, else on id;
    an example with several rows (one per rule, say) is contaminated if any row says so.
    """
    require_columns(contamination, {"id": pa.string(), "contaminated": pa.bool_()}, "evaluate (contamination)")
    bad = _first_bad(contamination, pc.is_null(contamination["contaminated"]))
    if bad:
        raise WinnowError(f"evaluate (contamination): column 'contaminated' is null in row {bad[0]} (id {bad[1]!r})")
    by_benchmark = "benchmark" in contamination.column_names
    flags: dict[Any, bool] = {}
    for r in contamination.select(["id", "contaminated"] + (["benchmark"] if by_benchmark else [])).to_pylist():
        key = (r["benchmark"], r["id"]) if by_benchmark else r["id"]
        flags[key] = flags.get(key, False) or r["contaminated"]
    return lambda bench, ex_id: flags.get((bench, ex_id) if by_benchmark else ex_id)
