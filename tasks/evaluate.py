"""Evaluate: per-domain held-out bits/byte, benchmark accuracy and calibration of a trained model.

Everything is a log-likelihood under the model, computed by one function (:func:`score_requests`);
the metric math lives in :mod:`tasks.eval_metrics`.

* **Held-out bits/byte** per domain = total NLL (nats) of the domain's documents / (ln 2 × their
  UTF-8 bytes). Each document is scored as prefix token + its tokens (the prefix is BOS, or EOS when
  the tokenizer has no BOS: lm-eval's ``prefix_token_id``), so every byte counts, including the
  first token's. A document longer than the model's context is scored in windows
  (:func:`windows`): each window scores ``stride`` new tokens and sees the tokens before them as
  context. Bits/byte is tokenizer-independent, so models with different vocabularies compare. The
  95% interval resamples documents.
* **Multiple-choice benchmarks** (``answer`` >= 0), scored exactly as lm-evaluation-harness 0.4's
  ``hf`` model scores a ``multiple_choice`` task: context = the templated question, continuation =
  ``choice_separator`` (lm-eval's ``target_delimiter``) + choice; trailing whitespace of the context
  moves into the continuation; context + continuation is tokenized as one string and the
  continuation's tokens are what follows the separately tokenized context
  (``lm_eval.api.model.LM._encode_pair``). Accuracy is the argmax of the log-likelihoods;
  ``accuracy_norm`` (lm-eval ``acc_norm``) divides by the choice's length in characters and
  ``accuracy_bytes`` (lm-eval ``acc_bytes``) by its UTF-8 bytes. ``tasks/lmeval.py`` runs lm-eval
  itself on the same items and compares item by item. Calibration: confidence = softmax over the
  choices' log-likelihoods; ECE (``ece_bins`` equal-width bins, Guo et al. 2017) and the
  multi-class Brier score. Temperature scaling fits one T on a hash split of each benchmark's
  items (``calibration_fit``: xxh64 of ``sample_salt`` + ``/calibration`` + id < half) and reports
  ECE before and after it on the other half only, so the fit never sees the items it is judged on.
* **Answer position**: accuracy by the position of the gold answer (table ``positions``), and with
  ``permutation_check`` the agreement of predictions when the choices are rotated by one (a second
  scoring pass; only meaningful in the ``letters`` format, where the choices are listed in the
  prompt, since a cloze choice's score never sees the other choices).
* **Other benchmark items** (``answer`` = -1, e.g. HumanEval: question = prompt, target = canonical
  solution): bits/byte of the target given the question (lm-eval's ``loglikelihood`` request).
* **Contamination subsets**: given the contamination stage's per-example report, every benchmark
  metric is also reported on the ``clean`` and ``contaminated`` subsets (``all`` is both), so the
  gap (all − clean) shows how much contamination inflates the score.
* **Intervals**: every metric has a percentile-bootstrap 95% interval (``<metric>_lo``,
  ``<metric>_hi``; ``bootstrap_iters`` resamples of the items or documents, seeded from
  ``bootstrap_seed`` and the benchmark/domain name, so reruns give identical intervals).
"""

from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import xxhash

from tasks.common import BENCHMARK_SCHEMA, StageResult, require_columns, track
from tasks.eval_metrics import (  # noqa: F401  (re-exported: the stage's public metric helpers)
    bits_per_byte,
    brier_items,
    brier_score,
    choice_scores,
    ece_bootstrap,
    expected_calibration_error,
    fit_temperature,
    in_fit_split,
    mean_with_interval,
    percentile_interval,
    ratio_with_interval,
    resamples,
    softmax,
)
from winnow.errors import WinnowError

# CPU threads that spin while waiting (OpenMP's default) collapse throughput when the cores are
# shared: measured 10x slower with 2 threads on a busy 2-core box, while passive waiting costs a few
# percent at most. Takes effect only if torch is not imported yet; the user's setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# Fixed BLAS/OpenMP thread counts, so results do not depend on machine load (see tasks/train.py).
os.environ.setdefault("MKL_DYNAMIC", "FALSE")
os.environ.setdefault("OMP_DYNAMIC", "FALSE")

STAGE = "evaluate"
SUBSETS = ("all", "clean", "contaminated")
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def _ci(name: str, kind: pa.DataType = pa.float64()) -> list[tuple[str, pa.DataType]]:
    """A metric column and its 95% interval bounds."""
    return [(name, kind), (f"{name}_lo", kind), (f"{name}_hi", kind)]


