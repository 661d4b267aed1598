"""Crash, then rerun: kill -9 the smoke pipeline at random moments and check every rerun.

    python -m benchmarks.bench_crash                       # 20 kills (3 of them the server) + 8 concurrent runs
    python -m benchmarks.bench_crash --trials 4 --concurrent 2   # a quick look

What it does, all against one Prefect server it starts on 127.0.0.1 (its own PREFECT_HOME):

1. One uninterrupted `winnow run --profile smoke` on an empty store: its fingerprints are the truth
   and its wall time T spreads the kills.
2. ``--trials`` kills, spread over every stage: trial i targets stage i mod n (``startup`` = before
   the first entry, then each stage in order). It starts the same run on an empty store, waits
   until the journal shows the target's predecessor committed, sleeps a uniform fraction of the
   target's duration in the uninterrupted run, and sends SIGKILL to the run's whole process group,
   or (``--server-kills`` trials, spread over the stages too) to the Prefect server, which is then
   restarted. Right after the kill every entry in the store must be complete (a manifest and sound
   digests: `store verify`), then a rerun must finish within ``--timeout`` with every fingerprint
   equal to the uninterrupted run's. The stage actually hit is read back from the journal.
3. ``--concurrent`` runs started at once on one empty store: all must complete with the same
   fingerprints, and the store's journal must show each entry computed exactly once.

Results print as a table and go to ``benchmarks/out/crash.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from storage import DatasetStore
from winnow.config import STAGES

REPO = Path(__file__).resolve().parents[1]
ORDER = ["ingest_corpus", "ingest_benchmarks", *STAGES]


class Server:
    """A Prefect server on a free loopback port, restartable after a kill."""

    def __init__(self, home: Path) -> None:
        self.home = home
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.proc: subprocess.Popen | None = None

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "PREFECT_HOME": str(self.home), "PREFECT_API_URL": f"http://127.0.0.1:{self.port}/api",
                "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}

    def start(self) -> None:
        prefect = Path(sys.executable).with_name("prefect")
        self.proc = subprocess.Popen([str(prefect), "server", "start", "--host", "127.0.0.1", "--port", str(self.port)],
                                     env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
        import urllib.request

        for _ in range(240):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/api/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        raise RuntimeError("Prefect server did not start")

    def kill(self) -> None:
        if self.proc is not None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            self.proc = None


def start_run(server: Server, store: Path, log: Path) -> subprocess.Popen:
    """`winnow run --profile smoke` in its own process group (so one killpg takes all of it)."""
    winnow = Path(sys.executable).with_name("winnow")
    with open(log, "w") as f:
        return subprocess.Popen([str(winnow), "run", "--profile", "smoke", "--store", str(store), "--json"],
                                env=server.env, stdout=f, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True)


def outputs_of(log: Path) -> dict[str, str] | None:
    """The run summary's fingerprints from a finished run's log (None if it printed none)."""
    text = log.read_text(errors="replace")
    start = text.find("{\n")
    try:
        return json.loads(text[start:])["outputs"] if start >= 0 else None
    except (ValueError, KeyError):
        return None


def run_to_end(server: Server, store: Path, log: Path, timeout: float) -> tuple[int | None, float]:
    """Run the pipeline and wait; (return code or None if it had to be killed at the timeout, seconds)."""
    t0 = time.perf_counter()
    proc = start_run(server, store, log)
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        rc = None
    return rc, time.perf_counter() - t0


def store_state(store: Path) -> dict[str, int | str]:
    """What a kill left: entries, damaged/partial ones, staging folders, and the stage it hit."""
    s = DatasetStore(store)
    folders = [p for p in s.objects.iterdir()] if s.objects.is_dir() else []
    partial = sum(not (p / "manifest.json").is_file() or bool(s.verify(p.name)) for p in folders)
    done = {e["stage"] for e in s.journal_events() if e["event"] == "computed"}
    running = next((st for st in ORDER if st not in done and st != "embed"), "finished")
    staging = len(list(s.staging.iterdir())) if s.staging.is_dir() else 0
    return {"entries": len(folders), "partial": partial, "staging_left": staging, "stage_at_kill": running}


def stage_plan(store: Path) -> list[tuple[str, str | None, float]]:
    """(target, predecessor, seconds) for each kill target, from the uninterrupted run's journal."""
    events = [e for e in DatasetStore(store).journal_events() if e["event"] == "computed"]
    plan: list[tuple[str, str | None, float]] = [("startup", None, 4.0)]
    for prev, cur in zip(events, events[1:]):
        if not cur["stage"].startswith("ingest"):
            plan.append((cur["stage"], prev["stage"], float(cur["seconds"])))
    return plan


