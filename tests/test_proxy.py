"""Proxy runs, RegMix and DoReMi: real tiny models on real sample text, cached per proxy, crash-safe batches."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from flows import search
from flows.stagetask import execute, plan_ingest, plan_stage
from storage import DatasetStore
from tasks import doremi, mixture, proxy, regmix
from winnow.cli import main
from winnow.errors import WinnowError

REPO = Path(__file__).resolve().parent.parent
DOMAINS = ("docs", "prose", "web")
#: Small enough that one proxy trains and scores in about a second on one thread.
SMALL = dict(proxies=5, proxy_tokens=1024, proxy_train_bytes=30_000, max_heldout_docs=4, train_bytes=60_000)


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory) -> Path:
    """Three real domains of the bundled sample, 40 documents each, cut to 3 kB."""
    t = pq.read_table(REPO / "data" / "sample" / "corpus.parquet")
    parts = []
    for d in DOMAINS:
        part = t.filter(pc.equal(t["domain"], d)).slice(0, 40)
        parts.append(part.set_column(part.schema.get_field_index("text"), "text", pc.utf8_slice_codeunits(part["text"], 0, 3000)))
    path = tmp_path_factory.mktemp("proxy") / "corpus.parquet"
    pq.write_table(pa.concat_tables(parts), path)
    return path


def _store_with_corpus(root: Path, corpus_path: Path) -> tuple[DatasetStore, str]:
    cols = {"split": None, "id": "id", "text": "text", "domain": "domain", "label": "label"}
    return DatasetStore(root), execute(plan_ingest("corpus", [str(corpus_path)], cols), str(root))


def _proxy_params(**kw) -> proxy.Params:
    base = dict(weights={"docs": 0.5, "prose": 0.3, "web": 0.2}, split={"max_heldout_docs": 4}, train_bytes=30_000,
                max_tokens=1024, eval_docs_per_domain=4)
    return proxy.Params(**{**base, **kw})


def test_proxy_is_deterministic_per_fingerprint_and_scores_every_domain(small_corpus, tmp_path):
    corpus = pq.read_table(small_corpus)
    a = proxy.run(corpus, _proxy_params(), tmp_path / "a")
    b = proxy.run(corpus, _proxy_params(), tmp_path / "b")
    c = proxy.run(corpus, _proxy_params(seed=1), tmp_path / "c")
    assert a.tables["data"]["domain"].to_pylist() == list(DOMAINS)
    assert a.tables["data"].equals(b.tables["data"])  # same params, same bits/byte
    assert a.tables["data"]["bits_per_byte"].to_pylist() != c.tables["data"]["bits_per_byte"].to_pylist()
    assert all(2 < v < 9 for v in a.tables["data"]["bits_per_byte"].to_pylist())  # a barely-trained byte-level model
    assert not any((tmp_path / "a").iterdir()), "tokens and model are scratch unless keep_model"


@pytest.mark.parametrize("kw, message", [
    (dict(weights={"docs": 0.5, "prose": 0.3, "web": 0.3}), "weights sum to 1.1"),
    (dict(weights={"docs": 1.2, "prose": -0.2, "web": 0.0}), "weight of domain 'prose'"),
    (dict(max_tokens=100), "less than one step"),
    (dict(split={"salt": "x"}), "unknown key(s) salt"),
])
def test_proxy_params_refuse_bad_weights_and_budgets(kw, message):
    with pytest.raises(WinnowError, match=message.replace("(", r"\(").replace(")", r"\)")):
        _proxy_params(**kw)


def test_proxy_weights_must_cover_exactly_the_data_domains(small_corpus, tmp_path):
    corpus = pq.read_table(small_corpus)
    with pytest.raises(WinnowError, match="domain\\(s\\) legal not in the data"):
        proxy.run(corpus, _proxy_params(weights={"docs": 0.5, "prose": 0.3, "legal": 0.2}), tmp_path)
    with pytest.raises(WinnowError, match="no weight for domain\\(s\\) web"):
        proxy.run(corpus, _proxy_params(weights={"docs": 0.5, "prose": 0.5}), tmp_path)


def _synthetic_proxies(n: int, optimum: np.ndarray, seed: int = 0) -> dict[str, pa.Table]:
    """Proxy results whose per-domain loss is a bowl around ``optimum`` (known answer)."""
    draws = regmix.draw_mixtures(dict(zip(DOMAINS, [1 / 3] * 3)), n, seed)
    out = {}
    for i, w in enumerate(draws):
        x = np.array([w[d] for d in DOMAINS])
        loss = 3.0 + 4.0 * (x - optimum) ** 2 + 0.5 * ((x - optimum) ** 2).sum()
        out[f"proxy_{i:03d}"] = pa.table({"domain": list(DOMAINS), "weight": x, "bits_per_byte": loss,
                                          "heldout_bytes": [1000] * 3}, schema=proxy.RESULT_SCHEMA)
    return out


def test_regmix_finds_a_known_optimum_and_keeps_the_fitted_regression():
    optimum = np.array([0.5, 0.3, 0.2])
    result = regmix.run(regmix.Params(target="mean", prior=dict(zip(DOMAINS, [1 / 3] * 3))), **_synthetic_proxies(40, optimum))
    w = np.array(result.tables["data"]["weight"].to_pylist())
    assert np.isclose(w.sum(), 1.0)
    assert np.abs(w - optimum).max() < 0.08, w
    fit = result.tables["fit"].to_pylist()
    assert {r["model"] for r in fit} == {"linear", "lightgbm"} and sum(r["chosen"] for r in fit) == 1
    chosen = next(r for r in fit if r["chosen"])
    assert chosen["cv_mae"] == min(r["cv_mae"] for r in fit)  # auto keeps the better held-out predictor
    assert result.tables["models"].num_rows == 3 and all(result.tables["models"]["fitted"].to_pylist())


@pytest.mark.parametrize("kind", ["linear", "lightgbm"])
def test_regmix_predict_reads_the_stored_regression_back(kind):
    proxies = _synthetic_proxies(24, np.array([0.5, 0.3, 0.2]))
    result = regmix.run(regmix.Params(target="mean", regression=kind), **proxies)
    chosen = dict(zip(DOMAINS, result.tables["data"]["weight"].to_pylist()))
    predicted = regmix.predict(result.tables["models"], chosen)
    assert list(predicted.values()) == pytest.approx(result.tables["data"]["predicted_bits_per_byte"].to_pylist(), abs=1e-9)
    far = regmix.predict(result.tables["models"], {"docs": 0.05, "prose": 0.05, "web": 0.9})
    assert np.mean(list(far.values())) > np.mean(list(predicted.values()))  # the optimum is predicted better
    with pytest.raises(WinnowError, match="no weight for domain"):
        regmix.predict(result.tables["models"], {"docs": 1.0})


def test_regmix_benchmark_target_fits_the_proxies_benchmark_scores():
    proxies = _synthetic_proxies(24, np.array([1 / 3] * 3))
    # A benchmark whose gold answers get easier the more "web" a proxy read: the optimum is web-heavy,
    # although the domains' own losses favour the balanced mixture.
    benches = {f"bench_{n}": pa.table({"benchmark": ["quiz"], "bits_per_byte": [5.0 - 2.0 * t["weight"].to_pylist()[2]],
                                       "items": [10]}, schema=proxy.BENCHMARK_RESULT_SCHEMA) for n, t in proxies.items()}
    result = regmix.run(regmix.Params(target="benchmark:quiz", regression="linear"), **proxies, **benches)
    w = dict(zip(DOMAINS, result.tables["data"]["weight"].to_pylist()))
    assert w["web"] > 0.6, w
    assert result.tables["models"]["domain"].to_pylist() == [*DOMAINS, "benchmark:quiz"]
    assert regmix.predict(result.tables["models"], w)["benchmark:quiz"] == pytest.approx(5.0 - 2.0 * w["web"], abs=0.05)
    with pytest.raises(WinnowError, match="no such benchmark"):
        regmix.run(regmix.Params(target="benchmark:mmlu"), **proxies, **benches)
    with pytest.raises(WinnowError, match="no benchmarks table for proxy"):
        regmix.run(regmix.Params(target="benchmark:quiz"), **proxies, **dict(list(benches.items())[1:]))
    with pytest.raises(ValueError, match="benchmark:NAME"):
        mixture.Params(method="regmix", target="benchmark:")


def test_regmix_respects_the_minimum_weight_and_the_epoch_cap():
    optimum = np.array([0.9, 0.05, 0.05])
    params = regmix.Params(target="mean", prior=dict(zip(DOMAINS, [1 / 3] * 3)), min_weight=0.1, max_epochs=2.0,
                           pool_bytes={"docs": 50_000, "prose": 500_000, "web": 500_000}, train_bytes=200_000)
    w = dict(zip(DOMAINS, regmix.run(params, **_synthetic_proxies(24, optimum)).tables["data"]["weight"].to_pylist()))
    assert min(w.values()) >= 0.1 - 1e-9
    assert w["docs"] * 200_000 <= 2.0 * 50_000 + 1e-6  # at most 2 passes over the small domain


def test_regmix_targets_worst_and_named_domain():
    proxies = _synthetic_proxies(20, np.array([0.6, 0.2, 0.2]))
    for target in ("worst", "domain:web"):
        result = regmix.run(regmix.Params(target=target), **proxies)
        assert result.metrics["target"] == target and np.isclose(sum(result.tables["data"]["weight"].to_pylist()), 1)
    with pytest.raises(WinnowError, match="3 proxies, but 3 domains need at least 5"):
        regmix.run(regmix.Params(), **dict(list(proxies.items())[:3]))


@pytest.mark.parametrize("overrides, message", [
    (dict(proxies=4), "needs at least 5 proxies"),
    (dict(proxy_tokens=256), "less than one proxy step"),
    (dict(target="domain:legal"), "mixture.target: domain(s) legal not in the data"),
    (dict(domains=("docs", "code")), "domain 'code' has no rows"),
    (dict(min_weight=0.4), "min_weight = 0.4 x 3 domains exceeds 1"),
])
def test_bad_search_settings_fail_before_any_proxy_runs(small_corpus, tmp_path, overrides, message):
    store, corpus = _store_with_corpus(tmp_path / "store", small_corpus)
    params = mixture.Params(method="regmix", **{**SMALL, **overrides})
    with pytest.raises(WinnowError, match=message.replace("(", r"\(").replace(")", r"\)")):
        search.learned_weights(store, corpus, params, search.run_in_turn(store))
    assert [m.stage for m in store.entries()] == ["ingest_corpus"], "nothing but the ingest was written"


def test_learned_method_without_its_weights_is_refused(small_corpus):
    with pytest.raises(WinnowError, match="learns its weights from proxy runs"):
        mixture.run(pq.read_table(small_corpus), mixture.Params(method="regmix", **SMALL))


_BATCH_SCRIPT = """
import sys
from flows import search
from storage import DatasetStore
from tasks import mixture
store = DatasetStore(sys.argv[1])
params = mixture.Params(method="regmix", **{small})
search.learned_weights(store, sys.argv[2], params, search.run_in_turn(store))
"""


def _proxy_entries(store: DatasetStore) -> set[str]:
    return {m.fingerprint for m in store.entries() if m.stage == "proxy"}


def test_a_killed_proxy_batch_reruns_only_the_missing_proxies(small_corpus, tmp_path):
    store, corpus = _store_with_corpus(tmp_path / "store", small_corpus)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    child = subprocess.Popen([sys.executable, "-c", _BATCH_SCRIPT.format(small=SMALL), str(store.root), corpus],
                             env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while len(_proxy_entries(store)) < 2 and child.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    child.send_signal(signal.SIGKILL)
    child.wait()
    done = _proxy_entries(store)
    assert 2 <= len(done) < SMALL["proxies"], "killed mid-batch"
    computed_before = len([e for e in store.journal_events() if e["event"] == "computed"])
    fit = search.learned_weights(store, corpus, mixture.Params(method="regmix", **SMALL), search.run_in_turn(store))
    events = [e for e in store.journal_events() if e["event"] == "computed"][computed_before:]
    assert sorted(e["stage"] for e in events) == ["proxy"] * (SMALL["proxies"] - len(done)) + ["regmix"]
    assert len(_proxy_entries(store)) == SMALL["proxies"]
    assert store.manifest(fit).metrics["proxies"] == SMALL["proxies"]
    # Asking again (or with a larger batch) computes nothing already there.
    again = search.learned_weights(store, corpus, mixture.Params(method="regmix", **SMALL), search.run_in_turn(store))
    assert again == fit
    assert len([e for e in store.journal_events() if e["event"] == "computed"]) == computed_before + len(events)


def test_cli_mixture_regmix_writes_the_learned_weights(small_corpus, tmp_path, capsys):
    out = tmp_path / "mix.parquet"
    sets = [f"--set=mixture.{k}={v}" for k, v in SMALL.items()]
    code = main(["mixture", str(small_corpus), "--out", str(out), "--method", "regmix", "--store", str(tmp_path / "s"), *sets])
    assert code == 0, capsys.readouterr().err
    weights = pq.read_table(tmp_path / "mix.weights.parquet")
    store = DatasetStore(tmp_path / "s")
    (fit,) = [m for m in store.entries() if m.stage == "regmix"]
    learned = dict(zip(*store.table(fit.fingerprint).select(["domain", "weight"]).to_pydict().values()))
    assert dict(zip(weights["domain"].to_pylist(), weights["weight"].to_pylist())) == pytest.approx(learned)
    assert len([m for m in store.entries() if m.stage == "proxy"]) == SMALL["proxies"]
    assert pq.read_table(out).num_rows > 0


def test_cli_bad_search_setting_exits_2_before_any_proxy(small_corpus, tmp_path, capsys):
    sets = [f"--set=mixture.{k}={v}" for k, v in {**SMALL, "proxies": 3}.items()]
    code = main(["mixture", str(small_corpus), "--out", str(tmp_path / "m.parquet"), "--method", "regmix",
                 "--store", str(tmp_path / "s"), *sets])
    assert code == 2
    assert "needs at least 5 proxies" in capsys.readouterr().err
    assert not (tmp_path / "s").exists() or not [m for m in DatasetStore(tmp_path / "s").entries()]


def test_cli_mixture_benchmark_target_scores_the_given_benchmark_file(small_corpus, tmp_path, capsys):
    bench = REPO / "data" / "sample" / "benchmarks.parquet"
    sets = [f"--set=mixture.{k}={v}" for k, v in SMALL.items()]
    out, store_dir = tmp_path / "mix.parquet", tmp_path / "s"
    base = ["mixture", str(small_corpus), "--out", str(out), "--store", str(store_dir), *sets]
    # Refusals first, each before anything is written: a --benchmark nothing would read, a
    # benchmark absent from the file, a benchmark target for DoReMi.
    for extra, message in (
            (["--method", "regmix", "--benchmark", str(bench)], "--benchmark: mixture reads benchmark items only for a benchmark target"),
            (["--method", "regmix", "--set", "mixture.target=benchmark:nope", "--benchmark", str(bench)],
             f"benchmark 'nope' not in the benchmark items of {bench} (humaneval, mmlu, quiz, socialiqa)"),
            (["--method", "doremi", "--set", "mixture.target=benchmark:quiz", "--benchmark", str(bench)],
             "a benchmark target is RegMix's")):
        assert main([*base, *extra]) == 2
        assert message in capsys.readouterr().err
        assert not store_dir.exists() or not DatasetStore(store_dir).entries()
    code = main([*base, "--method", "regmix", "--set", "mixture.target=benchmark:quiz", "--set", "mixture.proxies=5",
                 "--benchmark", str(bench)])
    assert code == 0, capsys.readouterr().err
    store = DatasetStore(store_dir)
    (fit,) = [m for m in store.entries() if m.stage == "regmix"]
    assert fit.metrics["target"] == "benchmark:quiz"
    benches = [ref for name, ref in fit.parents.items() if name.startswith(regmix.BENCH_KEY)]
    assert len(benches) == SMALL["proxies"] and all(store.manifest(ref).stage == "proxy" for ref in benches)
    assert store.table(benches[0], "benchmarks")["benchmark"].to_pylist() == ["quiz"]


def test_doremi_weights_come_from_a_reference_proxy_and_are_deterministic(small_corpus, tmp_path):
    store, corpus = _store_with_corpus(tmp_path / "store", small_corpus)
    params = mixture.Params(method="doremi", **SMALL)
    fit = search.learned_weights(store, corpus, params, search.run_in_turn(store))
    m = store.manifest(fit)
    assert m.stage == "doremi" and store.manifest(m.parents["reference"]).stage == "proxy"
    w = store.table(fit)["weight"].to_pylist()
    assert np.isclose(sum(w), 1.0) and len(w) == 3
    # The same fingerprint recomputed from scratch names the same weights.
    again = doremi.run(store.table(corpus), store.files_dir(m.parents["reference"]), doremi.Params(**m.params))
    assert again.tables["data"]["weight"].to_pylist() == w


@pytest.mark.usefixtures("prefect_server")
def test_flow_runs_each_proxy_as_a_cached_task_and_mixes_with_the_learned_weights(small_corpus, tmp_path, capsys):
    store = tmp_path / "store"
    sets = [f"--set=mixture.{k}={v}" for k, v in SMALL.items()]
    argv = ["run", "--profile", "smoke", "--store", str(store), "--set", f"inputs.corpus={json.dumps(str(small_corpus))}",
            "--set", "mixture.method=regmix", *sets, "--only", "mixture", "--json"]
    assert main(argv) == 0, capsys.readouterr().err
    summary = json.loads(capsys.readouterr().out)
    s = DatasetStore(store)
    assert {"regmix", "mixture"} <= set(summary["outputs"])
    fit = summary["outputs"]["regmix"]
    assert s.manifest(summary["outputs"]["mixture"]).parents["weights"] == fit
    learned = s.table(fit)["weight"].to_pylist()
    assert s.table(summary["outputs"]["mixture"], "weights")["weight"].to_pylist() == pytest.approx(learned)
    proxies = {m.fingerprint for m in s.entries() if m.stage == "proxy"}
    assert len(proxies) == SMALL["proxies"] and set(s.manifest(fit).parents.values()) == proxies
    # A second run with one more proxy computes exactly one new proxy and a new fit.
    before = len(s.journal_events())
    argv[argv.index("--set=mixture.proxies=5")] = "--set=mixture.proxies=6"
    assert main(argv) == 0, capsys.readouterr().err
    capsys.readouterr()
    new = [e["stage"] for e in s.journal_events()[before:] if e["event"] == "computed"]
    assert sorted(new) == ["mixture", "proxy", "regmix"]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def dask_cluster(tmp_path):
    """A real local Dask cluster: `dask scheduler` and two `dask worker` processes on 127.0.0.1."""
    pytest.importorskip("prefect_dask")
    dask = Path(sys.executable).parent / "dask"
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    procs = [subprocess.Popen([str(dask), "scheduler", "--host", "127.0.0.1", "--port", str(port),
                               "--dashboard-address", "127.0.0.1:0"], env=env, cwd=tmp_path,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    address = f"tcp://127.0.0.1:{port}"
    try:
        for _ in range(2):
            procs.append(subprocess.Popen([str(dask), "worker", address, "--nthreads", "1", "--nworkers", "1",
                                           "--host", "127.0.0.1", "--dashboard-address", "127.0.0.1:0",
                                           "--local-directory", str(tmp_path)], env=env, cwd=tmp_path,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        from distributed import Client

        with Client(address, timeout=60) as client:
            client.wait_for_workers(2, timeout=120)
        yield address
    finally:
        for p in reversed(procs):
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_server")
def test_proxies_run_on_a_real_dask_cluster_and_a_rerun_computes_only_the_missing_ones(small_corpus, tmp_path, capsys,
                                                                                      dask_cluster):
    store = tmp_path / "store"
    sets = [f"--set=mixture.{k}={v}" for k, v in SMALL.items()]
    argv = ["run", "--profile", "smoke", "--store", str(store), "--set", f"inputs.corpus={json.dumps(str(small_corpus))}",
            "--set", "mixture.method=regmix", *sets, "--set", "run.task_runner=dask",
            "--set", f"run.runner_address={json.dumps(dask_cluster)}", "--only", "mixture", "--json"]
    assert main(argv) == 0, capsys.readouterr().err
    summary = json.loads(capsys.readouterr().out)
    s = DatasetStore(store)
    proxies = [e for e in s.journal_events() if e["event"] == "computed" and e["stage"] == "proxy"]
    assert len(proxies) == SMALL["proxies"]
    assert os.getpid() not in {e["pid"] for e in proxies}  # computed by the Dask workers, not in this process
    fit = summary["outputs"]["regmix"]
    assert set(s.manifest(fit).parents.values()) == {e["fingerprint"] for e in proxies}
    before = len(s.journal_events())
    argv[argv.index("--set=mixture.proxies=5")] = "--set=mixture.proxies=7"
    assert main(argv) == 0, capsys.readouterr().err
    capsys.readouterr()
    new = [e["stage"] for e in s.journal_events()[before:] if e["event"] == "computed"]
    assert sorted(new) == ["mixture", "proxy", "proxy", "regmix"]  # the 5 cached proxies are not recomputed


def test_a_proxy_scores_the_dev_half_of_its_target_benchmark_and_bad_targets_fail_first(small_corpus, tmp_path):
    from winnow.config import benchmark_columns

    store, corpus = _store_with_corpus(tmp_path / "store", small_corpus)
    bench = execute(plan_ingest("benchmarks", [str(REPO / "data" / "sample" / "benchmarks.parquet")],
                                benchmark_columns(None)), str(store.root))
    items = store.table(bench)
    out = proxy.run(pq.read_table(small_corpus), _proxy_params(benchmarks=("quiz",), benchmark_items=6), tmp_path / "p",
                    benchmarks=items)
    table = out.tables["benchmarks"]
    assert table["benchmark"].to_pylist() == ["quiz"] and table["items"].to_pylist() == [6]
    assert 0 < table["bits_per_byte"][0].as_py() < 20
    for target, message in (("benchmark:nope", "benchmark 'nope' not in the benchmark items"),):
        with pytest.raises(WinnowError, match=message):
            search.learned_weights(store, corpus, mixture.Params(method="regmix", target=target, **SMALL),
                                   search.run_in_turn(store), bench)
    with pytest.raises(WinnowError, match="no benchmark items were given"):
        search.learned_weights(store, corpus, mixture.Params(method="regmix", target="benchmark:quiz", **SMALL),
                               search.run_in_turn(store))
    with pytest.raises(WinnowError, match="a benchmark target is RegMix's"):
        search.learned_weights(store, corpus, mixture.Params(method="doremi", target="benchmark:quiz", **SMALL),
                               search.run_in_turn(store), bench)
    assert not [m for m in store.entries() if m.stage == "proxy"]  # every refusal came before any proxy ran
