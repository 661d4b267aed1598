"""Mixture: split off a held-out set per domain, weight the domains, sample training text to a budget.

Three steps, each deterministic:

1. **Held-out split.** Each document goes to the held-out set when a salted 64-bit xxhash of its id,
   read as a fraction of 2**64, is below ``heldout_fraction``; a domain that gets fewer than
   ``min_heldout_docs`` that way is topped up with its next-lowest-hash documents. The split
   depends only on the ids and the salt, never on the weights, so every mixture evaluated on one
   corpus shares one held-out set, and adding documents never moves an existing one across.
2. **Domain weights** over the training pool's per-domain UTF-8 byte counts n_i:
   ``temperature`` p_i ∝ n_i^(1/τ) (τ=1 is proportional, τ→∞ uniform), ``proportional``,
   ``uniform`` or ``manual``. New methods (RegMix, DoReMi, ...) register a function in
   :data:`WEIGHTING_METHODS`; an optional ``max_epochs`` cap then moves weight off domains that
   would be repeated too often (UniMax-style water-filling).
3. **Sampling** to ``train_bytes``: domain i gets p_i·train_bytes bytes, taken as whole passes over
   its documents (each pass in its own seeded order) plus a seeded prefix of one more pass, so a
   small domain is repeated (``epochs`` > 1) and a large one subsampled. Documents longer than
   ``chunk_bytes`` are first cut at line boundaries, so one huge file cannot swamp a budget.

Labelled rows (``label`` not null) are rendered with ``template`` (default ``"{label}: {text}"``) in
both the training and held-out text, so a wrong label costs the language model bits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import xxhash

from tasks.common import RowRules, StageResult, check_rows
from winnow.errors import WinnowError

STAGE = "mixture"

#: Columns of the ``data`` (training) and ``heldout`` tables. ``id`` is the corpus document id
#: (kept for tracing); ``part`` numbers the chunks of a long document and ``epoch`` the pass over
#: its domain, so (id, part, epoch) is unique in ``data`` and (id, part) in ``heldout``.
DATA_SCHEMA = pa.schema(
    [("id", pa.string()), ("part", pa.int32()), ("epoch", pa.int32()), ("text", pa.string()), ("domain", pa.string())]
)
HELDOUT_SCHEMA = pa.schema([("id", pa.string()), ("part", pa.int32()), ("text", pa.string()), ("domain", pa.string())])
WEIGHTS_SCHEMA = pa.schema(
    [
        ("domain", pa.string()),
        ("docs", pa.int64()),  # training-pool documents (before chunking)
        ("bytes", pa.int64()),  # training-pool UTF-8 bytes (after templating)
        ("weight", pa.float64()),
        ("sampled_bytes", pa.int64()),
        ("epochs", pa.float64()),  # sampled_bytes / bytes
        ("heldout_docs", pa.int64()),
        ("heldout_bytes", pa.int64()),
    ]
)


@dataclass(frozen=True)
class Params:
    """Parameters of the mixture stage.

    Attributes:
        method: how domain weights are chosen: ``"temperature"`` (default) p_i ∝ n_i^(1/τ) over
            the domains' training bytes; ``"proportional"`` (τ=1: the corpus as it is);
            ``"uniform"`` (every domain equal); ``"unimax"`` (uniform, no domain repeated more
            than ``max_epochs`` passes, default 1: Chung et al. 2023); ``"manual"``
            (``manual_weights``); learned from proxy runs: ``"regmix"`` (regression over
            ``proxies`` Dirichlet mixtures, :mod:`tasks.regmix`) or ``"doremi"`` (Group-DRO
            against a reference proxy, :mod:`tasks.doremi`). More formulas can be registered in
            :data:`WEIGHTING_METHODS`.
        temperature: τ for ``"temperature"``. Default 2.0 halves the log-ratio between big and
            small domains, between multilingual BERT's τ≈1.4 and XLM-R/mT5's τ≈3.3 (their α=0.7
            and 0.3); 1 reproduces proportional, large values approach uniform.
        manual_weights: domain -> non-negative weight for ``"manual"`` (normalised to sum to 1).
            A domain left out gets weight 0 (still held out and evaluated); naming a domain not in
            the corpus is an error, so a typo cannot silently drop a domain.
        max_epochs: if set, no domain is sampled more than this many passes; the weight it cannot
            use goes to the others in proportion to their weights (UniMax). None (default) lets a
            small domain repeat as often as its weight asks. Set 2-4 when a tiny domain gets a big
            weight and you see it memorised.
        train_bytes: UTF-8 bytes of training text to sample. Default 2 MB is about 600k tokens of
            a 4k BPE, a little more than the default training run reads (410k tokens), so it
            sees each sampled document at most once; raise it with the training budget (the train
            stage loops over the data if it needs more, which repeats documents).
        heldout_fraction: share of each domain's documents held out for evaluation. 0.05 keeps
            training text nearly intact while giving a few hundred held-out docs on the sample.
        min_heldout_docs: held-out documents per domain at least (a domain of n docs keeps at
            least one for training, so it holds out at most n-1). Default 2 so every domain can be
            scored even when tiny.
        max_heldout_docs: cap on held-out documents per domain (lowest hashes first), or None.
            Default 500 bounds evaluation cost on large corpora without changing small ones.
        split_salt: mixed into the id hash; change it to draw a different held-out set.
        template: format of labelled rows, with ``{label}`` and ``{text}`` placeholders; None
            leaves labelled text as it is. Default ``"{label}: {text}"`` puts the label in the
            training text so label quality shows in the model.
        chunk_bytes: documents longer than this many UTF-8 bytes are cut at line boundaries into
            parts of at most this size (a single longer line is cut inside). Default 8192 keeps
            the byte budget fine-grained; None disables chunking.
        seed: seeds the sampling order (not the held-out split, which only ``split_salt`` sets).
        domains: the domains the data must hold (each with rows after curation); empty: whatever
            the data has. Catches a domain that curation emptied or a misnamed input.

    Learned methods (``regmix``, ``doremi``; see :mod:`tasks.proxy` for what a proxy is):
        target: what the learned weights minimise: ``"mean"`` held-out bits/byte over domains,
            ``"worst"`` domain, ``"domain:NAME"``, or ``"benchmark:NAME"`` (RegMix only: bits/byte
            of that benchmark's gold answers; the proxies score the dev half of its items).
        min_weight: every domain gets at least this weight (0: a domain may be dropped).
        proxies: RegMix proxy runs (mixtures drawn around the pool's byte distribution); at least
            domains + 2 for the regression. 16 on the 6-domain sample: a minute or two per
            proxy batch on 2 cores, each proxy cached.
        proxy_tokens, proxy_train_bytes, proxy_d_model, proxy_n_layers, proxy_seed: each proxy's
            token budget, sampled text, model width and depth (a d=64, 2-layer Llama, ~0.14M
            parameters: seconds of training) and seed.
        proxy_tokenizer: ``"bpe"`` (each proxy fits its own 512-token BPE) or a tokenizer folder
            every proxy shares (set it to the main run's tokenizer so the proxies rank mixtures
            and not the tokenizers fitted to them).
        regression: ``"auto"`` (LightGBM or linear, whichever predicts held-out proxies better),
            ``"lightgbm"`` or ``"linear"``.
        concentration: Dirichlet spread of the RegMix mixtures around the prior (1: alpha = k·prior).
        doremi_reference: the baseline mixture the DoReMi reference proxy trains on.
        doremi_eta, doremi_smoothing: DoReMi's step size on the domain weights and the mixing
            with uniform each step (the paper's 1 and 1e-3).
    """

    method: Literal["temperature", "proportional", "uniform", "unimax", "manual", "regmix", "doremi"] = "temperature"
    temperature: float = 2.0
    manual_weights: dict[str, float] | None = None
    max_epochs: float | None = None
    train_bytes: int = 2_000_000
    heldout_fraction: float = 0.05
    min_heldout_docs: int = 2
    max_heldout_docs: int | None = 500
    split_salt: str = "winnow-heldout"
    template: str | None = "{label}: {text}"
    chunk_bytes: int | None = 8192
    seed: int = 0
    domains: tuple[str, ...] = ()
    target: str = "mean"
    min_weight: float = 0.0
    proxies: int = 16
    proxy_tokens: int = 30_720
    proxy_train_bytes: int = 300_000
    proxy_d_model: int = 64
    proxy_n_layers: int = 2
    proxy_seed: int = 0
    proxy_tokenizer: str = "bpe"
    regression: Literal["auto", "lightgbm", "linear"] = "auto"
    concentration: float = 1.0
    doremi_reference: Literal["uniform", "proportional"] = "proportional"
    doremi_eta: float = 1.0
    doremi_smoothing: float = 1e-3

    def __post_init__(self) -> None:
        if self.method not in WEIGHTING_METHODS and self.method not in LEARNED:
            raise ValueError(f"method must be one of {', '.join([*WEIGHTING_METHODS, *LEARNED])}, got {self.method!r}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.method == "manual" and not self.manual_weights:
            raise ValueError("method 'manual' needs manual_weights (a table of domain = weight)")
        if self.max_epochs is not None and not self.max_epochs > 0:
            raise ValueError(f"max_epochs must be > 0 or none, got {self.max_epochs}")
        if self.train_bytes < 1:
            raise ValueError(f"train_bytes must be >= 1, got {self.train_bytes}")
        if not 0 <= self.heldout_fraction < 1:
            raise ValueError(f"heldout_fraction must be in [0, 1), got {self.heldout_fraction}")
        if self.min_heldout_docs < 0:
            raise ValueError(f"min_heldout_docs must be >= 0, got {self.min_heldout_docs}")
        if self.max_heldout_docs is not None and self.max_heldout_docs < self.min_heldout_docs:
            raise ValueError("max_heldout_docs must be >= min_heldout_docs")
        if self.chunk_bytes is not None and self.chunk_bytes < 16:
            raise ValueError(f"chunk_bytes must be >= 16 or none, got {self.chunk_bytes}")
        if self.template is not None and "{text}" not in self.template:
            raise ValueError(f"template must contain {{text}}, got {self.template!r}")
        named = any(self.target.startswith(p) and len(self.target) > len(p) for p in ("domain:", "benchmark:"))
        if not (self.target in ("mean", "worst") or named):
            raise ValueError(f"target must be 'mean', 'worst', 'domain:NAME' or 'benchmark:NAME', got {self.target!r}")
        if not 0 <= self.min_weight < 1:
            raise ValueError(f"min_weight must be in [0, 1), got {self.min_weight}")
        if self.proxies < 1 or self.proxy_train_bytes < 1 or self.proxy_d_model < 2 or self.proxy_n_layers < 1:
            raise ValueError("proxies, proxy_train_bytes, proxy_d_model and proxy_n_layers must be >= 1")
        if not (self.concentration > 0 and self.doremi_eta > 0 and 0 <= self.doremi_smoothing <= 1):
            raise ValueError("concentration and doremi_eta must be > 0, doremi_smoothing in [0, 1]")


#: The settings that decide the held-out split and the text of each row: proxies and ablation
#: runs copy them, so every small model is scored on the main run's held-out documents.
SPLIT_FIELDS = ("heldout_fraction", "min_heldout_docs", "max_heldout_docs", "split_salt", "template", "chunk_bytes")


def split_settings(params: Params) -> dict[str, Any]:
    """The :data:`SPLIT_FIELDS` of ``params`` as a plain dict."""
    return {k: getattr(params, k) for k in SPLIT_FIELDS}


@dataclass(frozen=True)
class DomainStats:
    """What a weighting method sees: the training pool per domain, in sorted domain order."""

    domains: list[str]
    docs: np.ndarray  # int64, documents per domain
    bytes: np.ndarray  # int64, UTF-8 bytes per domain
    pool: pa.Table = field(repr=False)  # the training pool itself (id, part, text, domain)


def _temperature(stats: DomainStats, params: Params) -> np.ndarray:
    # In log space so a huge domain count to a small power cannot overflow.
    logits = np.log(stats.bytes.astype(np.float64)) / params.temperature
    w = np.exp(logits - logits.max())
    return w / w.sum()


def _proportional(stats: DomainStats, params: Params) -> np.ndarray:
    return stats.bytes / stats.bytes.sum()


def _uniform(stats: DomainStats, params: Params) -> np.ndarray:
    return np.full(len(stats.domains), 1.0 / len(stats.domains))


def _unimax(stats: DomainStats, params: Params) -> np.ndarray:
    return cap_epochs(_uniform(stats, params), stats.bytes, params.train_bytes, params.max_epochs or 1.0)


def _manual(stats: DomainStats, params: Params) -> np.ndarray:
    given = dict(params.manual_weights or {})
    unknown = sorted(set(given) - set(stats.domains))
    if unknown:
        raise WinnowError(
            f"mixture.manual_weights: unknown domain(s) {', '.join(unknown)}; corpus domains: {', '.join(stats.domains)}"
        )
    for d, w in given.items():
        if not (w >= 0 and math.isfinite(w)):
            raise WinnowError(f"mixture.manual_weights: weight of '{d}' must be a finite number >= 0, got {w}")
    w = np.array([float(given.get(d, 0.0)) for d in stats.domains])
    if w.sum() <= 0:
        raise WinnowError("mixture.manual_weights: weights sum to 0; give at least one domain a positive weight")
    return w / w.sum()


#: Weighting methods by name: ``fn(stats, params) -> weights`` (one per domain, in
#: ``stats.domains`` order, summing to 1). This is the extension point for learned mixtures: a
#: RegMix or DoReMi method trains proxies on ``stats.pool`` and returns the weights it found.
WEIGHTING_METHODS: dict[str, Callable[[DomainStats, Params], np.ndarray]] = {
    "temperature": _temperature,
    "proportional": _proportional,
    "uniform": _uniform,
    "unimax": _unimax,
    "manual": _manual,
}
#: Methods whose weights come from proxy runs (the flow runs them; ``run`` gets their weights).
LEARNED = ("regmix", "doremi")


def _learned(stats: DomainStats, params: Params, learned: pa.Table | None) -> np.ndarray:
    if learned is None:
        raise WinnowError(f"mixture.method = '{params.method}' learns its weights from proxy runs: run it with "
                          "`winnow run` or `winnow mixture`, which run the proxies first")
    given = dict(zip(learned["domain"].to_pylist(), learned["weight"].to_pylist()))
    if sorted(given) != stats.domains:
        raise WinnowError(f"mixture: learned weights are for domains {sorted(given)}, the data has {stats.domains}")
    w = np.array([given[d] for d in stats.domains], dtype=np.float64)
    return w / w.sum()


def precheck(corpus: pa.Table, params: Params) -> None:
    """Checks that need the data but no compute, run before any proxy or stage: named domains
    present, every domain with rows, enough proxies and a budget of at least one step."""
    present = pc.value_counts(corpus["domain"]).to_pylist() if "domain" in corpus.column_names else []
    counts = {c["values"]: c["counts"] for c in present if c["values"] is not None}
    where = "mixture"
    for d in params.domains:
        if counts.get(d, 0) == 0:
            raise WinnowError(f"{where}.domains: domain '{d}' has no rows in the data (domains with rows: {', '.join(sorted(counts))})")
    named = {f"{where}.manual_weights": list(params.manual_weights or {}) if params.method == "manual" else [],
             f"{where}.target": [params.target.removeprefix("domain:")] if params.target.startswith("domain:") else []}
    for key, names in named.items():
        absent = sorted(set(names) - set(counts))
        if absent:
            raise WinnowError(f"{key}: domain(s) {', '.join(absent)} not in the data; data domains: {', '.join(sorted(counts))}")
    if params.method not in LEARNED:
        return
    if params.min_weight * len(counts) > 1:
        raise WinnowError(f"{where}.min_weight = {params.min_weight} x {len(counts)} domains exceeds 1")
    need = len(counts) + 2
    if params.method == "regmix" and params.proxies < need:
        raise WinnowError(f"{where}.proxies = {params.proxies}: the regression over {len(counts)} domains needs at least {need} proxies")
    per_step = PROXY_BATCH * PROXY_SEQ_LEN
    if params.proxy_tokens < per_step:
        raise WinnowError(f"{where}.proxy_tokens = {params.proxy_tokens} is less than one proxy step "
                          f"({PROXY_BATCH} x {PROXY_SEQ_LEN} = {per_step} tokens)")


#: The proxies' batch shape (sequences x tokens): fixed so proxy budgets stay comparable.
PROXY_BATCH, PROXY_SEQ_LEN = 8, 64


def cap_epochs(weights: np.ndarray, pool_bytes: np.ndarray, train_bytes: int, max_epochs: float) -> np.ndarray:
    """Water-fill: cap each domain at ``max_epochs`` passes, giving the excess to uncapped ones.

    If every domain hits its cap, the weights are the caps themselves (renormalised), i.e. the
    budget cannot be met without more repetition and each domain is used ``max_epochs`` times.
    """
    cap = max_epochs * pool_bytes / float(train_bytes)
    w = weights.astype(np.float64).copy()
    capped = np.zeros(len(w), dtype=bool)
    for _ in range(len(w)):
        over = (w > cap) & ~capped
        if not over.any():
            break
        capped |= over
        w[capped] = cap[capped]
        free = ~capped & (w > 0)
        excess = 1.0 - w.sum()
        if not free.any() or excess <= 0:
            break
        w[free] += excess * w[free] / w[free].sum()
    return w / w.sum()


def prepare(corpus: pa.Table, params: Params) -> tuple[DomainStats, pa.Table, np.ndarray]:
    """Check the corpus, template labelled rows, split off the held-out set and chunk both sides.

    Returns the training pool's :class:`DomainStats`, the held-out table and the per-row held-out
    mask. Learned methods call this before any proxy runs, for the prior and the epoch cap.
    """
    _check(corpus)
    ids = corpus["id"].to_pylist()
    texts = corpus["text"].to_pylist()
    domains = corpus["domain"].to_pylist()
    if params.template is not None and "label" in corpus.column_names:
        labels = corpus["label"].cast(pa.string()).to_pylist()
        texts = [t if lab is None else params.template.format(label=lab, text=t) for t, lab in zip(texts, labels)]
    heldout_mask = heldout_split(ids, domains, params)
    domain_names = sorted(set(domains))
    pool = _chunked_table(ids, texts, domains, ~heldout_mask, params.chunk_bytes)
    heldout = _chunked_table(ids, texts, domains, heldout_mask, params.chunk_bytes)
    pool_domains = np.array(pool["domain"].to_pylist(), dtype=object)
    pool_bytes_each = np.array([len(t.encode("utf-8")) for t in pool["text"].to_pylist()], dtype=np.int64)
    doc_count = {d: 0 for d in domain_names}
    for d, h in zip(domains, heldout_mask):
        if not h:
            doc_count[d] += 1
    stats = DomainStats(
        domains=domain_names,
        docs=np.array([doc_count[d] for d in domain_names], dtype=np.int64),
        bytes=np.array([int(pool_bytes_each[pool_domains == d].sum()) for d in domain_names], dtype=np.int64),
        pool=pool,
    )
    return stats, heldout, heldout_mask


def choose_weights(stats: DomainStats, params: Params, learned: pa.Table | None = None) -> np.ndarray:
    """The domain weights of ``params.method`` (learned ones read from ``learned``), epoch cap applied."""
    if params.method in LEARNED:
        weights = _learned(stats, params, learned)
    else:
        weights = np.asarray(WEIGHTING_METHODS[params.method](stats, params), dtype=np.float64)
    if weights.shape != (len(stats.domains),) or not np.isclose(weights.sum(), 1.0) or (weights < 0).any():
        raise WinnowError(f"mixture: method '{params.method}' returned invalid weights {weights.tolist()}")
    if params.max_epochs is not None:
        weights = cap_epochs(weights, stats.bytes, params.train_bytes, params.max_epochs)
    return weights


def run(corpus: pa.Table, params: Params = Params(), weights: pa.Table | None = None) -> StageResult:
    """Split, weight and sample the curated corpus.

    Args:
        corpus: rows with ``id`` (unique string), ``text`` (non-empty string), ``domain`` (string)
            and optionally ``label`` (string, null for unlabelled rows). Other columns are ignored.
        params: see :class:`Params`.
        weights: for a learned method (``regmix``, ``doremi``): the ``data`` table (domain,
            weight) of the regmix / doremi entry the flow computed from proxy runs.

    Returns:
        tables ``data`` (training text: id, part, epoch, text, domain, in a seeded shuffled order),
        ``heldout`` (id, part, text, domain) and ``weights`` (one row per domain, see
        :data:`WEIGHTS_SCHEMA`); metrics with the weights, epochs and byte counts.

    Raises:
        WinnowError: empty table, missing/mistyped column, null or empty text, null domain,
            duplicate id, a ``manual_weights`` problem, or a learned method without its weights.
    """
    stats, heldout, heldout_mask = prepare(corpus, params)
    domains = corpus["domain"].to_pylist()
    domain_names, pool = stats.domains, stats.pool
    pool_domains = np.array(pool["domain"].to_pylist(), dtype=object)
    pool_bytes_each = np.array([len(t.encode("utf-8")) for t in pool["text"].to_pylist()], dtype=np.int64)
    weights = choose_weights(stats, params, weights)

    rng = np.random.default_rng(params.seed)
    picks: list[tuple[int, int]] = []  # (pool row, epoch)
    sampled = np.zeros(len(domain_names), dtype=np.int64)
    for k, d in enumerate(domain_names):
        rows = np.flatnonzero(pool_domains == d)
        target = int(round(weights[k] * params.train_bytes))
        taken, sampled[k] = _sample_domain(rows, pool_bytes_each, target, rng)
        picks.extend(taken)
    order = rng.permutation(len(picks))
    picks = [picks[i] for i in order]
    data = _training_table(pool, picks)

    heldout_domains = np.array(heldout["domain"].to_pylist(), dtype=object)
    heldout_bytes_each = np.array([len(t.encode("utf-8")) for t in heldout["text"].to_pylist()], dtype=np.int64)
    heldout_docs = {d: 0 for d in domain_names}
    for d, h in zip(domains, heldout_mask):
        if h:
            heldout_docs[d] += 1
    epochs = np.where(stats.bytes > 0, sampled / np.maximum(stats.bytes, 1), 0.0)
    weights_table = pa.table(
        {
            "domain": domain_names,
            "docs": stats.docs,
            "bytes": stats.bytes,
            "weight": weights,
            "sampled_bytes": sampled,
            "epochs": epochs,
            "heldout_docs": [heldout_docs[d] for d in domain_names],
            "heldout_bytes": [int(heldout_bytes_each[heldout_domains == d].sum()) for d in domain_names],
        },
        schema=WEIGHTS_SCHEMA,
    )
    metrics = {
        "method": params.method,
        "domains": len(domain_names),
        "rows_in": corpus.num_rows,
        "train_rows": data.num_rows,
        "train_bytes": int(sampled.sum()),
        "heldout_docs": int(heldout_mask.sum()),
        "heldout_rows": heldout.num_rows,
        "heldout_bytes": int(heldout_bytes_each.sum()),
        "weights": {d: round(float(w), 6) for d, w in zip(domain_names, weights)},
        "epochs": {d: round(float(e), 4) for d, e in zip(domain_names, epochs)},
    }
    return StageResult(tables={"data": data, "heldout": heldout, "weights": weights_table}, metrics=metrics)


def heldout_split(ids: list[str], domains: list[str], params: Params) -> np.ndarray:
    """Boolean mask of held-out documents (see the module docstring for the rule)."""
    salt = params.split_salt.encode("utf-8")
    h = np.array([xxhash.xxh64_intdigest(salt + b"\x00" + i.encode("utf-8")) for i in ids], dtype=np.uint64)
    # float64 has 53 bits of mantissa: ample to compare against a fraction.
    u = h.astype(np.float64) / 2.0**64
    mask = u < params.heldout_fraction
    dom = np.array(domains, dtype=object)
    for d in sorted(set(domains)):
        rows = np.flatnonzero(dom == d)
        n = len(rows)
        want = int(mask[rows].sum())
        want = max(want, params.min_heldout_docs)
        if params.max_heldout_docs is not None:
            want = min(want, params.max_heldout_docs)
        want = min(want, n - 1)  # a domain always keeps a document to train on
        by_hash = rows[np.argsort(h[rows], kind="stable")]
        mask[rows] = False
        mask[by_hash[: max(want, 0)]] = True
    return mask


def split_into_chunks(text: str, chunk_bytes: int | None) -> list[str]:
    """Cut ``text`` into parts of at most ``chunk_bytes`` UTF-8 bytes, preferring line ends.

    Joining the parts gives back ``text`` exactly. A line longer than ``chunk_bytes`` is cut at
    character boundaries.
    """
    if chunk_bytes is None or len(text.encode("utf-8")) <= chunk_bytes:
        return [text]
    parts: list[str] = []
    cur: list[str] = []
    cur_bytes = 0
    for line in text.splitlines(keepends=True):
        nb = len(line.encode("utf-8"))
        if cur and cur_bytes + nb > chunk_bytes:
            parts.append("".join(cur))
            cur, cur_bytes = [], 0
        if nb > chunk_bytes:
            piece, piece_bytes = [], 0
            for ch in line:
                cb = len(ch.encode("utf-8"))
                if piece_bytes + cb > chunk_bytes:
                    parts.append("".join(piece))
                    piece, piece_bytes = [], 0
                piece.append(ch)
                piece_bytes += cb
            cur, cur_bytes = piece, piece_bytes
            continue
        cur.append(line)
        cur_bytes += nb
    if cur:
        parts.append("".join(cur))
    return parts


def _check(corpus: pa.Table) -> None:
    check_rows(corpus, "mixture", RowRules(texts="nonempty", columns=("domain",)))
    if "label" in corpus.column_names and not (
        pa.types.is_string(corpus.schema.field("label").type)
        or pa.types.is_large_string(corpus.schema.field("label").type)
        or pa.types.is_null(corpus.schema.field("label").type)
    ):
        raise WinnowError(f"mixture: column 'label' has type {corpus.schema.field('label').type}, expected string")


def _chunked_table(ids: list[str], texts: list[str], domains: list[str], keep: np.ndarray, chunk_bytes: int | None) -> pa.Table:
    out_id, out_part, out_text, out_domain = [], [], [], []
    for i in np.flatnonzero(keep):
        for p, chunk in enumerate(split_into_chunks(texts[i], chunk_bytes)):
            out_id.append(ids[i])
            out_part.append(p)
            out_text.append(chunk)
            out_domain.append(domains[i])
    return pa.table({"id": out_id, "part": out_part, "text": out_text, "domain": out_domain}, schema=HELDOUT_SCHEMA)


def _sample_domain(
    rows: np.ndarray, row_bytes: np.ndarray, target: int, rng: np.random.Generator
) -> tuple[list[tuple[int, int]], int]:
    """Take whole seeded passes over ``rows``, then a seeded prefix, until ``target`` bytes.

    The last row is included only if that lands closer to the target than stopping before it.
    """
    taken: list[tuple[int, int]] = []
    total = 0
    if target <= 0 or len(rows) == 0:
        return taken, 0
    domain_bytes = int(row_bytes[rows].sum())
    epoch = 0
    while total < target:
        perm = rows[rng.permutation(len(rows))]
        if target - total >= domain_bytes:
            taken.extend((int(r), epoch) for r in perm)
            total += domain_bytes
        else:
            for r in perm:
                b = int(row_bytes[r])
                if total + b > target and (total + b - target) > (target - total):
                    break
                taken.append((int(r), epoch))
                total += b
                if total >= target:
                    break
            break
        epoch += 1
    return taken, total


def _training_table(pool: pa.Table, picks: list[tuple[int, int]]) -> pa.Table:
    if not picks:
        return DATA_SCHEMA.empty_table()
    rows = pa.array([r for r, _ in picks], pa.int64())
    taken = pool.take(rows)
    return pa.table(
        {
            "id": taken["id"],
            "part": taken["part"],
            "epoch": pa.array([e for _, e in picks], pa.int32()),
            "text": taken["text"],
            "domain": taken["domain"],
        },
        schema=DATA_SCHEMA,
    )
