"""Exact resume: kill -9 a training run at random points, rerun, compare with an uninterrupted run.

Run from the repository root::

    python -m benchmarks.bench_resume                  # 3 kills, tiny-shaped model, 120 steps
    python -m benchmarks.bench_resume --kills 5 --steps 300 --seed 7

A subprocess trains through ``tasks.train.run`` with a checkpoint folder (as the store gives one);
after a random delay past the first checkpoint it gets SIGKILL, then is restarted on the same
folder, ``--kills`` times; the last restart runs to the end. The uninterrupted run trains the same
params in this process. Reported: the steps each kill landed after, the steps resumed from, and
whether the final loss and every weight tensor are equal (exactly, not within a tolerance).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa

from tasks import tokenize, train

REPO = Path(__file__).resolve().parents[1]
CHILD = """
import json, sys
from pathlib import Path
from tasks import train
tokens, out, ckpt, params = sys.argv[1:5]
r = train.run(Path(tokens), train.Params(**json.loads(params)), Path(out), Path(ckpt))
print(json.dumps({"final_loss": r.metrics["final_loss"], "resumed_from": r.metrics["resumed_from"]}))
"""


def checkpoint_steps(folder: Path) -> list[int]:
    return sorted(int(p.name.split("-")[1]) for p in folder.glob("step-*") if (p / "state.json").is_file())


def start(tokens: Path, out: Path, ckpt: Path, params: dict) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-c", CHILD, str(tokens), str(out), str(ckpt), json.dumps(params)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=3)
    ap.add_argument("--steps", type=int, default=120)
    ap.add_argument("--seed", type=int, default=0, help="seeds the kill delays")
    a = ap.parse_args()
    rng = random.Random(a.seed)
    texts = [open(f, encoding="utf-8").read() for f in sorted(glob.glob("/usr/lib/python3.11/*.py"))[:40]]
    params = dict(d_model=64, n_layers=2, n_heads=2, seq_len=64, batch_size=8, warmup_steps=5, log_every=5,
                  checkpoint_every=5, max_steps=a.steps, num_threads=1)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tokenize.run(pa.table({"text": texts}), tokenize.Params(tokenizer="bpe", vocab_size=512), tmp / "tok")
        t0 = time.perf_counter()
        plain = train.run(tmp / "tok", train.Params(**params), tmp / "plain")
        plain_s = time.perf_counter() - t0
        kills = []
        for _ in range(a.kills):
            child = start(tmp / "tok", tmp / "resumed", tmp / "ck", params)
            before = checkpoint_steps(tmp / "ck")
            while child.poll() is None and checkpoint_steps(tmp / "ck") == before:
                time.sleep(0.005)  # wait for this process to write one new checkpoint
            time.sleep(rng.uniform(0.0, plain_s / a.kills / 2))  # then a random moment mid-step
            if child.poll() is not None:
                raise SystemExit("the run finished before it could be killed: raise --steps")
            child.send_signal(signal.SIGKILL)
            child.wait()
            kills.append(checkpoint_steps(tmp / "ck")[-1])
            print(f"killed after checkpoint step {kills[-1]} (checkpoints on disk: {checkpoint_steps(tmp / 'ck')})")
        child = start(tmp / "tok", tmp / "resumed", tmp / "ck", params)
        final = json.loads(child.communicate()[0].strip().splitlines()[-1])
        from safetensors.torch import load_file

        x, y = (load_file(str(tmp / d / "model.safetensors")) for d in ("plain", "resumed"))
        same = x.keys() == y.keys() and all((x[k] == y[k]).all().item() for k in x)
    print(f"\n{a.kills} kills (SIGKILL) at steps after checkpoints {kills}; last rerun resumed from step "
          f"{final['resumed_from']} of {a.steps}")
    print(f"final loss uninterrupted {plain.metrics['final_loss']!r}, resumed {final['final_loss']!r}: "
          f"{'equal' if plain.metrics['final_loss'] == final['final_loss'] else 'DIFFERENT'}")
    print(f"weights: {len(x)} tensors, {'all bit-identical' if same else 'DIFFERENT'}")
    if not same or plain.metrics["final_loss"] != final["final_loss"]:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
