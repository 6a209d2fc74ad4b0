"""mi_main.py end to end: flags, bad input, outputs, and the estimate on
data whose true mutual information is known."""

import json
import os
import subprocess
import sys
import types

import numpy as np
import pytest
import tensorflow as tf
from conftest import REPO, run_main

import mi_data_processing
import mi_main
from mi_data_processing import make_known_mi_rows
from mi_layers import copula_pair_terms
from mi_model import every_pair_parts

SHARED_SAMPLE = os.path.join(REPO, "..", "shared", "reference_sample", "combined_input.dat")


def write_rows(tmp_path, rows, name="rows.dat"):
    path = tmp_path / name
    np.savetxt(path, rows)
    return str(path)


def assert_refused(argv, capsys, tmp_path, *expected):
    output_dir = tmp_path / "refused"
    status, _, err = run_main(argv + ["--output_dir", str(output_dir)], capsys, status=2)
    assert status == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    for fragment in expected:
        assert fragment in lines[0]
    assert not output_dir.exists() or not os.listdir(output_dir)


def test_missing_file(tmp_path, capsys):
    missing = str(tmp_path / "nope.dat")
    assert_refused(["--input", missing], capsys, tmp_path, missing, "no such file")


def test_wrong_column_count_names_the_line(tmp_path, capsys):
    rows = np.ones((5, 22))
    path = write_rows(tmp_path, rows)
    with open(path, "a") as stream:
        stream.write("1 2 3\n")
    assert_refused(
        ["--input", path, "--batch_size", "2"], capsys, tmp_path, path, "line 6", "expected 22", "--data_dim 10"
    )


def test_fewer_training_rows_than_one_batch_names_val_fraction(tmp_path, capsys):
    path = write_rows(tmp_path, np.random.default_rng(0).normal(size=(100, 22)))
    assert_refused(
        ["--input", path, "--folds", "1", "--batch_size", "90"],
        capsys,
        tmp_path,
        "100 rows",
        "80 of them for training",
        "--val_fraction 0.2",
        "--batch_size 90",
    )


def test_too_few_rows_for_the_folds_names_folds(tmp_path, capsys):
    path = write_rows(tmp_path, np.random.default_rng(0).normal(size=(100, 22)))
    assert_refused(
        ["--input", path, "--batch_size", "90"], capsys, tmp_path, "100 rows", "--folds 5", "--batch_size 90"
    )


def test_too_few_rows_for_any_estimate_says_what_is_needed(tmp_path, capsys):
    path = write_rows(tmp_path, np.random.default_rng(0).normal(size=(7, 22)))
    assert_refused(["--input", path], capsys, tmp_path, "7 rows", "at least 8")


@pytest.mark.slow
def test_a_small_input_adapts_the_default_folds_and_batch_and_says_so(tmp_path, capsys):
    path = write_rows(tmp_path, make_known_mi_rows(12, 0.5, seed=3)[0])
    status, out, _ = run_main(["--input", path, "--n_epoch", "2", "--output_dir", str(tmp_path / "out")], capsys)
    assert status == 0
    start_line = out.splitlines()[0]
    assert "3 folds, not 5" in start_line and "not 256" in start_line
    summary = json.loads((tmp_path / "out" / mi_main.SUMMARY_FILE).read_text())
    assert summary["folds"] == 3 and summary["batch_size"] <= 8 and len(summary["adapted_to_rows"]) == 2


def test_default_epochs_fit_a_step_budget_and_an_explicit_n_epoch_stays():
    budget, adapt = mi_main.STEP_BUDGET, mi_main.batch_and_epochs_for_rows
    given = mi_main.parse_flags(["--batch_size", "8"])
    config, notes = adapt(given, 1600)  # 200 steps an epoch
    assert config.n_epoch == budget // 200 and notes == [f"16 epochs, not {given.n_epoch}: 3,200 steps of 200 an epoch"]
    assert given.n_epoch == mi_main.Config.n_epoch  # a new Config: the one given is as it was
    config, notes = adapt(mi_main.parse_flags(["--batch_size", "8", "--n_epoch", "100"]), 1600)
    assert notes == [] and config.n_epoch == 100
    config, notes = adapt(mi_main.parse_flags([]), 8000)
    assert notes == [] and config.n_epoch == mi_main.Config.n_epoch  # 10,000 rows: as before
    config, notes = adapt(mi_main.parse_flags(["--activation", "copula"]), 8000)
    assert config.n_epoch == 1 and notes == ["1 epoch, not 100: fitted critics do not train"]
    assert adapt(mi_main.parse_flags(["--activation", "copula", "--n_epoch", "5"]), 8000)[0].n_epoch == 5


