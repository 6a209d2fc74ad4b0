"""A run that reads its held-out bounds as it trains (mi_model.Plan, end
to end): candidates dropped, their critics saved and reported, and a run
resumed after a drop as if never stopped, its independence test too."""

import json

import numpy as np
import pytest
from conftest import logged_scalars, run_main

import mi_data_processing
import mi_main

# A candidate that falls far behind (the raw values of cubed coordinates), judged from epoch 3, so that the plan
# drops it within a few epochs of a small input.
SMALL_RUN = ["--folds", "3", "--candidates", "rank:tanh,none:relu", "--batch_size", "32", "--hid_width", "16"]
SMALL_RUN += ["--n_epoch", "12"]


def judge_early(monkeypatch):
    monkeypatch.setattr(mi_main, "DROP_FROM_EPOCH", 3)
    monkeypatch.setattr(mi_main, "DROP_AFTER_STEPS", 0)


@pytest.fixture
def quick_plan(monkeypatch):
    judge_early(monkeypatch)


@pytest.fixture
def small_file(tmp_path):
    path = str(tmp_path / "cubed.dat")
    mi_data_processing.save_rows(path, mi_data_processing.make_known_mi_rows(900, 1.0, 21, x_distortion="cube")[0])
    return path


@pytest.mark.slow
def test_a_dropped_candidate_stops_training_and_is_saved_and_reported(quick_plan, small_file, tmp_path, capsys):
    status, out, _ = run_main(["--input", small_file, "--output_dir", str(tmp_path), "--quiet", *SMALL_RUN], capsys)
    summary = json.loads((tmp_path / mi_main.SUMMARY_FILE).read_text())
    assert status == 0 and summary["candidates_dropped"], "the plan dropped nothing: no drop to check"
    (name, epoch), *_ = summary["candidates_dropped"].items()
    assert f"dropped {name} after epoch {epoch}" in out and summary["epochs_completed"] > epoch
    dropped = tmp_path / "fold-1" / name.replace(":", "-")
    assert len(np.loadtxt(dropped / mi_data_processing.HELD_OUT_FILE)) == epoch  # the epochs it trained
    assert (dropped / mi_main.CRITIC_FILE).exists()
    assert len(np.loadtxt(tmp_path / mi_data_processing.ESTIMATE_FILE)) == summary["epochs_completed"]
    assert summary["critic_epochs_of_chosen_candidates"] < summary["critic_epochs"] < 6 * summary["epochs_completed"]
    training = logged_scalars(tmp_path / "logs")[f"candidates/{name}"]
    assert training[epoch] == 1.0 and training[epoch + 1] == 0.0  # steps are epochs, from 1


@pytest.mark.slow
def test_a_run_resumed_after_a_drop_equals_an_uninterrupted_one(quick_plan, small_file, tmp_path, monkeypatch):
    flags = ["--input", small_file, "--checkpoint_seconds", "0", "--quiet", "--permutations", "99", *SMALL_RUN]
    whole = run_main([*flags, "--output_dir", str(tmp_path / "whole")])
    summary = json.loads((tmp_path / "whole" / mi_main.SUMMARY_FILE).read_text())
    assert whole[0] == 0 and summary["candidates_dropped"], "the plan dropped nothing: no drop to resume after"
    stop_after = max(summary["candidates_dropped"].values()) + 1  # the smaller stack has trained an epoch

    real_train_epoch, calls = mi_main.CompiledCritics.train_epoch, []

    def stops(*arguments):
        calls.append(1)
        if len(calls) == stop_after + 1:
            raise KeyboardInterrupt
        return real_train_epoch(*arguments)

    monkeypatch.setattr(mi_main.CompiledCritics, "train_epoch", stops)
    with pytest.raises(KeyboardInterrupt):
        run_main([*flags, "--output_dir", str(tmp_path / "resumed")])
    monkeypatch.undo()
    judge_early(monkeypatch)
    assert run_main([*flags, "--output_dir", str(tmp_path / "resumed"), "--resume"])[0] == 0
    for name in [mi_data_processing.ESTIMATE_FILE, mi_data_processing.HELD_OUT_FILE]:
        np.testing.assert_allclose(
            np.loadtxt(tmp_path / "resumed" / name), np.loadtxt(tmp_path / "whole" / name), atol=1e-6
        )
    resumed = json.loads((tmp_path / "resumed" / mi_main.SUMMARY_FILE).read_text())
    assert resumed["mi_estimate"] == pytest.approx(summary["mi_estimate"], abs=1e-6)
    # the test's weights, kept at epoch 3, before the interruption, came back from the checkpoint
    assert resumed["test_epoch"] == 3 < stop_after and resumed["fold_p_values"] == summary["fold_p_values"]
    np.testing.assert_allclose(resumed["fold_test_statistics"], summary["fold_test_statistics"], atol=1e-9)


def test_candidates_are_judged_after_as_many_steps_on_small_inputs():
    assert mi_main.first_judged_epoch(16) == mi_main.DROP_FROM_EPOCH == 10  # 4,000 rows of batch 256
    assert mi_main.first_judged_epoch(32) == 10
    assert mi_main.first_judged_epoch(4) == 40  # 160 steps by epoch 40
