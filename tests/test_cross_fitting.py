"""--folds: disjoint folds covering every row, the standard error, the
interval written to summary.json, resuming, and refused combinations."""

import json
import math

import numpy as np
import pytest
import tensorflow as tf
from conftest import run_main

import mi_data_processing
import mi_main
import mi_model
from mi_data_processing import fold_indices
from mi_model import cross_fitted_interval, t_quantile

SMALL_RUN = ["--batch_size", "128", "--hid_width", "32"]


def test_folds_are_disjoint_and_cover_every_row_once():
    held_out = []
    for fold in range(4):
        training, evaluated = fold_indices(103, 4, fold, seed=3)
        assert not set(training) & set(evaluated)
        assert len(training) + len(evaluated) == 103 and len(evaluated) in (25, 26)
        held_out.append(evaluated)
    np.testing.assert_array_equal(np.sort(np.concatenate(held_out)), np.arange(103))


def test_standard_error_and_interval_by_hand():
    mean, stderr, (low, high), lower_bound = cross_fitted_interval([1.0, 1.2, 0.8, 1.0])
    spread = math.sqrt((0.0 + 0.04 + 0.04 + 0.0) / 3)  # sample standard deviation
    assert mean == pytest.approx(1.0)
    assert stderr == pytest.approx(spread / 2)
    assert (low, high) == pytest.approx((1.0 - 3.182 * spread / 2, 1.0 + 3.182 * spread / 2))
    assert lower_bound == pytest.approx(1.0 - 2.353 * spread / 2)  # one-sided: t(0.95) with 3 degrees of freedom


@pytest.mark.parametrize(
    "probability, dof, exact", [(0.975, 11, 2.201), (0.975, 30, 2.042), (0.95, 11, 1.796), (0.95, 30, 1.697)]
)
def test_t_quantile_beyond_the_table(probability, dof, exact):
    assert t_quantile(probability, dof) == pytest.approx(exact, abs=0.005)


@pytest.mark.slow
def test_three_folds_report_an_interval_around_their_estimate(known_mi_file, tmp_path, capsys):
    path = known_mi_file(n_rows=1500, mi_nats=0.5, seed=7)
    status, out, _ = run_main(
        ["--input", path, "--output_dir", str(tmp_path), "--folds", "3", "--n_epoch", "10", *SMALL_RUN], capsys
    )
    assert status == 0 and "±" in out.strip().splitlines()[-1]
    summary = json.loads((tmp_path / mi_main.SUMMARY_FILE).read_text())
    assert summary["folds"] == 3 and len(summary["fold_estimates"]) == 3
    low, high = summary["mi_ci95"]
    assert low < summary["mi_lower_95"] < summary["mi_estimate"] <= high and summary["mi_stderr"] > 0
    assert summary["mi_estimate"] == pytest.approx(np.mean(summary["fold_estimates"]))
    assert summary["held_out_rows"] == [500, 500, 500] and summary["training_rows"] == [1000, 1000, 1000]
    assert summary["critics"] == 3 * len(summary["candidates"])
    for fold in (1, 2, 3):
        assert len(np.loadtxt(tmp_path / f"fold-{fold}" / mi_data_processing.HELD_OUT_FILE)) == 10
        for name in mi_main.Config.candidates.split(","):
            assert (tmp_path / f"fold-{fold}" / name.replace(":", "-") / mi_main.CRITIC_FILE).exists()


@pytest.mark.slow
def test_one_fold_is_the_single_estimate(known_mi_file, tmp_path, capsys):
    path = known_mi_file(n_rows=800, mi_nats=0.5, seed=8)
    flags = ["--input", path, "--n_epoch", "3", *SMALL_RUN]
    run_main([*flags, "--output_dir", str(tmp_path / "plain"), "--val_fraction", "0.2"], capsys)
    run_main([*flags, "--output_dir", str(tmp_path / "one"), "--folds", "1"], capsys)
    for name in [mi_data_processing.ESTIMATE_FILE, mi_data_processing.HELD_OUT_FILE]:
        assert (tmp_path / "plain" / name).read_bytes() == (tmp_path / "one" / name).read_bytes()