def test_large_held_out_folds_are_read_on_one_shard():
    rows = 140_000
    splits = [mi_data_processing.fold_indices(rows, 2, fold, seed=0) for fold in range(2)]
    capped, notes = mi_main.held_out_capped(splits)
    assert [len(held_out) for _, held_out in capped] == [mi_data_processing.SHARD_ROWS] * 2
    assert [len(training) for training, _ in capped] == [70_000, 70_000]
    assert all(
        np.array_equal(held_out[: len(kept)], kept) for (_, held_out), (_, kept) in zip(splits, capped, strict=True)
    )
    assert notes == ["read on 65,536 of each critic's 70,000 held-out rows"]
    small = [(np.arange(10), np.arange(5))]
    assert mi_main.held_out_capped(small) == (small, [])  # the same splits, no note


def test_token_that_is_not_a_number_names_the_line(tmp_path, capsys):
    path = tmp_path / "rows.dat"
    path.write_text(" ".join(["1"] * 22) + "\n" + " ".join(["1"] * 21 + ["x1"]) + "\n")
    assert_refused(["--input", str(path), "--batch_size", "1"], capsys, tmp_path, "line 2", "'x1'")


def test_nan_names_the_line(tmp_path, capsys):
    rows = np.ones((4, 22))
    rows[2, 5] = np.nan
    path = write_rows(tmp_path, rows)
    assert_refused(["--input", path, "--batch_size", "2"], capsys, tmp_path, "line 3", "NaN")


def test_empty_file(tmp_path, capsys):
    path = tmp_path / "empty.dat"
    path.write_text("")
    assert_refused(["--input", str(path)], capsys, tmp_path, "no data rows")


def test_fewer_rows_than_one_batch(tmp_path, capsys):
    path = write_rows(tmp_path, np.ones((10, 22)))
    assert_refused(["--input", path, "--batch_size", "64"], capsys, tmp_path, "10 rows", "--batch_size 64")


def test_data_size_that_disagrees_names_both_numbers(tmp_path, capsys):
    path = write_rows(tmp_path, np.ones((10, 22)))
    assert_refused(
        ["--input", path, "--data_size", "20", "--batch_size", "2"], capsys, tmp_path, "--data_size 20", "10 rows"
    )


@pytest.mark.parametrize(
    "flag, value",
    [
        ("--batch_size", "0"),
        ("--lr", "-0.1"),
        ("--n_epoch", "0"),
        ("--hid_width", "-3"),
        ("--lr", "fast"),
        ("--val_fraction", "1.5"),
        ("--ema_rate", "-1"),
    ],
)
def test_zero_or_negative_hyperparameter_names_the_flag(tmp_path, capsys, flag, value):
    assert_refused([flag, value], capsys, tmp_path, flag)


def run_real_process(argv, cwd):
    """mi_main.py in a fresh process. oneDNN is forced on, as TensorFlow
    does by itself on CPUs with AVX-512: its start-up then logs lines that
    ignore TF_CPP_MIN_LOG_LEVEL, whichever CPU runs the test."""
    environment = {**os.environ, "TF_ENABLE_ONEDNN_OPTS": "1"}
    environment.pop("TF_CPP_MIN_LOG_LEVEL", None)
    return subprocess.run(
        [sys.executable, os.path.join(REPO, "mi_main.py"), *argv],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=180,
        env=environment,
    )