DOMAINS_SCHEMA = pa.schema(
    [
        ("domain", pa.string()),
        ("docs", pa.int64()),
        ("bytes", pa.int64()),
        ("tokens", pa.int64()),
        ("nats_per_token", pa.float64()),
        *_ci("bits_per_byte"),  # interval: documents resampled
    ]
)
#: Metrics with an interval in :data:`BENCHMARKS_SCHEMA`, in column order.
BENCHMARK_METRICS = (
    "accuracy", "accuracy_norm", "accuracy_bytes", "ece", "brier", "ece_before", "ece_after",
    "agreement", "bits_per_byte", "leak_gap", "leak_excess",
)
BENCHMARKS_SCHEMA = pa.schema(
    [
        ("benchmark", pa.string()),
        ("subset", pa.string()),  # "all", "clean" or "contaminated"
        ("n", pa.int64()),  # examples in the subset (multiple-choice and others)
        ("n_choice", pa.int64()),  # multiple-choice examples among them
        *_ci("accuracy"),  # lm-eval acc; null where the subset has no multiple-choice item
        *_ci("accuracy_norm"),  # lm-eval acc_norm: log-likelihood per character of the choice
        *_ci("accuracy_bytes"),  # lm-eval acc_bytes: log-likelihood per UTF-8 byte of the choice
        *_ci("ece"),  # all items of the subset, T = 1
        *_ci("brier"),
        ("temperature", pa.float64()),  # fitted on the calibration_fit split; null if it is too small
        ("n_calibration", pa.int64()),  # items of the subset in the other (test) split
        *_ci("ece_before"),  # on those test-split items, T = 1
        *_ci("ece_after"),  # on the same items, softmax(ll / temperature)
        *_ci("agreement"),  # same choice predicted with the choices rotated; null unless checked
        *_ci("bits_per_byte"),  # of targets of non-multiple-choice items; null if none
        # Model-side leak check (tasks/leakcheck.py): mean over items of bits/byte of copies with
        # word pairs swapped minus that of the item as written; a model that memorised the items
        # pays more for the swaps. Excess: the same gap minus that of unseen held-out text.
        *_ci("leak_gap"),
        *_ci("leak_excess"),
    ]
)
POSITIONS_SCHEMA = pa.schema(
    [
        ("benchmark", pa.string()),
        ("position", pa.int64()),  # 0-based index of the choice
        ("n_gold", pa.int64()),  # items whose right answer is at this position
        *_ci("accuracy"),  # accuracy on those items
        ("n_pred", pa.int64()),  # items where the model picked this position
        ("pred_share", pa.float64()),  # n_pred / items with more than `position` choices
    ]
)
EXAMPLES_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("benchmark", pa.string()),
        ("kind", pa.string()),  # "multiple_choice" or "target"
        ("answer", pa.int64()),
        ("pred", pa.int64()),  # argmax of raw log-likelihood (-1 for target items)
        ("pred_norm", pa.int64()),  # argmax of per-character log-likelihood
        ("pred_bytes", pa.int64()),  # argmax of per-byte log-likelihood
        ("correct", pa.bool_()),
        ("correct_norm", pa.bool_()),
        ("correct_bytes", pa.bool_()),
        ("confidence", pa.float64()),  # softmax probability of pred
        ("prob_answer", pa.float64()),  # softmax probability of the right choice
        ("calibration_fit", pa.bool_()),  # in the split temperature scaling is fitted on
        ("logliks", pa.list_(pa.float64())),  # per choice (or of the target), nats
        ("pred_rotated", pa.int64()),  # with choices rotated by one, the pick in original order
        ("target_bytes", pa.int64()),  # bytes of the scored continuation (target items)
        ("bits_per_byte", pa.float64()),  # target items only
        ("leak_gap", pa.float64()),  # bits/byte of swapped-word copies minus the item's; null if off
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
            or None for all. Default 100: accuracy's 95% interval is then about ±0.09 wide; use
            None for the real estimate (SmolLM2-135M scores ~2-3 items/s on 2 CPU cores).
        context_len: window length in tokens; None uses the model's context
            (``max_position_embeddings``). Longer than the model's context is an error.
        stride: new tokens scored per window of a long text; the remaining ``context_len -
            stride`` tokens are context already scored. None = half the context (each token sees at
            least half a window of context, at twice the cost of disjoint windows); ``context_len
            - 1`` gives disjoint windows (lm-eval's rolling log-likelihood, cheapest).
        mc_format: ``"cloze"`` scores each choice's text after the question (lm-eval's ARC,
            HellaSwag, MMLU-cloze); ``"letters"`` lists the choices as ``A. ...`` lines after the
            question and scores the letters (lm-eval's ``mmlu`` task format).
        mc_template: the cloze prompt, with a ``{question}`` placeholder; None uses the question
            as it is. Default ``"Question: {question}\nAnswer:"`` is lm-eval's cloze prompt (ARC,
            MMLU-cloze), which makes the choice read as an answer rather than as more question text.
        choice_separator: lm-eval's ``target_delimiter``: always put between the context and a
            choice (" " by default, as in lm-eval).
        target_separator: put between question and target of a non-multiple-choice item unless
            the question ends (or the target starts) with whitespace. "\n" suits "line -> next
            line" items; HumanEval prompts end in a newline already. It is context, not scored.
        ece_bins: equal-width confidence bins for ECE (15, as in Guo et al. 2017).
        bootstrap_iters: resamples for the 95% intervals. 1000 puts the bounds' own Monte-Carlo
            error near ±0.005 for an accuracy at n = 500 and costs well under a second.
        bootstrap_seed: mixed with the benchmark (or domain) and subset name into each seed.
        min_calibration_items: fit a temperature only when a benchmark's fit split holds at least
            this many multiple-choice items (else ``temperature`` and ``ece_after`` are null): one
            parameter fitted on a handful of items runs to the bounds of its search.
        permutation_check: score every multiple-choice item a second time with its choices rotated
            by one and report how often the same choice wins (``agreement``). Doubles the cost of
            the multiple-choice items, so off by default; needs ``mc_format = "letters"``.
        mask_padded_vocab: exclude logits of vocabulary rows past the tokenizer's length (a
            vocabulary padded for fast matmuls) from the softmax. Off by default: lm-eval scores
            with the model's full softmax, and parity with it is the contract.
        batch_size: sequences per forward pass (padded to the longest in the batch; requests are
            sorted by length, so little padding). 16 amortises per-call overhead on CPU.
        device: "auto" (cuda if available), "cpu" or "cuda".
        dtype: "auto" (bfloat16 autocast on CUDA, float32 on CPU), "float32" or "bfloat16".
            Log-probabilities are always computed in float32.
        num_threads: CPU threads for torch; None = the CPUs this process may use.
        sample_salt: mixed into the id hash that picks the capped subsets and the calibration split.
        leak_perturbations: swapped-word copies scored per benchmark item for the model-side leak
            check (``leak_gap`` / ``leak_excess`` with intervals, per subset, so contaminated
            items can be compared with clean ones); 0 turns it off. Each copy costs one forward
            pass over the item's text, about what one choice of a multiple-choice item costs.
        leak_swap_share: share of adjacent word pairs swapped in each copy.
        leak_reference_docs: held-out documents (cut to an item's length) whose gap is the
            baseline of ``leak_excess``.
    """

    max_docs_per_domain: int | None = 200
    max_bytes_per_domain: int | None = 50_000
    max_examples_per_benchmark: int | None = 100
    context_len: int | None = None
    stride: int | None = None
    mc_format: Literal["cloze", "letters"] = "cloze"
    mc_template: str | None = "Question: {question}\nAnswer:"
    choice_separator: str = " "
    target_separator: str = "\n"
    ece_bins: int = 15
    bootstrap_iters: int = 1000
    bootstrap_seed: str = "winnow-bootstrap"
    min_calibration_items: int = 20
    permutation_check: bool = False
    mask_padded_vocab: bool = False
    batch_size: int = 16
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    num_threads: int | None = None
    sample_salt: str = "winnow-eval"
    leak_perturbations: int = 2
    leak_swap_share: float = 0.15
    leak_reference_docs: int = 100

    def __post_init__(self) -> None:
        for name in ("max_docs_per_domain", "max_bytes_per_domain", "max_examples_per_benchmark"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ValueError(f"{name} must be >= 1 or none, got {v}")
        if self.context_len is not None and self.context_len < 2:
            raise ValueError(f"context_len must be >= 2, got {self.context_len}")
        if self.stride is not None and self.stride < 1:
            raise ValueError(f"stride must be >= 1, got {self.stride}")
        if self.mc_format not in ("cloze", "letters"):
            raise ValueError(f"mc_format must be 'cloze' or 'letters', got {self.mc_format!r}")
        if self.mc_template is not None and "{question}" not in self.mc_template:
            raise ValueError(f"mc_template must contain {{question}}, got {self.mc_template!r}")
        if min(self.ece_bins, self.batch_size, self.bootstrap_iters, self.min_calibration_items) < 1:
            raise ValueError("ece_bins, batch_size, bootstrap_iters and min_calibration_items must be >= 1")
        if self.leak_perturbations < 0 or not 0 < self.leak_swap_share <= 0.5 or self.leak_reference_docs < 1:
            raise ValueError("leak_perturbations must be >= 0, leak_swap_share in (0, 0.5], leak_reference_docs >= 1")
        if self.permutation_check and self.mc_format != "letters":
            raise ValueError(
                "permutation_check needs mc_format = 'letters': a cloze choice's score does not see "
                "the other choices, so rotating them cannot change a prediction"
            )


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
    (which keeps SDPA on its fast causal path). Only the positions that are scored go through the
    vocabulary softmax, and where the model takes ``logits_to_keep`` (transformers' Llama, GPT-2,
    ...) the output projection runs only from the batch's first scored position on: a
    multiple-choice request scores a few tokens after a long context. With ``real_vocab``, logits
    of padded vocabulary rows (ids >= ``real_vocab``) are masked out.
    """
    import inspect

    import torch

    out = np.zeros(len(requests), dtype=np.float64)
    order = sorted(range(len(requests)), key=lambda i: -len(requests[i][0]))
    use_bf16 = dtype == "bfloat16"
    trims = "logits_to_keep" in inspect.signature(model.forward).parameters
    with torch.inference_mode():
        for start in track(range(0, len(order), batch_size), desc="scoring batches"):
            idx = order[start : start + batch_size]
            width = max(len(requests[i][0]) for i in idx)
            ids = torch.zeros((len(idx), width), dtype=torch.long)
            scored = torch.zeros((len(idx), width - 1), dtype=torch.bool)
            for row, i in enumerate(idx):
                toks, first = requests[i]
                ids[row, : len(toks)] = torch.tensor(toks, dtype=torch.long)
                scored[row, first - 1 : len(toks) - 1] = True  # logits at t predict token t+1
            lo = min(requests[i][1] for i in idx) - 1 if trims else 0
            kwargs = {"logits_to_keep": width - lo} if trims else {}
            with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=use_bf16):
                logits = model(input_ids=ids.to(device), use_cache=False, **kwargs).logits
            mask = scored[:, lo:].to(logits.device)
            picked = logits[:, : width - 1 - lo][mask].float()  # (scored tokens, vocab)
            if real_vocab is not None and real_vocab < picked.shape[-1]:
                picked[:, real_vocab:] = float("-inf")
            targets = ids[:, lo + 1 :].to(logits.device)[mask]
            nll = torch.nn.functional.cross_entropy(picked, targets, reduction="none").double()
            rows = torch.arange(len(idx), device=logits.device)[:, None].expand_as(mask)[mask]
            # Summed in float64: a float32 sum of a 1000-nat target is only good to ~1e-4.
            totals = torch.zeros(len(idx), dtype=torch.float64, device=logits.device).index_add_(0, rows, nll)
            out[idx] = totals.cpu().numpy()
    return out


