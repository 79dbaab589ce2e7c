"""Dataclass configs: defaults <- TOML file <- --set overrides, with errors that name the key."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

import pytest

from lmstack.config import ConfigError, from_dict, load_config, to_dict


@dataclass
class Optim:
    lr: float = 3e-4
    betas: tuple[float, float] = (0.9, 0.95)


@dataclass
class Run:
    name: str = "run"
    steps: int = 100
    compile: bool = False
    device: Literal["auto", "cpu", "cuda"] = "auto"
    seed: Optional[int] = None
    tags: list[str] = field(default_factory=list)
    optim: Optim = field(default_factory=Optim)


def write_toml(tmp_path, text: str):
    path = tmp_path / "run.toml"
    path.write_text(text)
    return path


def test_defaults_then_file_then_overrides(tmp_path):
    path = write_toml(tmp_path, 'name = "from-file"\nsteps = 500\n[optim]\nlr = 1e-3\n')
    run = load_config(Run, path, ["steps=7", "optim.betas=[0.8, 0.9]", "tags=a,b"])
    assert run.name == "from-file"  # file beats default
    assert run.steps == 7  # --set beats file
    assert run.optim.lr == 1e-3 and run.optim.betas == (0.8, 0.9)
    assert run.tags == ["a", "b"] and run.compile is False and run.seed is None
    assert from_dict(Run, to_dict(run)) == run


@pytest.mark.parametrize("raw, expected", [("true", True), ("false", False), ("1", True), ("off", False),
                                           ("yes", True), ("TRUE", True)])
def test_bools_parse_from_strings(raw, expected):
    assert from_dict(Run, {"compile": raw}).compile is expected


def test_numbers_parse_from_strings_and_the_command_line():
    assert from_dict(Run, {"steps": "42"}).steps == 42
    assert from_dict(Run, {"steps": "1e3"}).steps == 1000
    assert from_dict(Run, {"steps": 2.0}).steps == 2
    assert from_dict(Run, {"optim": {"lr": "6e-4"}}).optim.lr == 6e-4
    assert from_dict(Run, {"optim": {"lr": 1}}).optim.lr == 1.0
    run = load_config(Run, None, ["steps=1_000", "optim.lr=2e-5", "compile=true", "seed=3", "name=plain words"])
    assert (run.steps, run.optim.lr, run.compile, run.seed, run.name) == (1000, 2e-5, True, 3, "plain words")


@pytest.mark.parametrize("raw", ["a,b", "[a, b]", " a , b ", "[a,b]", '["a", "b"]', "['a','b']"])
def test_a_list_parses_from_a_string_with_or_without_brackets(raw):
    # `-T monitors=[grounding, action_claims]` (Inspect's form) read as ['[grounding', 'action_claims]'] before
    assert from_dict(Run, {"tags": raw}).tags == ["a", "b"]


@pytest.mark.parametrize("raw", ["123", "1e3", "true", "inf"])
def test_a_text_setting_keeps_a_value_that_reads_as_a_number(raw):
    # `--set run_name=123` was "expected a string, got 123"; 1e3 would have become "1000.0"
    assert load_config(Run, None, [f"name={raw}"]).name == raw
    assert load_config(Run, None, [f'name="{raw}"']).name == raw  # quoted, as TOML writes it


@pytest.mark.parametrize("raw", ["none", "None", "null"])
def test_an_optional_setting_is_unset_by_none_on_the_command_line(raw):
    assert load_config(Run, None, ["seed=3", f"seed={raw}"]).seed is None  # TOML has no null
    with pytest.raises(ConfigError, match="expected an integer"):
        load_config(Run, None, [f"steps={raw}"])  # not optional


@pytest.mark.parametrize("data, key", [
    ({"stepz": 1}, "stepz"),
    ({"optim": {"learning_rate": 1.0}}, "optim.learning_rate"),
])
def test_unknown_keys_are_named_with_the_valid_ones(data, key):
    with pytest.raises(ConfigError, match=f"unknown config key '{key}'") as err:
        from_dict(Run, data)
    assert "valid keys" in str(err.value)


@pytest.mark.parametrize("override, message", [
    ("stepz=1", "unknown config key 'stepz' in the top level"),
    ("optim.learning_rate=1", "unknown config key 'learning_rate' in optim"),
    ("steps.x=1", "'steps' is not a table"),
    ("steps", "expected key=value"),
])
def test_unknown_override_keys_are_named(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(Run, None, [override])


def test_overrides_given_as_one_string_are_refused_with_the_list_to_pass():
    """load_config(Run, overrides="steps=5") read the string letter by letter: "--set 's': expected key=value"."""
    with pytest.raises(ConfigError) as refused:
        load_config(Run, None, "steps=5")
    assert str(refused.value) == ("overrides must be a list of 'key=value' strings, got the string 'steps=5'; "
                                  "e.g. overrides=['steps=5']")
    assert load_config(Run, None, ["steps=5"]).steps == 5


@pytest.mark.parametrize("data, message", [
    ({"steps": "many"}, "'steps': expected an integer, got 'many'"),
    ({"steps": True}, "'steps': expected an integer"),
    ({"steps": 1.5}, "'steps': expected an integer"),
    ({"compile": "maybe"}, "'compile': expected true or false"),
    ({"optim": {"lr": "fast"}}, "'optim.lr': expected a number"),
    ({"name": 3}, "'name': expected a string"),
    ({"device": "tpu"}, "'device': 'tpu' is not one of"),
    ({"optim": 3}, "'optim': expected a table"),
])
def test_wrong_types_are_named(data, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(Run, data)


def test_bad_files_are_named(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(Run, tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(Run, write_toml(tmp_path, "steps = = 3"))
    with pytest.raises(ConfigError, match="unknown config key 'optim.lrr'"):
        load_config(Run, write_toml(tmp_path, "[optim]\nlrr = 1\n"))


def test_model_config_validation_runs_on_load():
    from lmstack.model.config import ModelConfig

    with pytest.raises(ConfigError, match="must be divisible"):
        load_config(ModelConfig, None, ["n_embd=100", "n_head=3"])
