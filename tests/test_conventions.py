"""TensorFlow's conventions around a run: TensorBoard events, checkpoints
and resume, progress, the plot, flag files and the saved critic."""

import importlib.util
import sys

import numpy as np
import pytest
import tensorflow as tf
from conftest import logged_scalars, run_main

import mi_data_processing
import mi_main
from mi_data_processing import make_transform
from mi_model import MineModel

# One split (--folds 1): these tests read the files of a single critic in OUTPUT_DIR.
SMALL_RUN = ["--folds", "1", "--candidates", "rank:tanh", "--batch_size", "128", "--hid_width", "32"]


@pytest.fixture
def small_file(known_mi_file):
    return known_mi_file(n_rows=1000, mi_nats=0.5, seed=5)


@pytest.mark.slow
def test_event_files_hold_the_scalars(small_file, tmp_path):
    run_main(["--input", small_file, "--output_dir", str(tmp_path), "--n_epoch", "3", *SMALL_RUN])
    values = logged_scalars(tmp_path / "logs")
    for tag in [
        "estimate/training_rows",
        "estimate/held_out",
        "parts/joint",
        "parts/marginal",
        "speed/rows_per_second",
        "learning_rate",
    ]:
        assert sorted(values[tag]) == [1, 2, 3], tag
    assert "hyperparameters" in values


def test_interrupted_and_resumed_run_equals_an_uninterrupted_one(small_file, tmp_path, monkeypatch):
    whole, interrupted = tmp_path / "whole", tmp_path / "interrupted"
    flags = ["--input", small_file, "--n_epoch", "6", "--checkpoint_seconds", "0", *SMALL_RUN]
    run_main([*flags, "--output_dir", str(whole)])

    real_train_epoch = mi_main.CompiledCritics.train_epoch
    calls = []

    def stops_in_epoch_4(*arguments):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real_train_epoch(*arguments)

    monkeypatch.setattr(mi_main.CompiledCritics, "train_epoch", stops_in_epoch_4)
    with pytest.raises(KeyboardInterrupt):
        run_main([*flags, "--output_dir", str(interrupted)])
    monkeypatch.undo()
    assert tf.train.latest_checkpoint(str(interrupted / "checkpoints")).endswith("ckpt-3")

    run_main([*flags, "--output_dir", str(interrupted), "--resume"])
    for name in [mi_data_processing.ESTIMATE_FILE, mi_data_processing.PARTS_FILE, mi_data_processing.HELD_OUT_FILE]:
        resumed, uninterrupted = np.loadtxt(interrupted / name), np.loadtxt(whole / name)
        assert len(resumed) == 6
        np.testing.assert_allclose(resumed, uninterrupted, atol=1e-6)
    resumed_critic = tf.keras.models.load_model(interrupted / mi_main.CRITIC_FILE)
    whole_critic = tf.keras.models.load_model(whole / mi_main.CRITIC_FILE)
    for resumed_weight, whole_weight in zip(resumed_critic.weights, whole_critic.weights, strict=True):
        np.testing.assert_allclose(resumed_weight.numpy(), whole_weight.numpy(), atol=1e-6)


def test_checkpoint_every_zero_writes_none(small_file, tmp_path):
    run_main(
        ["--input", small_file, "--output_dir", str(tmp_path), "--n_epoch", "2", "--checkpoint_every", "0", *SMALL_RUN]
    )
    assert tf.train.latest_checkpoint(str(tmp_path / "checkpoints")) is None
    assert (tmp_path / mi_main.SUMMARY_FILE).exists()


def test_resume_refuses_another_shape_or_input(small_file, known_mi_file, tmp_path, capsys):
    flags = ["--input", small_file, "--output_dir", str(tmp_path), "--n_epoch", "2", *SMALL_RUN]
    run_main(flags, capsys)
    status, out, err = run_main([*flags, "--resume", "--hid_width", "16"], capsys, status=2)
    assert status == 2 and "--hid_width 32, not 16" in err
    other = known_mi_file(n_rows=1000, mi_nats=0.5, seed=6, name="other.dat")
    status, out, err = run_main([*flags, "--resume", "--input", other], capsys, status=2)
    assert status == 2 and "not the input file" in err
    status, out, err = run_main(
        ["--input", small_file, "--output_dir", str(tmp_path / "empty"), "--resume"], capsys, status=2
    )
    assert status == 2 and "no checkpoint" in err