@pytest.mark.slow
def test_bad_input_in_a_real_process_gives_one_line_and_no_traceback(tmp_path):
    path = tmp_path / "bad.dat"
    path.write_text("1 2 3\n")
    result = run_real_process(["--input", str(path), "--output_dir", str(tmp_path / "out")], tmp_path)
    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr and str(path) in result.stderr


@pytest.mark.slow
def test_a_normal_run_in_a_real_process_prints_nothing_on_stderr(known_mi_file, tmp_path):
    path = known_mi_file(n_rows=600, mi_nats=0.5, seed=12)
    result = run_real_process(
        ["--input", path, "--output_dir", str(tmp_path / "out"), "--n_epoch", "2", "--batch_size", "128"], tmp_path
    )
    assert result.returncode == 0 and result.stderr == ""
    assert result.stdout.strip().splitlines()[-1].startswith("estimated I(X; Z)")


def test_start_up_log_keeps_only_what_the_log_level_lets_through():
    text = (
        "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
        "I0000 00:00:1796022806.380885    2423 port.cc:153] oneDNN custom operations are on.\n"
        "I0000 00:00:1796022818.969401    2517 cpu_feature_guard.cc:227] This TensorFlow binary is optimized\n"
        "To enable the following instructions: AVX2 FMA, in other operations, rebuild TensorFlow.\n"
        "E0000 00:00:1796022818.969401    2517 cuda_dnn.cc:8] Unable to register cuDNN factory\n"
    )
    assert (
        mi_data_processing.startup_lines_kept(text, 2)
        == "E0000 00:00:1796022818.969401    2517 cuda_dnn.cc:8] Unable to register cuDNN factory\n"
    )
    assert mi_data_processing.startup_lines_kept(text, 0) == text.split("\n", 1)[1]
    assert mi_data_processing.startup_lines_kept("a line of our own\n", 2) == "a line of our own\n"


def test_the_xla_cache_loads_known_noise_is_dropped_and_other_errors_kept():
    noise = (
        "E0000 00:00:1796220415.038303    5392 text_format.cc:378] Error parsing text-format "
        "tensorflow.XlaSerializedCacheEntry: 2:1: Expected identifier, got: 5\n"
        "E0000 00:00:1796220415.124796    5392 cpu_aot_loader.cc:220] Loading XLA:CPU AOT result. Target machine "
        "feature +prefer-no-scatter is not  supported on the host machine.\n"
    )
    other = "E0000 00:00:1796220415.124796    5392 cpu_aot_loader.cc:220] Loading XLA:CPU AOT result failed\n"
    assert mi_data_processing.startup_lines_kept(noise + other, 2, mi_data_processing.CACHE_LOAD_NOISE) == other
    assert mi_data_processing.startup_lines_kept(noise, 2) == noise


