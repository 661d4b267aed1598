"""Training checkpoints that resume exactly: safetensors + JSON, never pickle.

A checkpoint is one folder ``step-00000042/`` in the folder the store gives the run
(``DatasetStore.checkpoint_dir(fingerprint)``):

* ``model.safetensors``: the weights (``safetensors.torch.save_model``, so tied weights are fine);
* ``optimizer.safetensors``: every optimizer state tensor (``state.<param index>.<name>``) plus the
  RNG states (``rng.torch``, ``rng.cuda.<i>``);
* ``state.json``: step, optimizer param groups, numpy and Python RNG states, the data position (the
  step: the batch order is a pure function of seed and step), the history so far, and a ``key``
  naming the config, model and token stream it belongs to. A checkpoint whose key differs is
  refused, never silently resumed.

Writes go to a temporary folder renamed into place (``rename(2)`` is atomic), so a kill at any
moment leaves either the previous checkpoint or the new one; older ones are then pruned.
"""

from __future__ import annotations

import json
import random
import shutil
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from storage.fingerprint import canonical_json
from winnow.errors import WinnowError

if TYPE_CHECKING:
    import torch

STATE = "state.json"
MODEL = "model.safetensors"
OPTIMIZER = "optimizer.safetensors"
KEEP = 2  # checkpoints kept: the newest, and one before it in case the newest is damaged


class Checkpoints:
    """The checkpoints of one training run, in ``folder``, all bound to one ``key``."""

    def __init__(self, folder: Path, key: dict[str, Any]) -> None:
        self.folder = Path(folder)
        self.key = json.loads(canonical_json(key))

    def latest(self) -> Path | None:
        """The newest complete checkpoint folder, or None."""
        if not self.folder.is_dir():
            return None
        done = sorted(p for p in self.folder.glob("step-*") if (p / STATE).is_file())
        return done[-1] if done else None

    def save(self, step: int, model: "torch.nn.Module", optimizer: "torch.optim.Optimizer", state: dict[str, Any]) -> Path:
        """Write step ``step`` atomically and prune older checkpoints; returns its folder."""
        import torch
        from safetensors.torch import save_file, save_model

        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.folder / f".tmp-{step:08d}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        save_model(model, str(tmp / MODEL))
        opt = optimizer.state_dict()
        tensors = {f"state.{i}.{name}": v.detach().cpu().contiguous()
                   for i, entry in opt["state"].items() for name, v in entry.items() if torch.is_tensor(v)}
        tensors["rng.torch"] = torch.get_rng_state()
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            for i, s in enumerate(torch.cuda.get_rng_state_all()):
                tensors[f"rng.cuda.{i}"] = s
        save_file(tensors, str(tmp / OPTIMIZER))
        np_state = np.random.get_state()
        record = {
            "key": self.key,
            "step": step,
            "param_groups": opt["param_groups"],
            "rng_numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
            "rng_python": _jsonable(random.getstate()),
            **state,
        }
        (tmp / STATE).write_text(json.dumps(record), encoding="utf-8")
        final = self.folder / f"step-{step:08d}"
        if final.exists():  # the same step again (a rerun that stopped at the same place)
            shutil.rmtree(final)
        tmp.rename(final)
        for old in sorted(p for p in self.folder.glob("step-*") if p != final)[:-(KEEP - 1) or None]:
            shutil.rmtree(old, ignore_errors=True)
        for stray in self.folder.glob(".tmp-*"):  # left by a kill during an earlier save
            shutil.rmtree(stray, ignore_errors=True)
        return final

    def load(self, model: "torch.nn.Module", optimizer: "torch.optim.Optimizer") -> dict[str, Any] | None:
        """Restore the newest checkpoint into ``model`` and ``optimizer``; its state, or None if none."""
        path = self.latest()
        if path is None:
            return None
        import torch
        from safetensors.torch import load_file, load_model

        record = json.loads((path / STATE).read_text(encoding="utf-8"))
        if record.get("key") != self.key:
            diff = sorted(k for k in set(self.key) | set(record.get("key", {})) if self.key.get(k) != record.get("key", {}).get(k))
            raise WinnowError(f"train: checkpoint {path} was written by another config or model (differs in: "
                              f"{', '.join(diff) or 'key'}); refusing to resume it: delete {self.folder} to start over")
        load_model(model, str(path / MODEL), strict=True)
        tensors = load_file(str(path / OPTIMIZER))
        state: dict[int, dict[str, Any]] = {}
        for name, value in tensors.items():
            if name.startswith("state."):
                _, index, field = name.split(".", 2)
                state.setdefault(int(index), {})[field] = value
        optimizer.load_state_dict({"state": state, "param_groups": record["param_groups"]})
        torch.set_rng_state(tensors["rng.torch"])
        cuda_states = [tensors[k] for k in sorted(tensors) if k.startswith("rng.cuda.")]
        if cuda_states and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(cuda_states)
        kind, keys, *rest = record["rng_numpy"]
        np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), *rest))
        random.setstate(_tuples(record["rng_python"]))
        return record

    def clear(self) -> None:
        """Delete every checkpoint of this run (after its result is committed)."""
        shutil.rmtree(self.folder, ignore_errors=True)


def _jsonable(value: Any) -> Any:
    return [_jsonable(v) for v in value] if isinstance(value, (tuple, list)) else value


def _tuples(value: Any) -> Any:
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value
