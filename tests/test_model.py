"""The bound as a pure function of critic scores, and the model around it."""

import math

import numpy as np
import pytest
import tensorflow as tf

import mi_model
from mi_model import (
    ESTIMATORS,
    History,
    MineModel,
    Plan,
    certified_limit,
    chosen_in_views,
    donsker_varadhan_bound,
    f_divergence_bound,
    held_out_bounds,
    held_out_stderr,
    log_mean_exp,
    merged_parts,
    split_halves,
    updated_log_moving_average,
    with_averaged_gradient,
)


def test_constant_critic_gives_zero_bound():
    scores = tf.fill([1, 8, 1], 3.7)
    bound, joint_part, marginal_part = donsker_varadhan_bound(scores, scores)
    assert float(bound[0]) == pytest.approx(0.0, abs=1e-6)
    assert float(joint_part[0]) == pytest.approx(3.7)
    assert float(marginal_part[0]) == pytest.approx(3.7)


def test_hand_computed_bound():
    joint_scores = tf.constant([[[1.0], [2.0], [3.0]]])
    marginal_scores = tf.constant([[[0.0], [math.log(3.0)]]])
    bound, joint_part, marginal_part = donsker_varadhan_bound(joint_scores, marginal_scores)
    # mean(1, 2, 3) = 2; log((e^0 + e^ln3) / 2) = log 2
    assert float(joint_part[0]) == pytest.approx(2.0)
    assert float(marginal_part[0]) == pytest.approx(math.log(2.0))
    assert float(bound[0]) == pytest.approx(2.0 - math.log(2.0))


def test_log_mean_exp_survives_scores_near_1000():
    scores = tf.constant([[[1000.0], [1000.0 + math.log(3.0)]]])
    value = float(log_mean_exp(scores)[0])
    assert math.isfinite(value)
    assert value == pytest.approx(1000.0 + math.log(2.0), rel=1e-6)
    # the plain formula this replaces overflows on the same scores
    assert not math.isfinite(float(tf.math.log(tf.reduce_mean(tf.exp(scores)))))


def test_split_halves_takes_the_first_and_second_eleven_columns():
    rows = tf.reshape(tf.range(44, dtype=tf.float32), [2, 22])
    joint, marginal = split_halves(rows, 11)
    np.testing.assert_array_equal(joint.numpy(), rows.numpy()[:, :11])
    np.testing.assert_array_equal(marginal.numpy(), rows.numpy()[:, 11:])


def test_model_cost_is_minus_the_bound_of_its_network_scores():
    model = MineModel(data_dim=10, latent_dim=1, hid_width=16, out_width=1)
    rows = tf.random.stateless_normal([1, 32, 22], seed=[1, 2])
    cost, joint_part, marginal_part = model(rows)
    network = model.statistics_network
    expected, expected_joint, expected_marginal = donsker_varadhan_bound(
        network(rows[..., :11]), network(rows[..., 11:])
    )
    assert float(cost[0]) == pytest.approx(-float(expected[0]), abs=1e-5)
    assert float(joint_part[0]) == pytest.approx(float(expected_joint[0]), abs=1e-5)
    assert float(marginal_part[0]) == pytest.approx(float(expected_marginal[0]), abs=1e-5)


def test_f_divergence_bound_by_hand():
    joint_scores = tf.constant([[[1.0], [3.0]]])
    marginal_scores = tf.constant([[[1.0], [1.0 + math.log(3.0)]]])
    bound, joint_part, marginal_part = f_divergence_bound(joint_scores, marginal_scores)
    # mean(1, 3) = 2; mean(e^0, e^ln3) = 2
    assert float(joint_part[0]) == pytest.approx(2.0)
    assert float(marginal_part[0]) == pytest.approx(2.0)
    assert float(bound[0]) == pytest.approx(0.0, abs=1e-6)


def test_moving_average_starts_at_the_first_value_then_blends():
    first = updated_log_moving_average(tf.constant(float("nan")), tf.constant(math.log(4.0)), 0.25)
    assert float(first) == pytest.approx(math.log(4.0))
    second = updated_log_moving_average(first, tf.constant(math.log(8.0)), 0.25)
    assert float(second) == pytest.approx(math.log(0.75 * 4.0 + 0.25 * 8.0))
    huge = updated_log_moving_average(tf.constant(1000.0), tf.constant(1001.0), 0.5)
    assert float(huge) == pytest.approx(1000.0 + math.log(0.5 + 0.5 * math.e), rel=1e-6)