@pytest.mark.parametrize("setting, expected", [(None, "per-cpu"), ("", None)])
def test_the_persistent_xla_cache_lives_per_cpu_and_turns_off(monkeypatch, tmp_path, setting, expected):
    monkeypatch.delenv("TF_XLA_FLAGS", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    if setting is None:
        monkeypatch.delenv("MINE_XLA_CACHE", raising=False)
    else:
        monkeypatch.setenv("MINE_XLA_CACHE", setting)
    mi_main.use_persistent_xla_cache()
    if expected is None:
        assert "TF_XLA_FLAGS" not in os.environ
    else:
        folder = tmp_path / "mi_mine" / "xla" / mi_main.cpu_identity()
        assert os.environ["TF_XLA_FLAGS"] == f"--tf_xla_persistent_cache_directory={folder}" and folder.is_dir()


@pytest.mark.slow
def test_estimate_on_known_mi_file_and_output_files(known_mi_file, tmp_path, capsys):
    path = known_mi_file(n_rows=3000, mi_nats=1.0, seed=1)
    output_dir = tmp_path / "out"
    status, out, _ = run_main(
        ["--input", path, "--output_dir", str(output_dir), "--folds", "1", "--n_epoch", "40", "--seed", "1"], capsys
    )
    assert status == 0
    assert len([line for line in out.splitlines() if line.startswith("epoch")]) == 40

    estimates = np.loadtxt(output_dir / mi_data_processing.ESTIMATE_FILE)
    parts = np.loadtxt(output_dir / mi_data_processing.PARTS_FILE)
    held_out = np.loadtxt(output_dir / mi_data_processing.HELD_OUT_FILE)
    assert estimates.shape == (40,) and parts.shape == (40, 2) and held_out.shape == (40,)
    np.testing.assert_allclose(estimates, parts[:, 0] - parts[:, 1], atol=1e-5)

    summary = json.loads((output_dir / mi_main.SUMMARY_FILE).read_text())
    for key in [
        "mi_estimate",
        "n_epoch",
        "rows",
        "batch_size",
        "seed",
        "train_seconds",
        "samples_per_second",
        "hyperparameters",
    ]:
        assert key in summary
    assert summary["rows"] == 3000 and summary["held_out_rows"] == 600 and summary["true_mi_nats"] == 1.0
    assert summary["hyperparameters"]["hid_width"] == mi_main.Config.hid_width
    assert min(held_out) <= summary["mi_estimate"] <= max(held_out) + 0.2
    # 600 held-out rows: even the exact critic's bound on such a sample
    # spreads by about 0.05 nat from one sample to the next.
    assert summary["mi_estimate"] == pytest.approx(1.0, abs=0.15)


@pytest.mark.slow
@pytest.mark.parametrize("estimator", ["mine", "mine_biased", "mine_f"])
def test_each_estimator_end_to_end(known_mi_file, tmp_path, capsys, estimator):
    path = known_mi_file(n_rows=2000, mi_nats=0.5, seed=2)
    output_dir = tmp_path / "out"
    status, _, _ = run_main(
        ["--input", path, "--output_dir", str(output_dir), "--folds", "1", "--n_epoch", "30", "--estimator", estimator],
        capsys,
    )
    assert status == 0
    summary = json.loads((output_dir / mi_main.SUMMARY_FILE).read_text())
    assert summary["estimator"] == estimator
    assert summary["mi_estimate"] == pytest.approx(0.5, abs=0.15)


@pytest.mark.slow
def test_joint_only_file_gets_resampled_marginals(tmp_path, capsys):
    rows, _ = make_known_mi_rows(2000, 0.5, seed=3)
    path = write_rows(tmp_path, rows[:, :11])
    output_dir = tmp_path / "out"
    status, _, _ = run_main(["--input", path, "--output_dir", str(output_dir), "--n_epoch", "30"], capsys)
    assert status == 0
    assert json.loads((output_dir / mi_main.SUMMARY_FILE).read_text())["mi_estimate"] == pytest.approx(0.5, abs=0.15)
    assert_refused(["--input", path, "--marginal", "file"], capsys, tmp_path, "--marginal file", "joint half alone")


@pytest.mark.slow
def test_val_fraction_zero_reports_the_training_rows_as_the_reference(known_mi_file, tmp_path, capsys):
    path = known_mi_file(n_rows=1000, mi_nats=0.5, seed=4)
    output_dir = tmp_path / "out"
    status, _, _ = run_main(
        ["--input", path, "--output_dir", str(output_dir), "--n_epoch", "3", "--val_fraction", "0"], capsys
    )
    assert status == 0
    summary = json.loads((output_dir / mi_main.SUMMARY_FILE).read_text())
    assert summary["held_out_rows"] == 0 and summary["rows"] == summary["training_rows"] == 1000
    assert summary["mi_estimate"] == pytest.approx(np.loadtxt(output_dir / mi_data_processing.ESTIMATE_FILE)[-1])
    assert not (output_dir / mi_data_processing.HELD_OUT_FILE).exists()


def assert_reference_files_at_the_top(output_dir, n_epoch):
    """The reference's two files (and the held-out curve) at the top of
    output_dir, n_epoch rows each, finite, the estimate = joint - marginal."""
    estimates = np.loadtxt(output_dir / mi_data_processing.ESTIMATE_FILE, ndmin=1)
    parts = np.loadtxt(output_dir / mi_data_processing.PARTS_FILE, ndmin=2)
    held_out = np.loadtxt(output_dir / mi_data_processing.HELD_OUT_FILE, ndmin=1)
    assert estimates.shape == (n_epoch,) and parts.shape == (n_epoch, 2) and held_out.shape == (n_epoch,)
    assert np.isfinite(estimates).all() and np.isfinite(parts).all() and np.isfinite(held_out).all()
    np.testing.assert_allclose(estimates, parts[:, 0] - parts[:, 1], atol=1e-5)
    return estimates, parts, held_out


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists(SHARED_SAMPLE), reason="the reference sample lives in ../shared")
@pytest.mark.parametrize("folds", [[], ["--folds", "1"]], ids=["default folds", "one split"])
def test_the_reference_run_on_its_own_sample(tmp_path, capsys, folds):
    output_dir = tmp_path / "out"
    status, _, _ = run_main(
        ["--input", SHARED_SAMPLE, "--batch_size", "2", "--n_epoch", "10", "--output_dir", str(output_dir), *folds],
        capsys,
    )
    assert status == 0
    assert_reference_files_at_the_top(output_dir, 10)


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists(SHARED_SAMPLE), reason="the reference sample lives in ../shared")
def test_the_reference_sample_at_the_defaults(tmp_path, capsys):
    output_dir = tmp_path / "out"
    status, out, _ = run_main(["--input", SHARED_SAMPLE, "--n_epoch", "3", "--output_dir", str(output_dir)], capsys)
    assert status == 0 and "not 256: a critic trains on 16 rows" in out.splitlines()[0]
    assert_reference_files_at_the_top(output_dir, 3)