class Encoder:
    """Tokenizes (context, continuation) pairs exactly as lm-eval's ``hf`` model does.

    ``tokenizer.encode`` with the tokenizer's own special-token default (lm-eval's ``tok_encode``
    with ``add_bos_token`` unset), except that a string already starting with the prefix token's
    text is encoded without special tokens. Pairs follow ``LM._encode_pair``; an empty context is
    replaced by the prefix token (BOS, else EOS), as in ``LM.loglikelihood``.
    """

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        bos = tokenizer.bos_token_id
        self.prefix_id = bos if bos is not None else tokenizer.eos_token_id
        if self.prefix_id is None:
            raise WinnowError("evaluate: the model's tokenizer has neither a BOS nor an EOS token")
        self.prefix_text = tokenizer.decode(self.prefix_id)

    def encode(self, text: str, add_special_tokens: bool | None = None) -> list[int]:
        """Token ids of ``text`` (lm-eval ``tok_encode``)."""
        if add_special_tokens is None and self.prefix_text and text.startswith(self.prefix_text):
            add_special_tokens = False
        if add_special_tokens is None:
            return list(self.tokenizer.encode(text))
        return list(self.tokenizer.encode(text, add_special_tokens=add_special_tokens))

    def pair(self, context: str, continuation: str) -> tuple[list[int], int]:
        """``(tokens, first)``: context + continuation tokens and the index of the first scored one."""
        if context == "":
            cont = self.encode(continuation, add_special_tokens=False)
            if not cont:
                raise WinnowError(f"evaluate: continuation {continuation[:40]!r} has no tokens")
            return ([self.prefix_id, *cont], 1) if cont[0] != self.prefix_id else (cont, 1)
        n_spaces = len(context) - len(context.rstrip())
        if n_spaces:  # a BPE merges a space with the word after it: " Paris" is one token
            context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
        whole = self.encode(context + continuation)
        ctx = self.encode(context)
        if len(whole) <= len(ctx):
            raise WinnowError(f"evaluate: continuation {continuation[:40]!r} adds no tokens after its context")
        return [*ctx, *whole[len(ctx):]], len(ctx)