def trial(i: int, args: argparse.Namespace, server: Server, truth: dict[str, str], targets: list,
          work: Path, rng: random.Random) -> dict:
    """One kill and its rerun."""
    store, log = work / f"trial{i}", work / f"trial{i}.log"
    target, after, seconds = targets[i % len(targets)]
    kill_server = i >= args.trials - args.server_kills  # consecutive trials: different stages
    proc = start_run(server, store, log)
    t0 = time.monotonic()
    while after is not None and proc.poll() is None and after not in _committed(store):
        time.sleep(0.05)
    time.sleep(rng.random() * seconds)
    at = time.monotonic() - t0
    exited_first = proc.poll() is not None
    original = "killed"
    if kill_server:
        # An operator (or systemd) restarts the server; the orphaned run either finishes against
        # the new one or fails, within the timeout, or it counts as hung and is killed.
        server.kill()
        server.start()
        try:
            original = "exit %d" % proc.wait(timeout=args.timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            original = "hung"
    elif not exited_first:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    state = store_state(store) if store.exists() else {"entries": 0, "partial": 0, "staging_left": 0,
                                                         "stage_at_kill": "ingest_corpus"}
    rc, rerun_s = run_to_end(server, store, work / f"trial{i}.rerun.log", args.timeout)
    same = outputs_of(work / f"trial{i}.rerun.log") == truth
    return {"trial": i, "target": target, "killed": "server" if kill_server else "run", "at_s": round(at, 1),
            "exited_before_kill": exited_first, "killed_run": original, **state, "rerun_rc": rc, "rerun_s": round(rerun_s, 1),
            "hung": rc is None, "same_fingerprints": same}


def _committed(store: Path) -> set[str]:
    return {e["stage"] for e in DatasetStore(store).journal_events() if e["event"] == "computed"} if store.exists() else set()


def concurrent(n: int, server: Server, truth: dict[str, str], work: Path, timeout: float) -> dict:
    """``n`` runs at once on one store: completions, equal fingerprints, entries computed twice."""
    store = work / "concurrent"
    t0 = time.perf_counter()
    procs = [start_run(server, store, work / f"conc{k}.log") for k in range(n)]
    rcs = []
    for p in procs:
        try:
            rcs.append(p.wait(timeout=max(1.0, timeout - (time.perf_counter() - t0))))
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            rcs.append(None)
    computed = Counter(e["fingerprint"] for e in DatasetStore(store).journal_events() if e["event"] == "computed")
    waited = sum(e["event"] == "reused_after_wait" for e in DatasetStore(store).journal_events())
    return {"runs": n, "completed": sum(rc == 0 for rc in rcs), "hung": sum(rc is None for rc in rcs),
            "same_fingerprints": sum(outputs_of(work / f"conc{k}.log") == truth for k in range(n)),
            "entries": len(computed), "computed_more_than_once": sum(c > 1 for c in computed.values()),
            "reused_after_waiting": waited, "wall_s": round(time.perf_counter() - t0, 1)}


def summary(trials: list[dict]) -> dict:
    return {
        "trials": len(trials),
        "reruns_completed": sum(t["rerun_rc"] == 0 for t in trials),
        "reruns_hung": sum(t["hung"] for t in trials),
        "same_fingerprints": sum(t["same_fingerprints"] for t in trials),
        "partial_entries_seen": sum(t["partial"] for t in trials),
        "median_rerun_s": round(statistics.median(t["rerun_s"] for t in trials), 1) if trials else None,
        "stages_hit": dict(Counter(t["stage_at_kill"] for t in trials)),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--server-kills", type=int, default=3)
    ap.add_argument("--concurrent", type=int, default=8)
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds a rerun may take before it counts as hung")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "out" / "crash.json"))
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="winnow-crash-"))
    server = Server(work / "prefect-home")
    server.start()
    try:
        rc, t_clean = run_to_end(server, work / "clean", work / "clean.log", args.timeout)
        truth = outputs_of(work / "clean.log")
        if rc != 0 or truth is None:
            sys.exit(f"the uninterrupted run failed; see {work / 'clean.log'}")
        print(f"uninterrupted run: {t_clean:.1f} s, {len(truth)} entries", flush=True)
        rng = random.Random(args.seed)
        targets = stage_plan(work / "clean")
        trials = []
        for i in range(args.trials):
            trials.append(trial(i, args, server, truth, targets, work, rng))
            print(json.dumps(trials[-1]), flush=True)
        conc = concurrent(args.concurrent, server, truth, work, args.timeout) if args.concurrent else None
    finally:
        server.kill()
    result = {"clean_run_s": round(t_clean, 1), "load_avg": os.getloadavg(), "summary": summary(trials),
              "concurrent": conc, "trials": trials}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k != "trials"}, indent=2))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