@pytest.mark.slow
def test_default_run_writes_the_critics_mean_at_the_top(known_mi_file, tmp_path, capsys):
    path = known_mi_file(n_rows=1500, mi_nats=0.5, seed=11)
    output_dir = tmp_path / "out"
    status, _, _ = run_main(["--input", path, "--output_dir", str(output_dir), "--n_epoch", "4", "--plot"], capsys)
    assert status == 0
    estimates, parts, held_out = assert_reference_files_at_the_top(output_dir, 4)
    folds = [output_dir / f"fold-{k}" for k in range(1, mi_main.Config.folds + 1)]
    np.testing.assert_allclose(
        estimates, np.mean([np.loadtxt(fold / mi_data_processing.ESTIMATE_FILE) for fold in folds], axis=0), atol=1e-6
    )
    np.testing.assert_allclose(
        parts, np.mean([np.loadtxt(fold / mi_data_processing.PARTS_FILE) for fold in folds], axis=0), atol=1e-6
    )
    np.testing.assert_allclose(
        held_out, np.mean([np.loadtxt(fold / mi_data_processing.HELD_OUT_FILE) for fold in folds], axis=0), atol=1e-6
    )
    assert (output_dir / mi_data_processing.PLOT_FILE).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_streamed_run_from_a_cache(known_mi_file, tmp_path, capsys):
    path = known_mi_file(n_rows=2000, mi_nats=0.5, seed=6)
    flags = ["--input", path, "--cache_dir", str(tmp_path / "cache"), "--n_epoch", "30"]
    status, _, _ = run_main([*flags, "--output_dir", str(tmp_path / "out")], capsys)
    assert status == 0
    summary = json.loads((tmp_path / "out" / mi_main.SUMMARY_FILE).read_text())
    assert summary["rows"] == 2000 and summary["held_out_rows"] == 400
    assert summary["mi_estimate"] == pytest.approx(0.5, abs=0.15)
    assert os.listdir(tmp_path / "cache")


