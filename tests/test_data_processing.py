"""Loading and checking the row file, the per-epoch pipeline, the generator."""

import math
import os

import numpy as np
import pytest
from epoch_rows import epoch_batches, memory_rows

import mi_data_processing
from mi_data_processing import (
    DISTORTIONS,
    InputError,
    build_cache,
    fit_transform_parameters,
    load_rows,
    make_known_mi_rows,
    make_transform,
    read_cached_rows,
    split_indices,
    streamed_epoch,
)

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


def fit_transform(kind, training_rows, sample_width):
    return make_transform(kind, fit_transform_parameters(kind, training_rows, sample_width), sample_width)


def epochs_as_arrays(rows, batch_size, seed, first_epoch, n_epoch, resample_latent_dim=0):
    """Each epoch's real rows, in the order trained (one critic)."""
    epochs = []
    for batches, batch_rows in epoch_batches([rows], batch_size, seed, first_epoch, n_epoch, resample_latent_dim):
        epochs.append(
            np.concatenate([batch[:size] for batch, size in zip(batches.numpy()[0], batch_rows.numpy(), strict=True)])
        )
    return epochs


def test_several_critics_train_on_the_smallest_count_each_from_its_own_rows():
    sizes = (40, 41, 39)
    critic_rows = [
        np.full((n, 2), k, np.float32) + np.arange(n, dtype=np.float32)[:, None] / 100 for k, n in enumerate(sizes)
    ]
    batches, batch_rows = next(iter(epoch_batches(critic_rows, 16, seed=0, first_epoch=0, n_epoch=1)))
    assert batches.shape == (3, 3, 16, 2) and list(batch_rows.numpy()) == [16, 16, 7]
    for k in range(3):
        real = np.concatenate(
            [batch[:size] for batch, size in zip(batches.numpy()[k], batch_rows.numpy(), strict=True)]
        )
        assert len(set(real[:, 0])) == 39 and np.all(np.floor(real[:, 0]) == k)  # 39 distinct rows of its own


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


def gaussian_mi_by_regression(x, z):
    coefficients, *_ = np.linalg.lstsq(np.column_stack([x, np.ones(len(x))]), z, rcond=None)
    residual = z - np.column_stack([x, np.ones(len(x))]) @ coefficients
    return -0.5 * math.log(np.var(residual) / np.var(z))


def test_correlated_generator_has_the_mutual_information_it_was_asked_for():
    rows, _ = make_known_mi_rows(200_000, 1.0, seed=4, correlation=0.6)
    correlations = np.corrcoef(rows[:, :10], rowvar=False)[np.triu_indices(10, 1)]
    assert correlations == pytest.approx(0.6, abs=0.01)
    assert gaussian_mi_by_regression(rows[:, :10], rows[:, 10]) == pytest.approx(1.0, abs=0.01)


@pytest.mark.parametrize("distortion", sorted(set(DISTORTIONS) - {"identity"}))
def test_distortions_bend_each_coordinate_of_the_same_draw(distortion):
    plain, _ = make_known_mi_rows(1000, 1.0, seed=5)
    bent, description = make_known_mi_rows(1000, 1.0, seed=5, x_distortion=distortion, z_distortion=distortion)
    np.testing.assert_allclose(bent, DISTORTIONS[distortion](plain))
    assert description["true_mi_nats"] == 1.0 and description["x_distortion"] == distortion
    # strictly increasing, so invertible: the MI is unchanged
    grid = np.linspace(-3, 3, 101)
    assert np.all(np.diff(DISTORTIONS[distortion](grid)) > 0)


def test_held_out_split_is_disjoint_sized_and_fixed_by_the_seed():
    training, held_out = split_indices(1000, 0.2, seed=7)
    assert len(training) == 800 and len(held_out) == 200
    assert not set(training) & set(held_out)
    np.testing.assert_array_equal(np.sort(np.concatenate([training, held_out])), np.arange(1000))
    again, _ = split_indices(1000, 0.2, seed=7)
    other, _ = split_indices(1000, 0.2, seed=8)
    np.testing.assert_array_equal(training, again)
    assert not np.array_equal(training, other)
    everything, nothing = split_indices(1000, 0.0, seed=7)
    assert len(everything) == 1000 and len(nothing) == 0


