"""The bound as a pure function of critic scores, and the model around it."""

import math

import numpy as np
import pytest
import tensorflow as tf

from mi_model import MineModel, donsker_varadhan_bound, log_mean_exp, split_halves


def test_constant_critic_gives_zero_bound():
    scores = tf.fill([8, 1], 3.7)
    bound, joint_part, marginal_part = donsker_varadhan_bound(scores, scores)
    assert float(bound) == pytest.approx(0.0, abs=1e-6)
    assert float(joint_part) == pytest.approx(3.7)
    assert float(marginal_part) == pytest.approx(3.7)


def test_hand_computed_bound():
    joint_scores = tf.constant([[1.0], [2.0], [3.0]])
    marginal_scores = tf.constant([[0.0], [math.log(3.0)]])
    bound, joint_part, marginal_part = donsker_varadhan_bound(joint_scores, marginal_scores)
    # mean(1, 2, 3) = 2; log((e^0 + e^ln3) / 2) = log 2
    assert float(joint_part) == pytest.approx(2.0)
    assert float(marginal_part) == pytest.approx(math.log(2.0))
    assert float(bound) == pytest.approx(2.0 - math.log(2.0))


def test_log_mean_exp_survives_scores_near_1000():
    scores = tf.constant([[1000.0], [1000.0 + math.log(3.0)]])
    value = float(log_mean_exp(scores))
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
    rows = tf.random.stateless_normal([32, 22], seed=[1, 2])
    cost, joint_part, marginal_part = model(rows)
    network = model.statistics_network
    expected, expected_joint, expected_marginal = donsker_varadhan_bound(network(rows[:, :11]), network(rows[:, 11:]))
    assert float(cost) == pytest.approx(-float(expected), abs=1e-5)
    assert float(joint_part) == pytest.approx(float(expected_joint), abs=1e-5)
    assert float(marginal_part) == pytest.approx(float(expected_marginal), abs=1e-5)
