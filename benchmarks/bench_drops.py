"""Nightly on growing input: the run after one new daily file against a full run on the same files.

Run from the repository root::

    python -m benchmarks.bench_drops                 # the bundled sample as 10 daily files, up to contamination
    python -m benchmarks.bench_drops --smoke         # 3 small days (156 rows) with MiniLM, up to label_noise

The sample's rows are cut into ``--days`` JSON Lines files in their stored order. A store gets a
run over all days but the last (not timed); then the last day is added and ``winnow run`` is
timed (**nightly**). The same command on a fresh store over all days is the **full** run. Both are
real CLI processes with the smoke profile, each starting its own throwaway Prefect server, stopped
after ``--only STAGE`` (which recomputes that stage in both). Reported: wall time of each command,
the seconds every computed entry took by stage (from the store's journal), and which stages ran.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "sample" / "corpus.parquet"


def write_days(folder: Path, rows: list[dict], days: int) -> list[Path]:
    """``rows`` as ``days`` consecutive JSON Lines files named by date."""
    folder.mkdir(parents=True, exist_ok=True)
    size = -(-len(rows) // days)
    paths = []
    for k in range(days):
        path = folder / f"2026-11-{k + 1:02d}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows[k * size:(k + 1) * size]))
        paths.append(path)
    return paths


def run(store: Path, corpus: Path, extra: list[str]) -> tuple[float, dict[str, float]]:
    """One `winnow run`; its wall seconds and the seconds of the entries it computed, by stage."""
    before = len((store / "journal.jsonl").read_text().splitlines()) if (store / "journal.jsonl").is_file() else 0
    cmd = [sys.executable, "-m", "winnow.cli", "run", "--profile", "smoke", "--store", str(store),
           "--set", f"inputs.corpus={json.dumps(str(corpus))}", *extra]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if done.returncode:
        raise SystemExit(done.stderr[-3000:])
    stages: dict[str, float] = defaultdict(float)
    for line in (store / "journal.jsonl").read_text().splitlines()[before:]:
        event = json.loads(line)
        if event["event"] == "computed":
            stages[event["stage"]] += event.get("seconds", 0.0)
    return wall, dict(stages)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="3 days of every 150th sample row, with MiniLM (embed)")
    ap.add_argument("--days", type=int, default=10)
    args = ap.parse_args()
    table = pq.read_table(SAMPLE).select(["id", "text", "domain", "label"])
    if args.smoke:
        rows, days = table.take(list(range(0, table.num_rows, 150))).to_pylist(), 3
        extra = ["--set", 'label_noise.features="tfidf+minilm"', "--only", "label_noise"]
    else:
        rows, days = table.to_pylist(), args.days
        extra = ["--only", "contamination"]
    with tempfile.TemporaryDirectory(prefix="bench-drops-") as tmp:
        tmp = Path(tmp)
        paths = write_days(tmp / "all", rows, days)
        grow = tmp / "grow"
        grow.mkdir()
        for p in paths[:-1]:
            (grow / p.name).write_bytes(p.read_bytes())
        run(tmp / "nightly", grow, extra)  # the store as it was before the new day
        (grow / paths[-1].name).write_bytes(paths[-1].read_bytes())
        nightly = run(tmp / "nightly", grow, extra)
        full = run(tmp / "full", tmp / "all", extra)
    print(f"{len(rows)} rows in {days} daily files; `winnow run --profile smoke {' '.join(extra)}`; load "
          f"{os.getloadavg()[0]:.1f}")
    for name, (wall, stages) in (("nightly (+1 day)", nightly), ("full", full)):
        detail = ", ".join(f"{k} {v:.1f}" for k, v in sorted(stages.items(), key=lambda kv: -kv[1]))
        print(f"{name:<17} wall {wall:6.1f} s  computed {sum(stages.values()):6.1f} s  ({detail})")


if __name__ == "__main__":
    main()