@pytest.mark.slow
def test_a_copula_candidate_is_fitted_once_and_read_on_every_pair(known_mi_file, tmp_path, capsys):
    path = known_mi_file(n_rows=600, mi_nats=0.5, seed=3)
    flags = ["--input", path, "--folds", "2", "--candidates", "rank:tanh,rank:copula", "--hid_width", "16"]
    run_main([*flags, "--n_epoch", "3", "--output_dir", str(tmp_path / "out"), "--quiet"], capsys)
    summary = json.loads((tmp_path / "out" / mi_main.SUMMARY_FILE).read_text())
    rows = np.loadtxt(path, dtype=np.float32)
    for fold in range(2):
        folder = tmp_path / "out" / f"fold-{fold + 1}" / "rank-copula"
        weights = tf.keras.models.load_model(folder / mi_main.CRITIC_FILE).statistics_network.get_weights()
        with np.load(folder / mi_main.TRANSFORM_FILE) as saved:
            mapped = mi_data_processing.make_transform("rank", {"sorted_columns": saved["sorted_columns"]}, 11)
        held_out = mapped(rows[mi_data_processing.fold_indices(600, 2, fold, 0)[1]])
        halves = held_out[: len(held_out) // 2], held_out[len(held_out) // 2 :]
        terms = [copula_pair_terms(weights, half[:, :10], half[:, 10:11]) for half in halves]
        every_pair = np.mean([np.subtract(*every_pair_parts(*each)) for each in terms])
        chosen = summary["fold_winners"][fold] == "rank:copula"
        assert chosen == (summary["fold_estimates"][fold] == pytest.approx(every_pair, abs=1e-5))
        epochs = np.loadtxt(folder / mi_data_processing.HELD_OUT_FILE)  # 4 pairings a row, drawn anew each epoch
        assert len(set(epochs)) == 3 and abs(epochs.mean() - every_pair) < 0.1
    assert "rank:copula" in summary["fold_winners"]
    status, _, err = run_main([*flags, "--estimator", "mine_f", "--output_dir", str(tmp_path / "f")], capsys, 2)
    assert "--estimator mine_f" in err and len(err.strip().splitlines()) == 1


def test_each_reading_counts_its_pairs_a_fitted_critic_every_pair():
    thousand_rows = types.SimpleNamespace(held_out_rows=[np.zeros((1000, 22))] * 10)  # halves of 500 rows
    config = mi_main.parse_flags(["--candidates", "rank:tanh,rank:copula"])  # 5 folds
    winners = ["rank:tanh", "rank:copula", "rank:tanh", "rank:tanh", "rank:copula"]
    trained, fitted = 32 * 500, 500 * 499  # 2**14 // 500 shifts of 500 rows; every pair of 500 rows
    assert mi_main.reading_pairs(config, thousand_rows, winners) == [trained, fitted, trained, trained, fitted]
    one_split = mi_main.parse_flags(["--folds", "1", "--candidates", "rank:tanh,rank:copula"])
    assert mi_main.reading_pairs(one_split, thousand_rows, [["rank:copula", "rank:tanh"]]) == [fitted, trained]
    nine_rows = types.SimpleNamespace(held_out_rows=[np.zeros((9, 22))] * 10)  # halves of 4 and 5 rows
    assert mi_main.reading_pairs(config, nine_rows, winners) == [12] * 5  # trained: 3 shifts, as the smaller half
    file_pairs = mi_main.parse_flags(["--marginal", "file", "--folds", "2"])  # the file's own: one pairing
    assert mi_main.reading_pairs(file_pairs, thousand_rows, ["rank:tanh"] * 2) == [500, 500]


def test_the_final_line_says_when_the_interval_reaches_what_the_pairs_can_certify():
    summary = {"units": "nats", "folds": 5, "mi_estimate": 8.06, "mi_stderr": 0.14, "mi_ci95": [7.67, 8.45]}
    summary |= {"mi_lower_95": 7.76, "true_mi_nats": None, "candidates": ["rank:tanh"], "candidates_dropped": {}}
    config = mi_main.Config(output_dir=None)
    line = mi_main.final_line(config, summary | {"mi_certifiable": 8.29, "mi_limit_binds": True}, [], 1.0)
    assert "its interval reaches 8.29 nats" in line and line.endswith("the MI may be higher, in 1.0 s")
    assert "reaches" not in mi_main.final_line(config, summary, [], 1.0)  # no held-out rows: no limit read