def test_flags_file_round_trip(small_file, tmp_path):
    argv = [
        "--input",
        small_file,
        "--output_dir",
        str(tmp_path),
        "--n_epoch",
        "2",
        "--no-jit",
        "--lr",
        "0.002",
        *SMALL_RUN,
    ]
    run_main(argv)
    written = (tmp_path / mi_main.FLAGS_FILE).read_text()
    assert "--no-jit" in written and "--lr 0.002" in written
    assert mi_main.parse_flags([f"@{tmp_path / mi_main.FLAGS_FILE}"]) == mi_main.parse_flags(argv)


def test_quiet_prints_only_the_final_line(small_file, tmp_path, capsys):
    status, out, err = run_main(
        ["--input", small_file, "--output_dir", str(tmp_path), "--n_epoch", "2", "--quiet", *SMALL_RUN], capsys
    )
    assert status == 0
    assert len(out.strip().splitlines()) == 1 and out.startswith("estimated I(X; Z)")


@pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None, reason="matplotlib is optional")
def test_plot_is_a_png(small_file, tmp_path):
    run_main(["--input", small_file, "--output_dir", str(tmp_path), "--n_epoch", "2", "--plot", *SMALL_RUN])
    assert (tmp_path / mi_data_processing.PLOT_FILE).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_without_matplotlib_stops_before_training(small_file, tmp_path, capsys, monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *rest: None if name == "matplotlib" else real_find_spec(name, *rest)
    )
    status, out, err = run_main(
        ["--input", small_file, "--output_dir", str(tmp_path / "out"), "--plot"], capsys, status=2
    )
    assert status == 2
    assert err.strip() == "mi_main.py: error: --plot needs matplotlib, which is not installed: pip install matplotlib"
    assert not (tmp_path / "out").exists()


def test_saved_critic_reloads_with_the_trained_weights_and_bound(small_file, tmp_path, capsys):
    run_main(["--input", small_file, "--output_dir", str(tmp_path), "--n_epoch", "3", *SMALL_RUN])
    critic = tf.keras.models.load_model(tmp_path / mi_main.CRITIC_FILE)
    trained = MineModel(10, 1, 32, 1, activation="tanh")
    latest = tf.train.latest_checkpoint(str(tmp_path / "checkpoints"))
    tf.train.Checkpoint(critics=tf.train.Checkpoint(model=trained)).read(latest).expect_partial()
    with np.load(tmp_path / mi_main.TRANSFORM_FILE) as saved:
        transform = make_transform(
            str(saved["kind"]), {name: saved[name] for name in saved.files if name != "kind"}, 11
        )
    rows = tf.constant(transform(np.loadtxt(small_file))[None])
    np.testing.assert_allclose(critic(rows)[0].numpy(), trained(rows)[0].numpy(), rtol=1e-6)

    status, out, err = run_main(["--input", small_file, "--evaluate_only", str(tmp_path / mi_main.CRITIC_FILE)], capsys)
    assert status == 0 and "nats" in out
    again = mi_main.main(["--input", small_file, "--evaluate_only", str(tmp_path / mi_main.CRITIC_FILE)])
    reported = out.strip().splitlines()[-1]
    assert reported.startswith("bound of") and float(reported.split(": ")[1].split()[0]) == pytest.approx(
        again["mi_estimate"], abs=1e-4
    )


def test_evaluate_only_applies_the_column_checks(small_file, tmp_path, capsys):
    run_main(["--input", small_file, "--output_dir", str(tmp_path), "--n_epoch", "1", *SMALL_RUN])
    bad = tmp_path / "bad.dat"
    bad.write_text("1 2 3\n")
    status, out, err = run_main(
        ["--input", str(bad), "--evaluate_only", str(tmp_path / mi_main.CRITIC_FILE)], capsys, status=2
    )
    assert status == 2 and "line 1: 3 columns" in err


def test_terminal_gets_a_progress_bar_instead_of_epoch_lines(small_file, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    status, out, err = run_main(
        ["--input", small_file, "--output_dir", str(tmp_path), "--n_epoch", "3", *SMALL_RUN], capsys
    )
    assert status == 0
    assert "3/3" in out and "held-out" in out
    assert not any(line.startswith("epoch ") for line in out.splitlines())
