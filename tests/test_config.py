"""Configuration: defaults, profiles, files and --set layer in order; mistakes are named."""

from __future__ import annotations

import pytest

from winnow.config import STAGES, describe, load_config
from winnow.errors import WinnowError


def test_defaults_cover_every_stage():
    cfg = load_config(path=None)
    assert list(cfg.stages) == list(STAGES)
    assert cfg.store.root == ".winnow"


def test_file_then_set_override(tmp_path):
    path = tmp_path / "w.toml"
    path.write_text('[store]\nroot = "elsewhere"\n[run]\nmax_workers = 3\n')
    cfg = load_config(path, overrides=["run.max_workers=5", 'store.root="x"'])
    assert cfg.run.max_workers == 5 and cfg.store.root == "x"
    assert load_config(path).run.max_workers == 3


@pytest.mark.parametrize(
    "text, message",
    [
        ("[dedupe]\nx = 1\n", r"unknown section \[dedupe\]"),
        ("[run]\nmax_worker = 1\n", r"unknown key 'run.max_worker'; known keys: max_workers, runner_address, task_runner"),
        ("[run]\nmax_workers = 'two'\n", r"run.max_workers: expected int, got 'two'"),
        ("[run\n", r"invalid TOML"),
    ],
)
def test_config_mistakes_are_named(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(WinnowError, match=message):
        load_config(path)


def test_unknown_profile_and_bad_set():
    with pytest.raises(WinnowError, match="unknown profile 'nope'; profiles: pretrained, smoke"):
        load_config(profile="nope")
    with pytest.raises(WinnowError, match="expected SECTION.KEY=VALUE"):
        load_config(overrides=["threshold=0.9"])


def test_describe_round_trips(tmp_path):
    """The documented dump of a resolved config is itself a valid config giving the same result."""
    cfg = load_config(profile="smoke")
    path = tmp_path / "dump.toml"
    path.write_text(describe(cfg))
    assert load_config(path).to_dict() == cfg.to_dict()


def test_none_is_none_for_optional_fields():
    cfg = load_config(overrides=["mixture.template=none"])
    assert cfg.params("mixture").template is None
    assert load_config(overrides=['mixture.template="{text}"']).params("mixture").template == "{text}"