def test_averaged_gradient_keeps_the_value_and_rescales_the_gradient():
    scores = tf.Variable([[[0.5], [1.5], [-1.0]]])
    log_average = tf.constant(0.2)
    with tf.GradientTape(persistent=True) as tape:
        marginal_part = log_mean_exp(scores)
        corrected = with_averaged_gradient(marginal_part, log_average)
    assert float(corrected[0]) == pytest.approx(float(marginal_part[0]))
    plain = tape.gradient(marginal_part, scores).numpy()
    rescaled = tape.gradient(corrected, scores).numpy()
    # d log mean exp T scaled by mean exp T / average = d mean exp T / average
    expected = np.exp(scores.numpy()) / scores.shape[1] / math.exp(0.2)
    np.testing.assert_allclose(rescaled, expected, rtol=1e-5)
    np.testing.assert_allclose(rescaled, plain * math.exp(float(marginal_part[0]) - 0.2), rtol=1e-5)


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_each_estimator_reports_its_own_bound(estimator):
    model = MineModel(10, 1, 16, 1, estimator=estimator)
    rows = tf.random.stateless_normal([1, 64, 22], seed=[3, 4])
    network = model.statistics_network
    joint_scores, marginal_scores = network(rows[..., :11]), network(rows[..., 11:])
    bound_of = f_divergence_bound if estimator == "mine_f" else donsker_varadhan_bound
    expected = float(bound_of(joint_scores, marginal_scores)[0][0])
    for training in (False, True):
        cost, _, _ = model(rows, training=training)
        assert float(cost[0]) == pytest.approx(-expected, abs=1e-5)


def test_mine_updates_its_moving_average_only_while_training():
    model = MineModel(10, 1, 16, 1, estimator="mine", ema_rate=0.5)
    rows = tf.random.stateless_normal([1, 64, 22], seed=[5, 6])
    model(rows, training=False)
    assert math.isnan(float(model.log_moving_average[0]))
    _, _, marginal_part = model(rows, training=True)
    assert float(model.log_moving_average[0]) == pytest.approx(float(marginal_part[0]))


def test_padding_rows_leave_the_bound_as_the_real_rows_alone():
    real = tf.random.stateless_normal([2, 5, 1], seed=[7, 8])
    padded = tf.concat([real, tf.fill([2, 3, 1], 50.0)], axis=1)  # 50: exp would dominate if counted
    mask = tf.constant([[1.0] * 5 + [0.0] * 3] * 2)
    for bound_of in (donsker_varadhan_bound, f_divergence_bound):
        expected = bound_of(real, real[:, ::-1])
        masked = bound_of(padded, tf.concat([real[:, ::-1], tf.fill([2, 3, 1], 50.0)], axis=1), mask)
        for value, expected_value in zip(masked, expected, strict=True):
            np.testing.assert_allclose(value.numpy(), expected_value.numpy(), rtol=1e-6)


