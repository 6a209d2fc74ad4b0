"""The Python API (mi_main.estimate) and the input kinds: .npy, .npz,
.csv/.tsv with chosen columns, and --units; one good case and the
refusals of each."""

import csv
import json
import math
import os

import numpy as np
import pytest
from conftest import run_main

import mi_data_processing
import mi_main

TINY_RUN = ["--n_epoch", "2", "--batch_size", "128", "--hid_width", "32", "--folds", "2"]


def gaussian(n_rows, mi_nats, data_dim=3, seed=0):
    """x [n, data_dim], z [n, 1] with I(X; Z) = mi_nats: z depends on x's first coordinate."""
    rng = np.random.default_rng(seed)
    rho = math.sqrt(1 - math.exp(-2 * mi_nats))
    x = rng.standard_normal((n_rows, data_dim))
    return x, rho * x[:, :1] + math.sqrt(1 - rho**2) * rng.standard_normal((n_rows, 1))


@pytest.mark.slow
def test_estimate_from_arrays_is_near_the_truth_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    x, z = gaussian(3000, 0.5)
    summary = mi_main.estimate(x, z, n_epoch=20, quiet=True)
    assert summary["status"] == "completed" and summary["units"] == "nats"
    assert summary["hyperparameters"]["data_dim"] == 3 and summary["hyperparameters"]["latent_dim"] == 1
    assert summary["mi_estimate"] == pytest.approx(0.5, abs=0.12)
    assert os.listdir(tmp_path) == []


@pytest.mark.slow
def test_estimate_with_an_output_dir_writes_what_the_command_line_writes(tmp_path):
    x, z = gaussian(800, 0.5)
    summary = mi_main.estimate(
        x,
        z[:, 0],
        output_dir=str(tmp_path / "out"),
        quiet=True,
        n_epoch=2,
        batch_size=128,
        hid_width=32,
        folds=2,
        candidates="rank:tanh",
    )
    assert json.loads((tmp_path / "out" / mi_main.SUMMARY_FILE).read_text())["mi_estimate"] == pytest.approx(
        summary["mi_estimate"]
    )
    assert len(np.loadtxt(tmp_path / "out" / mi_data_processing.ESTIMATE_FILE)) == 2


@pytest.mark.parametrize(
    "arrays, flags, message",
    [
        ("short z", {}, "x has 100 rows and z 99"),
        ("nan", {}, "x, row 8: NaN"),
        ("ok", {"lr": -1}, "argument --lr: must be greater than 0"),
        ("ok", {"n_epochs": 3}, "unknown flag 'n_epochs'"),
        ("ok", {"data_dim": 4}, "--data_dim 4 disagrees with the arrays x and z"),
    ],
)
def test_estimate_refuses_bad_input_with_the_command_lines_message(arrays, flags, message):
    x, z = gaussian(100, 0.5)
    if arrays == "short z":
        z = z[:-1]
    elif arrays == "nan":
        x[7, 1] = np.nan
    with pytest.raises(ValueError, match=message):
        mi_main.estimate(x, z, **flags)


def run_quietly(argv, capsys, tmp_path, status=0):
    return run_main([*argv, *TINY_RUN, "--quiet", "--output_dir", str(tmp_path / "out")], capsys, status)


@pytest.mark.slow
def test_npy_in_the_reference_layout(tmp_path, capsys):
    x, z = gaussian(600, 0.5, data_dim=10)
    np.save(tmp_path / "rows.npy", np.column_stack([x, z, x, np.random.default_rng(1).permutation(z)]))
    status, out, _ = run_quietly(["--input", str(tmp_path / "rows.npy")], capsys, tmp_path)
    assert status == 0 and out.startswith("estimated I(X; Z)")
    np.save(tmp_path / "narrow.npy", x)
    status, _, err = run_quietly(["--input", str(tmp_path / "narrow.npy")], capsys, tmp_path, status=2)
    assert status == 2 and "narrow.npy: 10 columns, expected 22 or 11" in err and len(err.splitlines()) == 1


