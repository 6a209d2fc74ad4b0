"""Nothing lost, nothing crashes: divergence, interrupts, full disks,
concurrent runs, reproducibility and malformed input."""

import errno
import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO, run_main
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mi_data_processing
import mi_main
from mi_data_processing import InputError, load_rows

# One split (--folds 1): these tests read the files of a single critic in OUTPUT_DIR.
SMALL_RUN = ["--folds", "1", "--candidates", "rank:tanh", "--batch_size", "128", "--hid_width", "32"]


@pytest.fixture
def small_file(known_mi_file):
    return known_mi_file(n_rows=1000, mi_nats=0.5, seed=5)


@pytest.mark.slow
def test_divergence_keeps_the_completed_epochs_and_exits_3(small_file, tmp_path, capsys):
    # relu: with tanh's bounded hidden units even this rate keeps every value finite
    status, out, err = run_main(
        [
            "--input",
            small_file,
            "--output_dir",
            str(tmp_path),
            "--n_epoch",
            "4",
            "--optimizer",
            "sgd",
            "--lr",
            "1e9",
            "--checkpoint_seconds",
            "0",
            *SMALL_RUN,
            "--candidates",
            "rank:relu",
        ],
        capsys,
        status=3,
    )
    assert status == 3
    assert err.strip().count("\n") == 0 and "smaller --lr" in err
    summary = json.loads((tmp_path / mi_main.SUMMARY_FILE).read_text())
    assert summary["status"] == "diverged" and summary["diverged_in_epoch"] == summary["epochs_completed"] + 1
    estimates = np.array((tmp_path / mi_data_processing.ESTIMATE_FILE).read_text().split(), dtype=float)
    assert len(estimates) == summary["epochs_completed"] and np.isfinite(estimates).all()


@pytest.mark.slow
@pytest.mark.parametrize("signal_number", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_stops_after_the_epoch_and_keeps_its_results(known_mi_file, tmp_path, signal_number):
    path = known_mi_file(n_rows=4000, mi_nats=0.5, seed=3)
    process = subprocess.Popen(
        [
            sys.executable,
            os.path.join(REPO, "mi_main.py"),
            "--input",
            path,
            "--output_dir",
            str(tmp_path),
            "--n_epoch",
            "100000",
            "--folds",
            "1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    for line in process.stdout:
        if line.startswith("epoch    3/"):
            process.send_signal(signal_number)
            break
    process.communicate(timeout=120)
    assert process.returncode == 128 + signal_number
    summary = json.loads((tmp_path / mi_main.SUMMARY_FILE).read_text())
    assert summary["status"] == "interrupted" and summary["epochs_completed"] >= 3
    assert len(np.loadtxt(tmp_path / mi_data_processing.ESTIMATE_FILE)) == summary["epochs_completed"]
    assert len(np.loadtxt(tmp_path / mi_data_processing.HELD_OUT_FILE)) == summary["epochs_completed"]
    assert f"ckpt-{summary['epochs_completed']}.index" in os.listdir(tmp_path / mi_main.CHECKPOINT_DIR)
    assert not (tmp_path / mi_data_processing.LOCK_FILE).exists()


def test_a_failed_write_leaves_the_previous_files_whole(small_file, tmp_path, capsys, monkeypatch):
    flags = ["--input", small_file, "--output_dir", str(tmp_path), "--n_epoch", "2", *SMALL_RUN]
    assert run_main(flags, capsys)[0] == 0
    before = {name: (tmp_path / name).read_bytes() for name in [mi_data_processing.ESTIMATE_FILE, mi_main.SUMMARY_FILE]}

    def disk_full(path, rows):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(mi_data_processing, "save_rows", disk_full)
    status, out, err = run_main([*flags, "--n_epoch", "3"], capsys, status=1)
    assert status == 1 and "No space left on device" in err
    assert {name: (tmp_path / name).read_bytes() for name in before} == before


def test_a_second_run_into_the_same_directory_is_refused(small_file, tmp_path, capsys):
    (tmp_path / mi_data_processing.LOCK_FILE).write_text(f"{os.getppid()}\n")  # a live process
    status, out, err = run_main(
        ["--input", small_file, "--output_dir", str(tmp_path), "--n_epoch", "1", *SMALL_RUN], capsys, status=2
    )
    assert status == 2 and f"process {os.getppid()}" in err


def test_a_stale_lock_is_taken_over(small_file, tmp_path, capsys):
    dead = subprocess.Popen(["true"])
    dead.wait()
    (tmp_path / mi_data_processing.LOCK_FILE).write_text(f"{dead.pid}\n")
    status, _, _ = run_main(
        ["--input", small_file, "--output_dir", str(tmp_path), "--n_epoch", "1", *SMALL_RUN], capsys
    )
    assert status == 0
    assert not (tmp_path / mi_data_processing.LOCK_FILE).exists()


def test_same_seed_gives_identical_estimate_files(small_file, tmp_path, capsys):
    for name in ["first", "second"]:
        run_main(["--input", small_file, "--output_dir", str(tmp_path / name), "--n_epoch", "3", *SMALL_RUN], capsys)
    for name in [mi_data_processing.ESTIMATE_FILE, mi_data_processing.PARTS_FILE, mi_data_processing.HELD_OUT_FILE]:
        assert (tmp_path / "first" / name).read_bytes() == (tmp_path / "second" / name).read_bytes()


TOKENS = st.sampled_from(
    [
        "1",
        "-2.5",
        "1e308",
        "1e-320",
        "3.4e39",
        "nan",
        "NaN",
        "inf",
        "-Infinity",
        "x",
        "1,5",
        "0x10",
        "1e",
        "--1",
        "",
        "\t",
        "#",
        "# note",
        "\ufeff",
        "\r",
        "\x00",
        "é",
        "1_000",
    ]
)
LINES = st.lists(TOKENS, min_size=0, max_size=5).map(" ".join)
FILES = st.one_of(
    st.lists(LINES, max_size=6).map(lambda lines: "\n".join(lines).encode("utf-8")),
    st.lists(LINES, max_size=6).map(lambda lines: "\r\n".join(lines).encode("utf-8")),
    st.binary(max_size=64),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(content=FILES)
def test_malformed_files_load_or_are_refused_with_a_line(tmp_path, content):
    path = tmp_path / "fuzz.dat"
    path.write_bytes(content)
    try:
        rows = load_rows(str(path), (4, 2))
    except InputError as error:
        message = str(error)
        assert message.startswith(str(path)) and "\n" not in message
    else:
        assert rows.dtype == np.float32 and rows.shape[1] in (4, 2) and np.isfinite(rows).all()