def scored_text(context: str, continuation: str) -> str:
    """The text whose tokens :meth:`Encoder.pair` scores (the context's trailing whitespace moves)."""
    return context[len(context.rstrip()):] + continuation


def mc_prompt(question: str, choices: Sequence[str], params: Params) -> tuple[str, list[str]]:
    """Context and the choice strings lm-eval would score (``doc_to_text``, ``doc_to_choice``).

    The continuation of choice k is ``params.choice_separator + strings[k]``; ``acc_norm``
    divides by ``len(strings[k])``.
    """
    if params.mc_format == "letters":
        listed = "".join(f"{LETTERS[k]}. {c}\n" for k, c in enumerate(choices))
        return f"{question.strip()}\n{listed}Answer:", list(LETTERS[: len(choices)])
    context = params.mc_template.format(question=question) if params.mc_template is not None else question
    return context, list(choices)


def target_prompt(question: str, target: str, params: Params) -> str:
    """Context of a non-multiple-choice item: the question and, where needed, the separator."""
    sep = "" if (not question or question[-1:].isspace() or target[:1].isspace()) else params.target_separator
    return question + sep


def run(
    model_dir: Path,
    heldout: pa.Table,
    benchmarks: pa.Table,
    params: Params = Params(),
    contamination: pa.Table | None = None,
) -> StageResult:
    """Score a saved model on held-out text and benchmarks.

    Args:
        model_dir: a ``save_pretrained`` folder (model + tokenizer), e.g. a train entry's files.
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
        (:data:`BENCHMARKS_SCHEMA`), ``positions`` (:data:`POSITIONS_SCHEMA`) and ``examples``
        (:data:`EXAMPLES_SCHEMA`), and a flat metrics dict: ``bits_per_byte_mean`` (macro over
        domains), ``bits_per_byte/<domain>``, ``<metric>/<benchmark>`` and, with a contamination
        report, ``<metric>/<benchmark>/clean``, ``.../contaminated`` and
        ``accuracy_gap/<benchmark>`` (all − clean).

    Raises:
        WinnowError: a model folder that does not load, a context_len above the model's, bad table
            columns or values, or a contamination report that misses a scored example; all before
            any scoring.
    """
    _check_heldout(heldout)
    _check_benchmarks(benchmarks, params)
    contaminated_of = _contamination_lookup(contamination) if contamination is not None else None
    with loaded_scorer(Path(model_dir), params) as s:
        leak_of = (lambda rows: _leak_gaps(rows, heldout, params, s.bpb)) if params.leak_perturbations else None
        domain_table, domain_metrics = _evaluate_heldout(heldout, params, s.encoder, s.score)
        bench_tables, bench_metrics = _evaluate_benchmarks(benchmarks, params, s.encoder, s.score, contaminated_of, leak_of)
    metrics = {**domain_metrics, **bench_metrics, "context_len": s.context_len, "stride": s.stride, "device": s.device,
               "dtype": s.dtype}
    return StageResult(tables={"data": domain_table, **bench_tables}, metrics=metrics)


