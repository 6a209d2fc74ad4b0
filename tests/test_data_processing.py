"""Loading and checking the row file, the per-epoch pipeline, the generator."""

import math
import os

import numpy as np
import pytest

from mi_data_processing import InputError, epoch_batches, load_rows, make_known_mi_rows

SHARED_SAMPLE = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "reference_sample", "combined_input.dat")


def write(tmp_path, text, name="rows.dat"):
    path = tmp_path / name
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return str(path)


@pytest.mark.skipif(not os.path.exists(SHARED_SAMPLE), reason="the reference sample lives in ../shared")
def test_reads_the_reference_sample_with_crlf_line_ends():
    rows = load_rows(SHARED_SAMPLE, 22)
    assert rows.shape == (20, 22) and rows.dtype == np.float32
    np.testing.assert_array_equal(rows, np.loadtxt(SHARED_SAMPLE, dtype=np.float32))


def test_skips_blank_and_comment_lines(tmp_path):
    path = write(tmp_path, "# header\n1 2 3\n\n4 5 6  # trailing note\r\n")
    np.testing.assert_array_equal(load_rows(path, 3), [[1, 2, 3], [4, 5, 6]])


@pytest.mark.parametrize(
    "text, message",
    [
        ("1 2 3\n4 5\n", "line 2: 2 columns, expected 3"),
        ("1 2 3\n4 five 6\n", "line 2: 'five' is not a number"),
        ("1 2 3\n\n4 nan 6\n", "line 3: NaN or infinity"),
        ("1 2 inf\n", "line 1: NaN or infinity"),
        ("1 2 1e39\n", "line 1: NaN or infinity"),
        ("", "no data rows"),
        ("# only a comment\n\n", "no data rows"),
        (b"\x00\xff\xfe binary", "not a text file"),
    ],
)
def test_bad_content_names_the_file_and_line(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(InputError) as raised:
        load_rows(path, 3)
    assert str(raised.value).startswith(path)
    assert message in str(raised.value)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        load_rows(str(tmp_path / "absent.dat"), 22)


def epochs_as_arrays(rows, batch_size, seed, first_epoch, n_epoch):
    return [
        np.concatenate([full.numpy().reshape(-1, rows.shape[1]), last.numpy()])
        for full, last in epoch_batches(rows, batch_size, seed, first_epoch, n_epoch)
    ]


def test_every_epoch_visits_every_row_once_in_a_new_order():
    rows = np.arange(103 * 2, dtype=np.float32).reshape(103, 2)  # 103 = 6 batches of 16 + 7
    epochs = epochs_as_arrays(rows, 16, seed=5, first_epoch=0, n_epoch=4)
    assert len(epochs) == 4
    for seen in epochs:
        assert seen.shape == rows.shape
        np.testing.assert_array_equal(np.sort(seen[:, 0]), rows[:, 0])  # each row exactly once
        np.testing.assert_array_equal(seen[:, 1] - seen[:, 0], 1)  # rows kept whole
    orders = [tuple(seen[:, 0]) for seen in epochs]
    assert len(set(orders)) == 4 and tuple(rows[:, 0]) not in orders


def test_epoch_order_depends_only_on_seed_and_epoch():
    rows = np.arange(50, dtype=np.float32).reshape(50, 1)
    whole_run = epochs_as_arrays(rows, 8, seed=1, first_epoch=0, n_epoch=5)
    resumed = epochs_as_arrays(rows, 8, seed=1, first_epoch=3, n_epoch=5)
    np.testing.assert_array_equal(whole_run[3], resumed[0])
    np.testing.assert_array_equal(whole_run[4], resumed[1])
    other_seed = epochs_as_arrays(rows, 8, seed=2, first_epoch=0, n_epoch=1)
    assert not np.array_equal(whole_run[0], other_seed[0])


@pytest.mark.parametrize("mi_nats", [0.0, 0.5, 2.0])
def test_generator_has_the_mutual_information_it_was_asked_for(mi_nats):
    n_rows = 200_000
    rows, description = make_known_mi_rows(n_rows, mi_nats, seed=3)
    assert rows.shape == (n_rows, 22) and description["true_mi_nats"] == mi_nats
    x, z, x_bar, z_bar = rows[:, :10], rows[:, 10], rows[:, 11:21], rows[:, 21]
    # For jointly Gaussian (X, Z): I = -0.5 ln(1 - R^2), R^2 of the regression of z on x.
    coefficients, *_ = np.linalg.lstsq(x, z, rcond=None)
    r_squared = 1.0 - np.var(z - x @ coefficients) / np.var(z)
    assert -0.5 * math.log(1.0 - r_squared) == pytest.approx(mi_nats, abs=0.01)
    # marginal half: x repeated, z_bar independent of x with z's spread
    np.testing.assert_array_equal(x_bar, x)
    assert abs(np.corrcoef(z, z_bar)[0, 1]) < 0.01
    assert np.std(z_bar) == pytest.approx(np.std(z), rel=0.01)
