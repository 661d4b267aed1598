"""Model shapes for the train stage: named presets, a user's ``transformers`` config, or a pretrained init.

Every shape is a plain ``transformers`` model (``LlamaForCausalLM`` or ``GPT2LMHeadModel``), so a
trained entry loads with ``AutoModelForCausalLM.from_pretrained`` anywhere. Presets fix the
architecture and shape; the vocabulary comes from the tokenizer (padded to a multiple of 64 for
SIMD / tensor-core friendly matmuls), so one preset serves any tokenizer.

=============  =====  ===  ======  =====  =======  ==============================================
preset         arch   d    layers  heads  context  parameters (4k BPE / GPT-2 50k vocab)
=============  =====  ===  ======  =====  =======  ==============================================
``tiny``       llama  256  4       4      256      4.3M: the CPU default, minutes on 2 cores
``25m``        llama  512  6       8      512      23M with an 8k BPE
``gpt2-124m``  gpt2   768  12      12     1024     124M with GPT-2's vocabulary (GPT-2 small)
``llama-150m`` llama  768  16      12     1024     151M with a 49k vocabulary (SmolLM2's)
=============  =====  ===  ======  =====  =======  ==============================================
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from storage import file_fingerprint
from tasks.pretrained import MODEL_LOCK
from winnow.errors import WinnowError

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedModel


@dataclass(frozen=True)
class Shape:
    """A model shape: architecture and sizes; the vocabulary is the tokenizer's."""

    architecture: str  # "llama" or "gpt2"
    d_model: int
    n_layers: int
    n_heads: int
    context: int  # max positions (also the default training seq_len)


PRESETS: dict[str, Shape] = {
    "tiny": Shape("llama", 256, 4, 4, 256),
    "25m": Shape("llama", 512, 6, 8, 512),
    "gpt2-124m": Shape("gpt2", 768, 12, 12, 1024),
    "llama-150m": Shape("llama", 768, 16, 12, 1024),
}
ARCHITECTURES = ("llama", "gpt2")
#: model_type values a user's config may name: the causal LMs whose training this loop supports.
SUPPORTED_MODEL_TYPES = ("llama", "gpt2", "mistral", "qwen2", "gpt_neox", "phi", "phi3", "gemma", "olmo")


def padded_vocab(n: int) -> int:
    """Vocabulary rows for ``n`` tokens, rounded up to a multiple of 64."""
    return math.ceil(n / 64) * 64


def preset_config(shape: Shape, vocab: int, eos: int) -> "PretrainedConfig":
    """A ``transformers`` config for ``shape`` with ``vocab`` rows, tied embeddings, no dropout."""
    from transformers import GPT2Config, LlamaConfig

    if shape.d_model % shape.n_heads:
        raise WinnowError(f"train: d_model ({shape.d_model}) must be divisible by n_heads ({shape.n_heads})")
    ids = dict(bos_token_id=eos, eos_token_id=eos, pad_token_id=eos, tie_word_embeddings=True)
    if shape.architecture == "llama":
        return LlamaConfig(
            vocab_size=vocab, hidden_size=shape.d_model,
            # SwiGLU's 8/3·d keeps the FFN parameter count of a 4·d MLP; rounded up to 64.
            intermediate_size=math.ceil(8 * shape.d_model / 3 / 64) * 64,
            num_hidden_layers=shape.n_layers, num_attention_heads=shape.n_heads,
            num_key_value_heads=shape.n_heads, max_position_embeddings=shape.context, **ids,
        )
    if shape.architecture == "gpt2":
        return GPT2Config(
            vocab_size=vocab, n_positions=shape.context, n_embd=shape.d_model, n_layer=shape.n_layers,
            n_head=shape.n_heads, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **ids,
        )
    raise WinnowError(f"train.architecture: unknown architecture {shape.architecture!r}; use {', '.join(ARCHITECTURES)}")


def read_user_config(path: str) -> dict[str, Any]:
    """A user's ``config.json`` (train.model_config), checked: JSON, a supported ``model_type``."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise WinnowError(f"train.model_config: {path} is not a file")
    try:
        values = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise WinnowError(f"train.model_config: {path} is not valid JSON ({e})") from None
    model_type = values.get("model_type") if isinstance(values, dict) else None
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise WinnowError(f"train.model_config: {path}: model_type {model_type!r} is not one of {', '.join(SUPPORTED_MODEL_TYPES)}")
    return values


def user_config(path: str, vocab: int, eos: int) -> "PretrainedConfig":
    """The user's config with the vocabulary and special ids set to the tokenizer's."""
    from transformers import AutoConfig

    values = read_user_config(path)
    values = {**values, "vocab_size": vocab, "bos_token_id": eos, "eos_token_id": eos, "pad_token_id": eos}
    model_type = values.pop("model_type")
    try:
        return AutoConfig.for_model(model_type, **values)
    except (TypeError, ValueError) as e:
        raise WinnowError(f"train.model_config: {path} does not build a {model_type} config ({e})") from None


def context_of(config: "PretrainedConfig | dict[str, Any]") -> int | None:
    """The positions a model config allows (``max_position_embeddings`` or GPT-2's ``n_positions``)."""
    get = config.get if isinstance(config, dict) else lambda k: getattr(config, k, None)
    return get("max_position_embeddings") or get("n_positions")


def build(config: "PretrainedConfig", seed: int, attn_implementation: str) -> "PreTrainedModel":
    """A freshly initialised causal LM from ``config``, seeded."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoModelForCausalLM

    try:
        with MODEL_LOCK:  # the seed and the init it drives, with no other thread's draws in between
            torch.manual_seed(seed)
            return AutoModelForCausalLM.from_config(config, attn_implementation=attn_implementation)
    except ValueError as e:  # e.g. an architecture without SDPA support
        raise WinnowError(f"train: cannot build a {config.model_type} model ({str(e).splitlines()[0]})") from None


def config_identity(path: str) -> str:
    """Content hash of a user's config file, for the fingerprint (the path alone could be edited)."""
    file = Path(path).expanduser().resolve()
    return "config:" + file_fingerprint([file], file.parent)