@dataclass
class Scorer:
    """A loaded model's scoring functions (see :func:`loaded_scorer`)."""

    encoder: "Encoder"
    score: Callable[[list[tuple[list[int], int]]], np.ndarray]  # NLL per (tokens, first scored index) item
    context_len: int
    stride: int
    device: str
    dtype: str

    def bpb(self, texts: list[str]) -> np.ndarray:
        """Bits per UTF-8 byte of each whole text, scored after the prefix token (BOS, else EOS);
        a text longer than the context is scored in windows."""
        nll = self.score([([self.encoder.prefix_id, *self.encoder.encode(t, add_special_tokens=False)], 1) for t in texts])
        return nll / (math.log(2) * np.array([max(1, len(t.encode("utf-8"))) for t in texts], dtype=np.float64))


@contextlib.contextmanager
def loaded_scorer(model_dir: Path, params: Params) -> Iterator[Scorer]:
    """Load the model in ``model_dir`` once and yield its scorer: how evaluate scores everything
    (held-out bits/byte, benchmark log-likelihoods, the leak check), and what
    :func:`tasks.leakcheck.run` calls. Torch's thread count is restored afterwards."""
    ctx = _check_model(model_dir, params)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    device = _resolve_device(params.device, torch.cuda.is_available())
    dtype = ("bfloat16" if device == "cuda" else "float32") if params.dtype == "auto" else params.dtype
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    threads_before = torch.get_num_threads()
    torch.set_num_threads(params.num_threads or cpus)
    try:
        model, tokenizer = _load(model_dir, device)
        stride = params.stride or max(1, ctx // 2)
        real_vocab = len(tokenizer) if params.mask_padded_vocab else None

        def score(items: list[tuple[list[int], int]]) -> np.ndarray:
            """NLL per (tokens, first) item, splitting long ones into windows and summing back."""
            reqs, owner = [], []
            for k, (toks, first) in enumerate(items):
                for w in windows(toks, first, ctx, stride):
                    reqs.append(w)
                    owner.append(k)
            nll = score_requests(model, reqs, params.batch_size, device, dtype, real_vocab)
            return np.bincount(np.array(owner, dtype=np.int64), weights=nll, minlength=len(items))

        yield Scorer(Encoder(tokenizer), score, ctx, stride, device, dtype)
    finally:
        torch.set_num_threads(threads_before)


def _check_model(model_dir: Path, params: Params) -> int:
    """The context length to use; a folder that is no loadable model fails here, before any weights are read."""
    from tasks.pretrained import check_source

    if not (model_dir / "config.json").is_file():
        raise WinnowError(f"evaluate: {model_dir} holds no saved model (config.json missing); run the train stage first")
    check_source(str(model_dir))
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(model_dir, local_files_only=True)
    except (OSError, ValueError, KeyError) as e:
        raise WinnowError(f"evaluate: {model_dir}/config.json does not load: {str(e).splitlines()[0]}") from None
    model_ctx = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    if not model_ctx:
        raise WinnowError(f"evaluate: {model_dir}/config.json names no context length (max_position_embeddings)")
    ctx = params.context_len or model_ctx
    if ctx > model_ctx:
        raise WinnowError(f"evaluate.context_len={ctx} exceeds the model's context of {model_ctx} tokens ({model_dir})")
    return ctx


def _load(model_dir: Path, device: str) -> tuple[Any, Any]:
    """Model (eval mode, on ``device``) and tokenizer; any load failure is one line naming the folder."""
    import torch
    from transformers import AutoTokenizer

    from tasks import pretrained

    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        model = pretrained.load_model(model_dir, dtype=torch.float32)
    except Exception as e:  # noqa: BLE001  safetensors, torch and transformers each raise their own types
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise WinnowError(f"evaluate: the model in {model_dir} does not load: {msg}") from None
    return model.to(device).eval(), tokenizer


def _evaluate_heldout(heldout: pa.Table, params: Params, encoder: Encoder, score: Any) -> tuple[pa.Table, dict]:
    keys = heldout["id"].to_pylist()
    if "part" in heldout.column_names:
        keys = [f"{i}#{p}" for i, p in zip(keys, heldout["part"].to_pylist())]
    domains = heldout["domain"].to_pylist()
    texts = heldout["text"].to_pylist()
    sizes = [len(t.encode("utf-8")) for t in texts]
    chosen = capped(keys, domains, params.max_docs_per_domain, params.sample_salt, sizes, params.max_bytes_per_domain)
    enc = encoder.tokenizer([texts[i] for i in chosen], add_special_tokens=False)["input_ids"]
    nll = score([([encoder.prefix_id, *ids], 1) for ids in enc])
    rows, metrics = [], {}
    chosen_domains = np.array([domains[i] for i in chosen], dtype=object)
    n_bytes = np.array([sizes[i] for i in chosen], dtype=np.int64)
    n_tokens = np.array([len(ids) for ids in enc], dtype=np.int64)
    for d in sorted(set(domains)):
        m = chosen_domains == d
        idx = resamples(int(m.sum()), params.bootstrap_iters, f"{params.bootstrap_seed}|domain|{d}")
        bpb, lo, hi = ratio_with_interval(nll[m], n_bytes[m], idx, 1.0 / math.log(2))
        total_nll, t = float(nll[m].sum()), int(n_tokens[m].sum())
        rows.append({"domain": d, "docs": int(m.sum()), "bytes": int(n_bytes[m].sum()), "tokens": t,
                     "nats_per_token": total_nll / t, "bits_per_byte": bpb, "bits_per_byte_lo": lo, "bits_per_byte_hi": hi})
        metrics[f"bits_per_byte/{d}"] = round(bpb, 5)
    metrics["bits_per_byte_mean"] = round(float(np.mean([r["bits_per_byte"] for r in rows])), 5)
    metrics["bits_per_byte_worst"] = round(float(np.max([r["bits_per_byte"] for r in rows])), 5)
    return pa.Table.from_pylist(rows, schema=DOMAINS_SCHEMA), metrics


def _evaluate_benchmarks(
    benchmarks: pa.Table,
    params: Params,
    encoder: Encoder,
    score: Callable[[list[tuple[list[int], int]]], np.ndarray],
    contaminated_of: Callable[[str, str], bool | None] | None,
    leak_of: Callable[[list[dict[str, Any]]], tuple[np.ndarray, np.ndarray]] | None = None,
) -> tuple[dict[str, pa.Table], dict]:
    if benchmarks.num_rows == 0:
        empty = {"benchmarks": BENCHMARKS_SCHEMA, "positions": POSITIONS_SCHEMA, "examples": EXAMPLES_SCHEMA}
        return {k: s.empty_table() for k, s in empty.items()}, {}
    rows = select_examples(benchmarks, params)
    contaminated = _contamination_flags(rows, contaminated_of)
    items, spans = benchmark_requests(rows, params, encoder)
    nll = score(items)
    rotated: list[np.ndarray | None] = [None] * len(rows)
    if params.permutation_check:
        r_items, r_spans = benchmark_requests(rows, params, encoder, rotate=True)
        r_nll = score(r_items)
        rotated = [-r_nll[s : s + k] if k else None for s, k, *_ in r_spans]
    fit = in_fit_split([r["id"] for r in rows], params.sample_salt + "/calibration")
    examples = [
        _example(r, -nll[start : start + k], texts, rot, bool(f), c)
        for r, (start, k, texts), rot, f, c in zip(rows, spans, rotated, fit, contaminated)
    ]
    reference: tuple[float, np.ndarray] | None = None  # the reference's mean gap and bootstrap means
    if leak_of is not None:
        item_gap, reference_gap = leak_of(rows)
        for e, g in zip(examples, item_gap):
            e["leak_gap"] = float(g)
        reference = leak_reference(reference_gap, params)

    table_rows, position_rows, metrics = [], [], {}
    subsets = SUBSETS if contaminated_of is not None else ("all",)
    for bench in sorted({e["benchmark"] for e in examples}):
        mine = [e for e in examples if e["benchmark"] == bench]
        fit_mc = [e for e in mine if e["kind"] == "multiple_choice" and e["calibration_fit"]]
        temperature = (fit_temperature([e["logliks"] for e in fit_mc], [e["answer"] for e in fit_mc])
                       if len(fit_mc) >= params.min_calibration_items else None)
        for subset in subsets:
            sel = [e for e in mine if subset == "all" or e["contaminated"] == (subset == "contaminated")]
            row = _subset_metrics(bench, subset, sel, params, temperature)
            if leak_of is not None and sel:
                leak_metrics(row, np.array([e["leak_gap"] for e in sel], dtype=np.float64), reference, params)
            table_rows.append(row)
            suffix = "" if subset == "all" else f"/{subset}"
            for name in (*BENCHMARK_METRICS, "temperature"):
                if row[name] is not None:
                    metrics[f"{name}/{bench}{suffix}"] = round(row[name], 5)
            metrics[f"n/{bench}{suffix}"] = row["n"]
        if contaminated_of is not None:
            acc_all, acc_clean = metrics.get(f"accuracy/{bench}"), metrics.get(f"accuracy/{bench}/clean")
            if acc_all is not None and acc_clean is not None:
                metrics[f"accuracy_gap/{bench}"] = round(acc_all - acc_clean, 5)
        position_rows += _position_rows(bench, [e for e in mine if e["kind"] == "multiple_choice"], params)
    example_table = pa.Table.from_pylist([{k: e.get(k) for k in EXAMPLES_SCHEMA.names} for e in examples], schema=EXAMPLES_SCHEMA)
    tables = {
        "benchmarks": pa.Table.from_pylist(table_rows, schema=BENCHMARKS_SCHEMA),
        "positions": pa.Table.from_pylist(position_rows, schema=POSITIONS_SCHEMA),
        "examples": example_table,
    }
    return tables, metrics


def select_examples(benchmarks: pa.Table, params: Params) -> list[dict[str, Any]]:
    """The benchmark rows evaluate scores (the hash-ordered capped subset), as dicts."""
    rows = benchmarks.select(list(BENCHMARK_SCHEMA.names)).to_pylist()
    keep = capped([r["id"] for r in rows], [r["benchmark"] for r in rows], params.max_examples_per_benchmark, params.sample_salt)
    return [rows[i] for i in keep]


def example_texts(row: dict[str, Any], params: Params, rotate: bool = False) -> tuple[str, list[str], list[str]]:
    """``(context, continuations, choice_strings)`` of one benchmark row, as lm-eval requests them.

    A multiple-choice row gives one continuation per choice (``choice_separator`` + string); with
    ``rotate`` the choices are first rotated left by one. A target row gives its target (and no
    choice strings), or nothing when rotated.
    """
    question = row["question"] or ""
    if row["answer"] >= 0:
        choices = list(row["choices"])
        if rotate:
            choices = choices[1:] + choices[:1]
        context, strings = mc_prompt(question, choices, params)
        return context, [params.choice_separator + s for s in strings], strings
    if rotate:
        return "", [], []
    return target_prompt(question, row["target"], params), [row["target"]], []


def benchmark_requests(
    rows: list[dict[str, Any]], params: Params, encoder: Encoder, rotate: bool = False
) -> tuple[list[tuple[list[int], int]], list[tuple[int, int, tuple[str, list[str], list[str]]]]]:
    """Token requests of every (context, continuation) pair, and per row (first request, count, texts)."""
    items, spans = [], []
    for r in rows:
        texts = example_texts(r, params, rotate)
        context, conts, _ = texts
        spans.append((len(items), len(conts), texts))
        items.extend(encoder.pair(context, c) for c in conts)
    return items, spans


def _contamination_flags(rows: list[dict[str, Any]], contaminated_of: Callable[[str, str], bool | None] | None) -> list[bool | None]:
    if contaminated_of is None:
        return [None] * len(rows)
    flags = []
    for r in rows:
        flag = contaminated_of(r["benchmark"], r["id"])
        if flag is None:
            raise WinnowError(f"evaluate: the contamination report has no row for example id {r['id']!r} ({r['benchmark']})")
        flags.append(flag)
    return flags


def _example(
    r: dict[str, Any], ll: np.ndarray, texts: tuple[str, list[str], list[str]], rotated: np.ndarray | None,
    fit: bool, contaminated: bool | None,
) -> dict[str, Any]:
    """One row of the examples table (plus ``probs`` and ``nll`` for the subset metrics)."""
    ex = {"id": r["id"], "benchmark": r["benchmark"], "answer": r["answer"], "contaminated": contaminated,
          "calibration_fit": fit, "logliks": [float(v) for v in ll]}
    if r["answer"] >= 0:
        s = choice_scores(ll, texts[2], r["answer"])
        pred_rotated = None if rotated is None else (int(np.argmax(rotated)) + 1) % len(ll)
        ex.update(kind="multiple_choice", target_bytes=None, bits_per_byte=None, pred_rotated=pred_rotated, **s)
        return ex
    nb = len(scored_text(texts[0], texts[1][0]).encode("utf-8"))
    ex.update(kind="target", pred=-1, pred_norm=-1, pred_bytes=-1, target_bytes=nb, nll=-float(ll[0]),
              bits_per_byte=bits_per_byte(-float(ll[0]), nb), probs=None)
    return ex


def _put(row: dict[str, Any], name: str, value_lo_hi: tuple[float, float, float]) -> None:
    row[name], row[f"{name}_lo"], row[f"{name}_hi"] = value_lo_hi


def _subset_metrics(bench: str, subset: str, sel: list[dict], params: Params, temperature: float | None) -> dict[str, Any]:
    """One row of the benchmarks table; intervals resample the subset's items."""
    row: dict[str, Any] = {f.name: None for f in BENCHMARKS_SCHEMA}
    mc = [e for e in sel if e["kind"] == "multiple_choice"]
    tg = [e for e in sel if e["kind"] == "target"]
    row.update(benchmark=bench, subset=subset, n=len(sel), n_choice=len(mc))
    key = f"{params.bootstrap_seed}|{bench}|{subset}"
    if mc:
        idx = resamples(len(mc), params.bootstrap_iters, key)
        for name, col in (("accuracy", "correct"), ("accuracy_norm", "correct_norm"), ("accuracy_bytes", "correct_bytes")):
            _put(row, name, mean_with_interval(np.array([e[col] for e in mc], dtype=np.float64), idx))
        _put(row, "ece", _ece_with_interval([e["logliks"] for e in mc], [e["answer"] for e in mc], 1.0, idx, params.ece_bins))
        _put(row, "brier", mean_with_interval(brier_items([e["probs"] for e in mc], [e["answer"] for e in mc]), idx))
        row["temperature"] = temperature
        test = [e for e in mc if not e["calibration_fit"]]
        row["n_calibration"] = len(test)
        if test:
            tidx = resamples(len(test), params.bootstrap_iters, key + "|calibration")
            lls, answers = [e["logliks"] for e in test], [e["answer"] for e in test]
            _put(row, "ece_before", _ece_with_interval(lls, answers, 1.0, tidx, params.ece_bins))
            if temperature is not None:
                _put(row, "ece_after", _ece_with_interval(lls, answers, temperature, tidx, params.ece_bins))
        if mc[0]["pred_rotated"] is not None:
            _put(row, "agreement", mean_with_interval(np.array([e["pred_rotated"] == e["pred"] for e in mc], dtype=np.float64), idx))
    if tg:
        idx = resamples(len(tg), params.bootstrap_iters, key + "|target")
        # Micro-average: total bits over total bytes, like the held-out domains.
        nll, nb = np.array([e["nll"] for e in tg]), np.array([e["target_bytes"] for e in tg])
        _put(row, "bits_per_byte", ratio_with_interval(nll, nb, idx, 1.0 / math.log(2)))
    return row


def _leak_gaps(rows: list[dict[str, Any]], heldout: pa.Table, params: Params,
               bpb: Callable[[list[str]], np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Leak-check gaps of the scored items and of held-out reference texts of about their length."""
    from tasks import leakcheck

    texts = []
    for r in rows:
        target = r["target"] or (r["choices"][r["answer"]] if r["answer"] >= 0 else "")
        texts.append(leakcheck.item_text(r["question"], target) or " ".join(r["choices"] or []) or r["id"])
    words = max(2, int(np.median([len(t.split()) for t in texts])))
    keep = capped(heldout["id"].to_pylist(), ["reference"] * heldout.num_rows, params.leak_reference_docs,
                  params.sample_salt + "/leak-reference")
    reference = leakcheck.reference_texts(heldout.take(keep), params.leak_reference_docs, words)
    keys = [r["id"] for r in rows] + [f"reference/{i}" for i in range(len(reference))]
    orig, pert = leakcheck.score_gaps(keys, texts + reference, bpb, params.leak_perturbations,
                                      params.leak_swap_share, seed=0)
    gap = pert - orig
    return gap[: len(texts)], gap[len(texts):]


def leak_reference(reference_gap: np.ndarray, params: Params) -> tuple[float, np.ndarray] | None:
    """The reference texts' mean gap and bootstrap means (None without reference texts), resampled
    once: the same draw serves every benchmark and subset."""
    if reference_gap.size == 0:
        return None
    ridx = resamples(reference_gap.size, params.bootstrap_iters, f"{params.bootstrap_seed}|leak-reference")
    return float(reference_gap.mean()), reference_gap[ridx].mean(axis=1)


def leak_metrics(row: dict[str, Any], gap: np.ndarray, reference: tuple[float, np.ndarray] | None,
                 params: Params) -> None:
    """Put ``leak_gap`` (the mean of the items' ``gap``) and ``leak_excess`` over the reference
    (:func:`leak_reference`; None when no reference text), with intervals, into ``row`` (which
    names its ``benchmark`` and ``subset``): items and reference texts resampled independently."""
    key = f"{params.bootstrap_seed}|{row['benchmark']}|{row['subset']}|leak"
    idx = resamples(gap.size, params.bootstrap_iters, key)
    _put(row, "leak_gap", mean_with_interval(gap, idx))
    if reference is not None:
        mean, means = reference
        _put(row, "leak_excess", (float(gap.mean() - mean), *percentile_interval(gap[idx].mean(axis=1) - means)))


def _ece_with_interval(
    logliks: list[list[float]], answers: list[int], temperature: float, idx: np.ndarray, bins: int
) -> tuple[float, float, float]:
    """ECE of the top softmax(ll / T) probability, with its bootstrap interval over ``idx``."""
    probs = [softmax(ll, temperature) for ll in logliks]
    conf = np.array([p.max() for p in probs])
    correct = np.array([int(np.argmax(p)) == a for p, a in zip(probs, answers)], dtype=np.float64)
    return (expected_calibration_error(conf, correct, bins), *percentile_interval(ece_bootstrap(conf, correct, idx, bins)))


def _position_rows(bench: str, mc: list[dict], params: Params) -> list[dict[str, Any]]:
    """Accuracy by the position of the gold answer and how often each position is picked."""
    if not mc:
        return []
    answers = np.array([e["answer"] for e in mc])
    preds = np.array([e["pred"] for e in mc])
    correct = np.array([e["correct"] for e in mc], dtype=np.float64)
    n_choices = np.array([len(e["logliks"]) for e in mc])
    out = []
    for p in range(int(n_choices.max())):
        gold = answers == p
        row = {"benchmark": bench, "position": p, "n_gold": int(gold.sum()), "n_pred": int((preds == p).sum()),
               "pred_share": float((preds == p).sum() / max(1, (n_choices > p).sum()))}
        if gold.any():
            idx = resamples(int(gold.sum()), params.bootstrap_iters, f"{params.bootstrap_seed}|{bench}|position|{p}")
            _put(row, "accuracy", mean_with_interval(correct[gold], idx))
        else:
            _put(row, "accuracy", (None, None, None))  # type: ignore[arg-type]
        out.append(row)
    return out


def capped(
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


def _check_benchmarks(benchmarks: pa.Table, params: Params) -> None:
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
            if params.mc_format == "letters" and len(choices) > len(LETTERS):
                raise WinnowError(f"evaluate (benchmarks): example {r['id']!r} has {len(choices)} choices; mc_format 'letters' allows {len(LETTERS)}")
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