def test_folds_refuse_a_distribution_strategy(known_mi_file, tmp_path, capsys):
    path = known_mi_file(n_rows=600, mi_nats=0.5, seed=9)
    status, _, err = run_main(
        ["--input", path, "--output_dir", str(tmp_path), "--folds", "2", "--strategy", "mirrored"], capsys, status=2
    )
    assert status == 2 and "--folds" in err and "--strategy mirrored" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "flags, named", [(["--cache_dir", "CACHE"], "--cache_dir"), (["--strategy", "mirrored"], "--strategy mirrored")]
)
def test_several_candidates_refuse_streaming_and_replicas(known_mi_file, tmp_path, capsys, flags, named):
    path = known_mi_file(n_rows=600, mi_nats=0.5, seed=11)
    flags = [str(tmp_path / "cache") if flag == "CACHE" else flag for flag in flags]
    status, _, err = run_main(
        [
            "--input",
            path,
            "--output_dir",
            str(tmp_path / "out"),
            "--folds",
            "1",
            "--candidates",
            "rank:tanh,standardize:relu",
            *flags,
        ],
        capsys,
        status=2,
    )
    assert status == 2 and "--candidates" in err and named in err and len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_folded_run_resumes_all_its_critics(known_mi_file, tmp_path, capsys):
    path = known_mi_file(n_rows=600, mi_nats=0.5, seed=10)
    # a constant rate: a cosine schedule stretches to the new --n_epoch on resuming
    flags = [
        "--input",
        path,
        "--folds",
        "2",
        "--activation",
        "tanh",
        "--lr_schedule",
        "constant",
        "--checkpoint_seconds",
        "0",
        *SMALL_RUN,
    ]
    run_main([*flags, "--output_dir", str(tmp_path / "whole"), "--n_epoch", "4"], capsys)
    run_main([*flags, "--output_dir", str(tmp_path / "resumed"), "--n_epoch", "2"], capsys)
    run_main([*flags, "--output_dir", str(tmp_path / "resumed"), "--n_epoch", "4", "--resume"], capsys)
    for fold in ("fold-1", "fold-2"):
        np.testing.assert_allclose(
            np.loadtxt(tmp_path / "resumed" / fold / mi_data_processing.HELD_OUT_FILE),
            np.loadtxt(tmp_path / "whole" / fold / mi_data_processing.HELD_OUT_FILE),
            atol=1e-6,
        )
        critic = tf.keras.models.load_model(tmp_path / "resumed" / fold / mi_main.CRITIC_FILE)
        assert critic.statistics_network.activation == "tanh"


@pytest.mark.slow
@pytest.mark.parametrize("folds", [3, 1])
def test_the_estimate_reads_each_chosen_critic_again_at_its_chosen_epoch_on_many_pairs(
    folds, known_mi_file, monkeypatch, tmp_path
):
    path = known_mi_file(n_rows=600, mi_nats=0.5, seed=4)
    captured, write_outputs = {}, mi_main.write_outputs

    def capture(config, prepared, data, outcome, stop):
        captured.update(config=config, prepared=prepared, data=data, outcome=outcome)
        return write_outputs(config, prepared, data, outcome, stop)

    monkeypatch.setattr(mi_main, "write_outputs", capture)
    flags = ["--folds", str(folds), "--candidates", "rank:tanh,asinh:relu", "--n_epoch", "6", *SMALL_RUN]
    run_main(["--input", path, "--quiet", "--output_dir", str(tmp_path), *flags])
    summary = json.loads((tmp_path / mi_main.SUMMARY_FILE).read_text())
    config, prepared, data, outcome = (captured[key] for key in ("config", "prepared", "data", "outcome"))
    history, plan, best_weights = outcome.history, outcome.plan, prepared.best_weights
    readings = []
    chosen = mi_model.chosen_in_views(history, plan)
    for view, (reading, epoch, candidate) in enumerate(chosen):
        critic, half = mi_model.read_by_view(plan, view, candidate)
        slot = view * plan.per_fold + candidate
        assert best_weights.epochs[slot] == epoch  # the weights of the chosen epoch, not the last
        model = mi_main.make_model(mi_main.critic_settings_of(config, [candidate]), 1)
        model.statistics_network.set_weights([value[slot] for value in best_weights.values])
        # the same 4 pairings as that epoch's reading, drawn in XLA as the training loop's are (XLA's stateless
        # draws differ from TensorFlow's kernels'): the same figures
        read = tf.function(mi_main.held_out_bounds, jit_compile=True)
        halves = mi_main.stacked_halves([data.held_out_rows[critic]])
        again = read(model, halves, 0, epoch, 4, 1, tf.constant([critic])).numpy()[0]
        np.testing.assert_allclose(
            again, [history.held_out_a[epoch - 1, critic], history.held_out_b[epoch - 1, critic]], atol=1e-5
        )
        assert (again.mean() if half is None else again[half]) == pytest.approx(reading, abs=1e-5)
        # alone, on every pair its half's size allows, as the estimate reads it beside the other views' choices
        shifts = mi_main.reread_shifts([len(rows) // 2 for rows in data.held_out_rows])
        pairings = [tf.fill([2], shift) for shift in range(1, shifts + 1)]
        pooled = mi_model.pooled_bound(*mi_model.parts_in_pairings(model, halves, pairings, 1), "mine").numpy()[0]
        readings.append(pooled.mean() if half is None else pooled[half])
    rereads = best_weights.bounds(
        config, plan, [(view, c) for view, (_, _, c) in enumerate(chosen)], data.held_out_rows
    )
    assert list(rereads.values()) == pytest.approx(readings, abs=1e-5)
    assert shifts >= 49 and summary["mi_certifiable"] == pytest.approx(
        math.log(shifts * min(map(len, data.held_out_rows)) // 2), abs=0.01
    )
    assert summary["mi_estimate"] == pytest.approx(np.mean(readings), abs=1e-5)