@pytest.mark.parametrize("kind", ["standardize", "rank", "asinh"])
def test_transform_is_monotone_fitted_on_training_rows_and_the_same_on_both_halves(kind):
    rng = np.random.default_rng(0)
    training = rng.standard_exponential((500, 4)) ** 3  # skewed, heavy-tailed
    transform = fit_transform(kind, training, 2)
    mapped = transform(training)
    for column in range(4):
        order = np.argsort(training[:, column])
        assert np.all(np.diff(mapped[order, column]) >= 0)
    # the map of column j is the same in both halves
    probe = np.column_stack([training[:50, :2], training[:50, :2]])
    np.testing.assert_array_equal(transform(probe)[:, :2], transform(probe)[:, 2:])
    # fitted on the training rows only: other rows do not change the map
    np.testing.assert_array_equal(fit_transform(kind, training, 2)(training[:10]), mapped[:10])
    if kind == "asinh":  # centred on the median; linear near it, the cubed exponential's tail on a log scale
        assert np.median(mapped[:, 0]) == pytest.approx(0.0, abs=1e-6)
        spread = fit_transform_parameters(kind, training, 2)["spread"][0]
        scaled = (training[:, 0] - np.median(training[:, 0])) / spread
        near = np.abs(scaled) < 1
        np.testing.assert_allclose(mapped[near, 0], scaled[near], rtol=0.02)
        assert np.abs(scaled).max() > 100 and np.abs(mapped).max() < 20
    if kind == "rank":
        assert np.abs(mapped[:, 0].mean()) < 0.05 and mapped[:, 0].std() == pytest.approx(1.0, abs=0.05)
        assert np.isfinite(transform(training * 100)).all()  # beyond the fitted range: clamped
    if kind == "standardize":
        np.testing.assert_allclose(mapped[:, :2].mean(axis=0), 0, atol=1e-5)
        np.testing.assert_allclose(mapped[:, :2].std(axis=0), 1, atol=1e-4)


def test_marginal_pairs_keep_x_bar_and_take_another_of_the_critics_own_rows_z_bar():
    index = np.arange(10, dtype=np.float32)
    rows = [
        np.column_stack([index, index + 100, index + 200, index + 300])[:count] + 1000 * k
        for k, count in enumerate((10, 7))
    ]  # two critics, 10 and 7 rows: each epoch trains 7 of each
    batches, batch_rows = next(iter(epoch_batches(rows, 16, seed=0, first_epoch=3, n_epoch=4, resample_latent_dim=1)))
    assert list(batch_rows.numpy()) == [7]
    for k in range(2):
        real = batches.numpy()[k, 0, :7] - 1000 * k
        assert len(set(real[:, 0])) == 7 and set(real[:, 0]) <= set(index)  # each trained row once, its own
        np.testing.assert_array_equal(real[:, 2], real[:, 0] + 200)  # x_bar kept with its row
        assert set(real[:, 3] - 300) <= set(index[: len(rows[k])])  # the critic's own z_bar values
        assert np.all(real[:, 3] != real[:, 0] + 300)  # never a row's own


def test_a_critic_trains_the_same_whatever_else_shares_its_stack():
    rng = np.random.default_rng(2)
    rows = [rng.standard_normal((50, 4)).astype(np.float32) for _ in range(3)]
    data = memory_rows(rows, 16, seed=5, n_epoch=1, resample_latent_dim=1)
    together = next(iter(data.chunks(0, [0, 1, 2])))[0].numpy()
    alone = next(iter(data.chunks(0, [2])))[0].numpy()
    np.testing.assert_array_equal(together[2], alone[0])


def test_a_long_epoch_comes_in_chunks_of_bounded_rows(monkeypatch):
    monkeypatch.setattr(mi_data_processing, "CHUNK_ROWS", 32)
    rows = np.column_stack([np.arange(100)] * 2).astype(np.float32)
    data = memory_rows([rows], 16)
    assert data.chunk_layout([0]) == (100, 2, 4)  # 7 steps of 16 rows, at most 2 a chunk
    chunks = list(data.chunks(0, [0]))
    assert [tuple(batches.shape) for batches, _ in chunks] == [(1, 2, 16, 2)] * 3 + [(1, 1, 16, 2)]
    seen = np.concatenate(
        [batches.numpy()[0, step, :size] for batches, sizes in chunks for step, size in enumerate(sizes.numpy())]
    )
    np.testing.assert_array_equal(np.sort(seen[:, 0]), np.arange(100))


