"""The independence test (--permutations): each fold's p-value exact with a critic fixed without its rows, the
folds' combination valid however they depend on each other, the estimate unchanged by the test, and the test
unchanged by which candidates the plan drops. Its size and power over many data sets: tests/bench_independence.py."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf
from conftest import REPO, run_main
from test_adaptive import SMALL_RUN, judge_early, small_file  # noqa: F401 (a fixture)

import mi_main
from mi_layers import StatisticsNetwork
from mi_model import combined_p_value, drawn_permutations, max_t, permutation_p_value, permuted_sums

ALPHA = 0.05


def fold_p_value(scores, x, z, permutations):
    """A fold's p-value: the max-T of one or several critics (score functions) on the same permutations."""
    return permutation_p_value(max_t([permuted_sums(score, x, z, permutations) for score in scores]))


def test_a_fold_p_value_with_fixed_critics_is_uniform_on_null_rows():
    networks = [StatisticsNetwork(16, 1, activation, 1, seed) for activation, seed in (("tanh", 1), ("relu", 2))]

    def scorer(network):
        compiled = tf.function(network, input_signature=[tf.TensorSpec([1, None, 4], tf.float32)])
        return lambda x, z: compiled(np.concatenate([x, z], axis=1)[None].astype(np.float32)).numpy()[0, :, 0]

    generator, p_values, scores = np.random.default_rng(0), [], [scorer(network) for network in networks]
    for fold in range(1000):
        x, z = generator.normal(size=(24, 3)), generator.standard_t(2, size=(24, 1))
        permutations = drawn_permutations(24, 99, (fold,))
        p_values.append(fold_p_value(scores, x, z, permutations))
    p_values = np.array(p_values)
    assert 0.029 <= np.mean(p_values <= ALPHA) <= 0.071
    assert 0.4 <= np.mean(p_values <= 0.5) <= 0.6 and p_values.min() >= 0.01  # the identity counts: p >= 1 / 100


def test_permutations_are_drawn_from_the_seed_alone_the_identity_first():
    drawn = drawn_permutations(30, 9, (4, 1))
    assert (drawn[0] == np.arange(30)).all() and (np.sort(drawn, axis=1) == np.arange(30)).all()
    assert (drawn == drawn_permutations(30, 9, (4, 1))).all() and (drawn != drawn_permutations(30, 9, (4, 2))).any()


def test_pairings_that_make_the_same_pairs_tie_exactly_and_a_tie_counts_as_an_exceedance():
    generator = np.random.default_rng(3)
    x, z = generator.normal(size=(40, 2)), generator.integers(0, 2, size=(40, 1)).astype(float)  # z ties
    same_z = np.flatnonzero(z[:, 0] == z[0, 0])
    swapped = np.arange(40)
    swapped[same_z[:2]] = same_z[1::-1]  # two rows of equal z trade places: the same pairs
    pairings = np.stack([np.arange(40), swapped, np.roll(np.arange(40), 1)])
    sums = permuted_sums(lambda x, z: np.sin(3 * x[:, 0] * z[:, 0]) + x[:, 1] ** 3, x, z, pairings)
    assert sums[1] == sums[0]
    assert permutation_p_value(sums[:2]) == 1.0


def test_the_whole_matrix_and_the_permuted_pairs_give_the_same_sums():
    generator = np.random.default_rng(5)
    x, z = generator.normal(size=(50, 2)), generator.normal(size=(50, 1))

    def score(x, z):
        return np.tanh(x @ [1.0, -2.0] * z[:, 0])

    few, many = drawn_permutations(50, 9, (0,)), drawn_permutations(50, 99, (0,))  # pairs scored: 500, 2,500
    direct = np.array([score(x, z[pairing]).astype(np.float64) for pairing in few]).sum(axis=1)
    np.testing.assert_allclose(permuted_sums(score, x, z, few) / 2**24, direct, atol=1e-4)
    np.testing.assert_array_equal(permuted_sums(score, x, z, many)[:10], permuted_sums(score, x, z, few))


def shared_training_critic_p_values(generator, folds=5, rows=30, permutations=99):
    """The fold p-values of one null data set in a toy model of cross-fitting: fold k's critic, tanh(c_k x z), is
    fitted on the other folds' rows (c_k their x-z correlation, scaled), so the folds' p-values depend on each
    other as the run's do."""
    x, z = generator.normal(size=(folds, rows, 1)), generator.normal(size=(folds, rows, 1))
    correlations = (x * z).mean(axis=(1, 2))
    p_values = []
    for fold in range(folds):
        slope = 5 * np.sqrt(rows) * (correlations.sum() - correlations[fold])

        def score(x, z, slope=slope):
            return np.tanh(slope * x[:, 0] * z[:, 0])

        pairings = drawn_permutations(rows, permutations, (int(generator.integers(2**31)),))
        p_values.append(permutation_p_value(permuted_sums(score, x[fold], z[fold], pairings)))
    return p_values