def test_each_critic_has_its_own_bound():
    # Critics whose scores differ in mean and spread: a bound pooled over the critics would read 1.25 - log 2.
    scores = tf.constant([[[1.0], [1.0]], [[3.0], [0.0]]])
    marginal = tf.constant([[[0.0], [0.0]], [[math.log(3.0)], [math.log(3.0)]]])
    bound, joint_part, marginal_part = donsker_varadhan_bound(scores, marginal)
    np.testing.assert_allclose(joint_part.numpy(), [1.0, 1.5])
    np.testing.assert_allclose(marginal_part.numpy(), [0.0, math.log(3.0)], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(bound.numpy(), [1.0, 1.5 - math.log(3.0)], rtol=1e-6, atol=1e-6)


def history_of(held_out=None, half_a=None, half_b=None):
    """A History of held-out bounds [epochs, critics] (the halves' by default the same; training figures zero)."""
    held_out = np.asarray(held_out if held_out is not None else (np.asarray(half_a) + np.asarray(half_b)) / 2, float)
    halves = [np.asarray(half if half is not None else held_out, float) for half in (half_a, half_b)]
    return History(*[np.zeros_like(held_out)] * 3, held_out, *halves)


def plan(folds, per_fold, n_epoch=100, schedule="cosine", margin=0.05, from_epoch=3):
    return Plan.start(folds, per_fold, n_epoch, schedule, margin, from_epoch)


def after_each_epoch(start, history):
    """The plan after every epoch of the history, as the training loop makes it."""
    for epochs in range(1, len(history) + 1):
        start = start.after(history.first(epochs))
    return start


def test_one_split_reads_each_half_at_the_other_halfs_best_epoch():
    history = history_of(half_a=[[0.1], [0.9], [0.5], [0.4]], half_b=[[0.2], [0.6], [0.3], [0.8]])
    (read_b, epoch_a, _), (read_a, epoch_b, _) = chosen_in_views(history, plan(1, 1))
    assert (epoch_a, epoch_b) == (2, 4) and (read_b + read_a) / 2 == pytest.approx((0.6 + 0.4) / 2)


def test_each_fold_is_read_at_the_other_folds_best_epoch_and_candidate():
    bounds = np.zeros((3, 3, 2))  # [epochs, folds, candidates]
    bounds[1, :, 0] = [0.5, 0.6, 0.7]
    bounds[2, :, 1] = [0.9, 0.8, 0.2]  # best for folds 1 and 2 together, so fold 3 reads it, low as it is there
    chosen = chosen_in_views(history_of(bounds.reshape(3, 6)), plan(3, 2))
    assert [(epoch, candidate) for _, epoch, candidate in chosen] == [(2, 0), (2, 0), (3, 1)]
    assert [reading for reading, _, _ in chosen] == pytest.approx([0.5, 0.6, 0.2])


def test_one_split_chooses_epoch_and_candidate_on_the_other_half():
    history = history_of(half_a=[[0.1, 0.3], [0.9, 0.2], [0.5, 0.95]], half_b=[[0.2, 0.7], [0.6, 0.1], [0.3, 0.5]])
    (read_b, epoch_a, chosen_a), (read_a, epoch_b, chosen_b) = chosen_in_views(history, plan(1, 2))
    assert ((epoch_a, chosen_a), (epoch_b, chosen_b)) == ((3, 1), (1, 1))
    assert (read_b + read_a) / 2 == pytest.approx((0.5 + 0.3) / 2)


def test_a_view_chooses_among_the_candidates_it_allows():
    bounds = np.zeros((2, 3, 2))
    bounds[1, :, 1] = 0.9  # candidate 1 is best everywhere, but fold 1's view has dropped it
    chosen = chosen_in_views(
        history_of(bounds.reshape(2, 6)),
        mi_model.dataclasses.replace(plan(3, 2), allowed=(frozenset({0}), frozenset({0, 1}), frozenset({0, 1}))),
    )
    assert [candidate for _, _, candidate in chosen] == [0, 1, 1]


def bounds_of(leader, other, epochs=5, folds=3):
    """Held-out bounds [epochs, folds * 2], the same every epoch: candidate 0's on each fold, then candidate 1's."""
    bounds = np.zeros((epochs, folds, 2))
    bounds[:, :, 0], bounds[:, :, 1] = leader, other
    return history_of(bounds.reshape(epochs, -1))


def test_a_candidate_behind_on_every_other_fold_by_the_margin_stops_from_the_epoch_set():
    later = after_each_epoch(plan(3, 2), bounds_of(0.5, [0.4, 0.3, 0.44]))
    assert later.candidates == [0] and later.dropped == ((1, 3),) and later.critic_ids == [0, 2, 4]
    assert plan(3, 2).after(bounds_of(0.5, 0.3, epochs=2)).candidates == [0, 1]  # not before from_epoch


def test_a_fitted_candidate_read_apart_leads_no_drop_but_may_be_dropped():
    apart = Plan.start(3, 2, 100, "cosine", 0.05, 3, apart=frozenset({0}))  # candidate 0 fitted, 1 trained
    assert apart.critic_ids == [1, 3, 5] and apart.apart_ids == [0, 2, 4]
    behind = after_each_epoch(apart, bounds_of(0.5, 0.3))  # the trained one far behind: it may pass it later
    assert behind.candidates == [0, 1] and behind.critic_ids == [1, 3, 5]
    ahead = after_each_epoch(apart, bounds_of(0.3, 0.5))  # the fitted one behind the trained leader: dropped
    assert ahead.apart_ids == [] and ahead.critic_ids == [1, 3, 5] and ahead.dropped == ((0, 3),)
    alone = after_each_epoch(plan(3, 2), bounds_of(0.5, 0.3))  # fitted candidates alone (none apart): as ever
    assert alone.candidates == [0]


def test_a_candidate_within_the_margin_or_ahead_on_one_fold_goes_on():
    assert after_each_epoch(plan(3, 2), bounds_of(0.5, 0.47)).candidates == [0, 1]
    mixed = after_each_epoch(plan(3, 2), bounds_of([0.5, 0.5, 0.3], [0.3, 0.3, 0.5]))
    assert mixed.candidates == [0, 1]  # each fold's view sees the other two disagree
    assert after_each_epoch(plan(1, 2), bounds_of(0.5, 0.1, folds=1)).candidates == [0, 1]  # no other fold


def test_the_learning_rate_follows_a_cosine_over_exactly_n_epoch():
    fixed = plan(1, 1, n_epoch=4)
    assert fixed.learning_rate_shares() == pytest.approx((1.0, 0.5 * (1 + np.cos(np.pi / 4))))
    for epochs in range(1, 4):
        fixed = fixed.after(history_of(np.full((epochs, 1), 0.3)))
        assert not fixed.finished()
    assert fixed.learning_rate_shares() == pytest.approx((0.5 * (1 + np.cos(3 * np.pi / 4)), 0.0))
    assert fixed.after(history_of(np.full((4, 1), 0.3))).finished()
    assert plan(1, 1, schedule="constant").learning_rate_shares() == (1.0, 1.0)


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_parts_merged_slice_by_slice_are_those_of_the_whole(estimator):
    model = MineModel(estimator=estimator, critics=2)
    scores = tf.random.stateless_normal([2, 10, 1], seed=[3, 4]) * 3.0
    marginal = tf.random.stateless_normal([2, 10, 1], seed=[5, 6]) * 3.0
    _, joint_whole, marginal_whole = model.bound(scores, marginal)
    parts = (tf.zeros([2]), tf.zeros([2]), tf.zeros([2]))
    for first, last in ((0, 3), (3, 3), (3, 10)):  # an empty slice too
        mask = tf.tile(tf.cast((tf.range(10) >= first) & (tf.range(10) < last), tf.float32)[None], [2, 1])
        _, joint_part, marginal_part = model.bound(scores, marginal, mask)
        parts = merged_parts(parts, (tf.reduce_sum(mask, 1), joint_part, marginal_part), estimator)
    np.testing.assert_allclose(parts[0].numpy(), [10, 10])
    np.testing.assert_allclose(parts[1].numpy(), joint_whole.numpy(), rtol=1e-5)
    np.testing.assert_allclose(parts[2].numpy(), marginal_whole.numpy(), rtol=1e-5)


def test_the_held_out_reading_in_slices_equals_one_reading(monkeypatch):
    model = MineModel(10, 1, 16, 1, critics=2, seed=0)
    rows = tf.random.stateless_normal([2, 2, 37, 22], seed=[1, 2])
    halves = (rows, tf.constant([[37, 30], [20, 36]]))
    arguments = (halves, 7, 3, 4, 1, tf.constant([4, 9]))
    whole = held_out_bounds(model, *arguments).numpy()
    monkeypatch.setattr(mi_model, "EVAL_ROWS", 8)
    np.testing.assert_allclose(held_out_bounds(model, *arguments).numpy(), whole, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("estimator", ["mine", "mine_f"])
def test_held_out_stderr_matches_the_spread_of_the_bound_over_fresh_rows(estimator):
    rng, rho, n, passes = np.random.default_rng(0), 0.8, 500, 4

    def critic(x, z):  # the log density ratio of a correlated Gaussian pair, MI 0.51
        return (-0.5 * np.log(1 - rho**2) - (rho**2 * (x**2 + z**2) - 2 * rho * x * z) / (2 * (1 - rho**2)))[:, None]

    bounds, stderrs = [], []
    for _ in range(400):
        x = rng.standard_normal(n)
        z = rho * x + np.sqrt(1 - rho**2) * rng.standard_normal(n)
        joint = critic(x, z)
        marginal = np.stack([critic(x, np.roll(z, shift)) for shift in rng.integers(1, n, passes)])
        if estimator == "mine_f":
            bounds.append(joint.mean() - np.exp(marginal - 1).mean())
        else:
            bounds.append(joint.mean() - np.log(np.exp(marginal).mean()))
        stderrs.append(held_out_stderr(joint, marginal, estimator))
    assert np.mean(stderrs) == pytest.approx(np.std(bounds), rel=0.15)


def test_the_certified_limit_is_log_of_the_fewest_pairs_and_caps_the_lower_bound():
    fields = {"mi_estimate": 2.0, "mi_ci95": [1.0, 3.0], "mi_lower_95": 1.2}
    limit = certified_limit(fields, [100, 20])
    assert limit == {"mi_certifiable": pytest.approx(math.log(20)), "mi_limit_binds": True, "mi_lower_95": 1.2}
    assert certified_limit(fields | {"mi_lower_95": 3.5}, [20])["mi_lower_95"] == pytest.approx(math.log(20))
    assert certified_limit(fields, [10_000])["mi_limit_binds"] is False