@pytest.mark.slow
def test_npz_with_arrays_x_and_z(tmp_path, capsys):
    x, z = gaussian(600, 0.5)
    np.savez(tmp_path / "arrays.npz", x=x, z=z)
    status, _, _ = run_quietly(["--input", str(tmp_path / "arrays.npz")], capsys, tmp_path)
    summary = json.loads((tmp_path / "out" / mi_main.SUMMARY_FILE).read_text())
    assert status == 0 and summary["hyperparameters"]["data_dim"] == 3
    np.savez(tmp_path / "no_z.npz", x=x, y=z)
    status, _, err = run_quietly(["--input", str(tmp_path / "no_z.npz")], capsys, tmp_path, status=2)
    assert status == 2 and "no array named 'z' (it holds: x, y)" in err


def write_table(path, header, rows, delimiter=","):
    with open(path, "w", newline="") as stream:
        writer = csv.writer(stream, delimiter=delimiter)
        writer.writerow(header)
        writer.writerows(rows)
    return str(path)


@pytest.mark.slow
def test_csv_columns_by_name_and_by_range(tmp_path, capsys):
    x, z = gaussian(600, 0.5)
    noise = np.random.default_rng(2).standard_normal(600)
    path = write_table(tmp_path / "table.csv", ["a", "b", "c", "noise", "y"], np.column_stack([x, noise, z]))
    for columns in (["--x_columns", "a,b,c", "--z_columns", "y"], ["--x_columns", "0-2", "--z_columns", "4"]):
        status, _, _ = run_quietly(["--input", path, *columns], capsys, tmp_path)
        summary = json.loads((tmp_path / "out" / mi_main.SUMMARY_FILE).read_text())
        assert status == 0 and summary["rows"] == 600 and summary["hyperparameters"]["data_dim"] == 3
    tsv = write_table(tmp_path / "table.tsv", ["a", "b", "c", "y"], np.column_stack([x, z]), delimiter="\t")
    assert (
        run_quietly(["--input", tsv, "--data_dim", "3"], capsys, tmp_path)[0] == 0
    )  # exactly data_dim + latent_dim columns


@pytest.mark.parametrize(
    "change, columns, expected",
    [
        (
            None,
            ["--x_columns", "a,q", "--z_columns", "y"],
            ["--x_columns names no column 'q'", "columns: a, b, c, noise, y"],
        ),
        (None, ["--x_columns", "0-7", "--z_columns", "y"], ["--x_columns names no column '0-7'"]),
        (None, [], ["5 columns; name the columns of x and z with --x_columns and --z_columns"]),
        ("text", ["--x_columns", "a,b,c", "--z_columns", "y"], ["line 4, column 'b': 'oops' is not a number"]),
        ("missing", ["--x_columns", "a,b,c", "--z_columns", "y"], ["line 4, column 'b': missing value"]),
    ],
)
def test_csv_refusals_name_the_column_and_line(tmp_path, capsys, change, columns, expected):
    x, z = gaussian(50, 0.5)
    cells = [[f"{value:.6g}" for value in row] for row in np.column_stack([x, np.zeros(50), z])]
    if change:
        cells[2][1] = "oops" if change == "text" else ""
    path = write_table(tmp_path / "table.csv", ["a", "b", "c", "noise", "y"], cells)
    status, _, err = run_quietly(["--input", path, *columns], capsys, tmp_path, status=2)
    assert status == 2 and len(err.strip().splitlines()) == 1
    for fragment in expected:
        assert fragment in err


def test_units_bits_divides_the_estimates_by_ln_2(known_mi_file, tmp_path, capsys):
    path = known_mi_file(n_rows=600, mi_nats=0.5, seed=13)
    summaries = {}
    for units in ("nats", "bits"):
        status, out, _ = run_main(
            ["--input", path, *TINY_RUN, "--quiet", "--units", units, "--output_dir", str(tmp_path / units)], capsys
        )
        summaries[units] = json.loads((tmp_path / units / mi_main.SUMMARY_FILE).read_text())
        assert status == 0 and f" {units} (95 % interval" in out
    assert summaries["bits"]["units"] == "bits" and summaries["bits"]["true_mi_nats"] == 0.5
    for key in ("mi_estimate", "mi_stderr"):
        assert summaries["bits"][key] == pytest.approx(summaries["nats"][key] / math.log(2), rel=1e-6)