def test_the_folds_combined_reject_at_most_alpha_however_their_p_values_depend():
    generator = np.random.default_rng(11)
    toy = np.array([shared_training_critic_p_values(generator) for _ in range(1500)])
    assert np.corrcoef(-np.log(toy).T)[np.triu_indices(5, 1)].mean() > 0.02  # the folds do depend on each other
    # Bonferroni's worst case: rejection events of the folds disjoint (p_k = (u + k / K) mod 1), size exactly alpha
    shifted = (generator.random((4000, 1)) + np.arange(5) / 5) % 1
    for p_values in (toy, shifted):
        size = np.mean([combined_p_value(list(each)) <= ALPHA for each in p_values])
        assert size <= ALPHA + 3 * np.sqrt(ALPHA * (1 - ALPHA) / len(p_values))


@pytest.mark.parametrize("value", ["-1", "1.5", "many"])
def test_a_bad_permutations_value_is_refused_on_one_line(value, capsys):
    _, _, err = run_main(["--permutations", value], capsys, status=2)
    assert "--permutations" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "flags", [["--folds", "1", "--val_fraction", "0"], ["--evaluate_only", "results/critic.keras"]]
)
def test_a_test_without_held_out_rows_or_of_a_saved_critic_is_refused(flags, capsys, tmp_path):
    _, _, err = run_main(["--permutations", "99", "--output_dir", str(tmp_path), *flags], capsys, status=2)
    assert "--permutations" in err and len(err.strip().splitlines()) == 1


def test_stat_and_pvalue_come_first_as_hyppo_gives_them(monkeypatch):
    monkeypatch.setattr(mi_main, "estimate", lambda x, z, **flags: {"test_statistic": 4.2, "p_value": 0.01, **flags})
    stat, pvalue, summary = mi_main.independence_test(np.zeros((8, 1)), np.zeros((8, 1)))
    assert (stat, pvalue, summary["permutations"]) == (4.2, 0.01, 999)


@pytest.mark.slow
def test_the_test_changes_no_output_of_the_estimate(small_file, tmp_path):  # noqa: F811
    flags = ["--input", small_file, "--quiet", *SMALL_RUN]
    for permutations in ("0", "99"):
        run_main([*flags, "--permutations", permutations, "--output_dir", str(tmp_path / permutations)])
    tested = json.loads((tmp_path / "99" / mi_main.SUMMARY_FILE).read_text())
    assert tested["p_value"] is not None and len(tested["fold_p_values"]) == 3
    for folder, _, files in os.walk(tmp_path / "0"):
        for name in files:
            if name.endswith(".dat"):  # every per-epoch file, of every critic, fold and the run
                other = os.path.join(tmp_path / "99", os.path.relpath(folder, tmp_path / "0"), name)
                assert open(os.path.join(folder, name), "rb").read() == open(other, "rb").read(), name
    untested = json.loads((tmp_path / "0" / mi_main.SUMMARY_FILE).read_text())
    test_keys = {"p_value", "p_value_from", "test_statistic", "fold_p_values", "fold_test_statistics"}
    test_keys |= {"test_epoch", "test_rows", "test_seconds"}
    timings = {key for key in untested if "second" in key}
    assert set(tested) - set(untested) == test_keys
    for key in set(untested) - timings - {"hyperparameters"}:
        assert tested[key] == untested[key], key


@pytest.mark.slow
def test_the_p_value_is_the_same_whatever_the_plan_drops(small_file, tmp_path, monkeypatch):  # noqa: F811
    """Up to the test's epoch no candidate stops, so a fold's critics there do not depend on when one does (the
    drops read every fold's held-out rows)."""
    flags = ["--input", small_file, "--quiet", "--permutations", "99", *SMALL_RUN]
    judge_early(monkeypatch)
    summaries = {}
    for margin in (mi_main.DROP_MARGIN, np.inf):
        monkeypatch.setattr(mi_main, "DROP_MARGIN", margin)
        run_main([*flags, "--output_dir", str(tmp_path / str(margin))])
        summaries[margin] = json.loads((tmp_path / str(margin) / mi_main.SUMMARY_FILE).read_text())
    dropping, keeping = summaries.values()
    assert dropping["candidates_dropped"] and not keeping["candidates_dropped"]
    assert dropping["test_epoch"] == keeping["test_epoch"] == 3
    assert dropping["fold_test_statistics"] == keeping["fold_test_statistics"]
    assert dropping["fold_p_values"] == keeping["fold_p_values"]


@pytest.mark.slow
def test_the_shipped_data_reach_the_smallest_p_value_and_shuffled_rows_do_not(tmp_path, capsys):
    shipped = os.path.join(REPO, "data", "input_set.dat")
    flags = ["--input", shipped, "--permutations", "999", "--n_epoch", "15", "--output_dir", str(tmp_path)]
    _, out, _ = run_main(flags, capsys)
    assert "independence p = 0.005 (exact: 999 permutations a fold, Bonferroni over 5 folds)" in out
    rows = np.loadtxt(shipped, dtype=np.float32)
    shuffled = [
        mi_main.independence_test(
            rows[:, :10],
            np.random.default_rng(seed).permutation(rows[:, 10:11]),
            999,
            seed=seed,
            n_epoch=10,
            candidates="rank:tanh,rank:copula",
        ).pvalue
        for seed in range(3)
    ]
    assert sum(p > ALPHA for p in shuffled) >= 2, shuffled
