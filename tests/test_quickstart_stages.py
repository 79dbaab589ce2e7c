"""`quickstart(...)` from Python: stages that are not (name, function) pairs, and pretraining settings that are
not settings, are refused before any stage runs."""

import pytest

from lmstack.config import ConfigError
from lmstack.quickstart import STAGES, quickstart, stage_data


@pytest.mark.parametrize("stages", [[stage_data], ["data"], [("data",)]])
def test_stages_that_are_not_name_function_pairs_are_refused_before_any_runs(tmp_path, stages):
    calls = []
    recorder = ("record", lambda qs: calls.append(qs))
    with pytest.raises(TypeError, match=r"quickstart stages must be \(name, function\) pairs"):
        quickstart(tmp_path / "run", stages=[recorder, *stages])  # before: the first stage ran, then an unpack error
    assert not calls and not (tmp_path / "run").exists()
    assert quickstart(tmp_path / "run", stages=[recorder]).run_dir == tmp_path / "run" and len(calls) == 1


def test_a_mistyped_pretraining_setting_is_refused_before_the_data_stage(tmp_path):
    """`quickstart(max_step=50)` prepared the data (minutes on the stdlib) before the pretraining stage refused it."""
    calls = []
    stages = [("record", lambda qs: calls.append(qs)), *STAGES]
    with pytest.raises(ConfigError, match="unknown config key 'max_step' in the top level; valid keys: .*max_steps"):
        quickstart(tmp_path / "run", stages=stages, max_step=50)
    assert not calls and not (tmp_path / "run").exists()