def test_resampled_epochs_pair_x_bar_with_a_new_z_bar_every_epoch():
    n_rows = 64
    index = np.arange(n_rows, dtype=np.float32)
    rows = np.column_stack([index, index, index, index + 1000])  # x, z, x_bar, z_bar; z_bar tells its row
    epochs = epochs_as_arrays(rows, 16, seed=0, first_epoch=0, n_epoch=3, resample_latent_dim=1)
    pairings = []
    for seen in epochs:
        np.testing.assert_array_equal(seen[:, 0], seen[:, 2])  # x_bar kept with its row
        partner = seen[:, 3] - 1000
        np.testing.assert_array_equal(np.sort(partner), index)  # a permutation of the rows
        assert np.all(partner != seen[:, 2])
        pairings.append(tuple(partner[np.argsort(seen[:, 2])]))
    assert len(set(pairings)) == 3


def test_cache_matches_the_loader_and_is_reused_until_the_source_changes(tmp_path):
    rows, _ = make_known_mi_rows(300, 0.5, seed=9)
    path = str(tmp_path / "rows.dat")
    np.savetxt(path, rows)
    cache_path, count, width = build_cache(path, (22, 11), str(tmp_path / "cache"))
    assert (count, width) == (300, 22)
    np.testing.assert_array_equal(read_cached_rows(cache_path, width, 0, count), load_rows(path, 22))
    built = os.path.getmtime(cache_path)
    assert build_cache(path, (22, 11), str(tmp_path / "cache"))[1] == 300 and os.path.getmtime(cache_path) == built
    np.savetxt(path, rows[:200])  # the source changes: size and mtime
    os.utime(path, ns=(os.stat(path).st_atime_ns, os.stat(path).st_mtime_ns + 10**9))
    assert build_cache(path, (22, 11), str(tmp_path / "cache"))[1] == 200


def test_cache_of_a_file_only_the_careful_loader_reads(tmp_path):
    path = write(tmp_path, "\ufeff# made by hand\n1  2\t3\n\n4 5 6\r\n")
    cache_path, count, width = build_cache(path, 3, str(tmp_path / "cache"))
    np.testing.assert_array_equal(read_cached_rows(cache_path, width, 0, count), [[1, 2, 3], [4, 5, 6]])
    with pytest.raises(InputError, match="line 2: 'x' is not a number"):
        build_cache(write(tmp_path, "1 2 3\n4 x 6\n", "bad.dat"), 3, str(tmp_path / "cache"))


def test_corrupt_cache_is_refused_with_a_clear_error(tmp_path):
    path = write(tmp_path, "1 2 3\n4 5 6\n")
    cache_path, _, _ = build_cache(path, 3, str(tmp_path / "cache"))
    with open(cache_path, "r+b") as stream:
        stream.truncate(10)
    with pytest.raises(InputError, match="cache is corrupt.*delete it"):
        build_cache(path, 3, str(tmp_path / "cache"))
    with open(cache_path + ".json", "w") as stream:
        stream.write("{not json")
    with pytest.raises(InputError, match="description is corrupt"):
        build_cache(path, 3, str(tmp_path / "cache"))


def test_streamed_and_in_memory_epochs_see_every_row_once(tmp_path, monkeypatch):
    monkeypatch.setattr(mi_data_processing, "SHARD_ROWS", 16)  # several shards from a small file
    n_rows = 96
    rows = np.column_stack([np.arange(n_rows)] * 4).astype(np.float32)
    path = str(tmp_path / "rows.dat")
    np.savetxt(path, rows)
    cache_path, count, width = build_cache(path, 4, str(tmp_path / "cache"))
    in_memory = epochs_as_arrays(rows, 8, seed=0, first_epoch=0, n_epoch=2)
    orders = []
    for epoch in range(2):
        chunks = streamed_epoch(
            cache_path, width, count, 8, seed=0, epoch=epoch, shuffle_buffer=32, transform=lambda raw: raw
        )
        seen = np.concatenate([full.numpy().reshape(-1, 4) for full, last in chunks])
        np.testing.assert_array_equal(np.sort(seen[:, 0]), rows[:, 0])
        np.testing.assert_array_equal(np.sort(in_memory[epoch][:, 0]), rows[:, 0])
        orders.append(tuple(seen[:, 0]))
    assert orders[0] != orders[1]


def test_epoch_pipelines_run_without_autotuning(tmp_path):
    # An iterator of an autotuned pipeline sometimes waited at its end for the tuner's next wake, up to seconds.
    rows = np.random.default_rng(0).standard_normal((300, 4)).astype(np.float32)
    assert epoch_batches([rows], 64, 0, 0, 2).options().autotune.enabled is False
    path = str(tmp_path / "rows.dat")
    np.savetxt(path, rows)
    cache_path, total_rows, width = build_cache(path, 4, str(tmp_path / "cache"))
    streamed = streamed_epoch(cache_path, width, total_rows, 64, 0, 0, 32, lambda values: values)
    assert streamed.options().autotune.enabled is False
