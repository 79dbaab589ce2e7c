"""`quickstart(stages=...)` from Python: stages that are not (name, function) pairs are refused before any runs."""

import pytest

from lmstack.quickstart import quickstart, stage_data


@pytest.mark.parametrize("stages", [[stage_data], ["data"], [("data",)]])
def test_stages_that_are_not_name_function_pairs_are_refused_before_any_runs(tmp_path, stages):
    calls = []
    recorder = ("record", lambda qs: calls.append(qs))
    with pytest.raises(TypeError, match=r"quickstart stages must be \(name, function\) pairs"):
        quickstart(tmp_path / "run", stages=[recorder, *stages])  # before: the first stage ran, then an unpack error
    assert not calls and not (tmp_path / "run").exists()
    assert quickstart(tmp_path / "run", stages=[recorder]).run_dir == tmp_path / "run" and len(calls) == 1
