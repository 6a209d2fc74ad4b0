"""The MINE model: one statistics network scored on both halves of each row.

Each input row is (x, z, x_bar, z_bar): the joint half (x, z) is a draw from
the joint distribution P(X, Z), the marginal half (x_bar, z_bar) a draw from
the product of the marginals P(X)P(Z). The Donsker-Varadhan bound

    L = mean T(x, z) - log mean exp T(x_bar, z_bar)

is a lower bound on I(X; Z) in nats for every function T. Training maximizes
it by minimizing cost = -L, as the reference scripts do.

The numerics are small pure functions of critic scores so that tests can
call them on plain tensors.
"""

import tensorflow as tf

from mi_layers import StatisticsNetwork


def log_mean_exp(scores):
    """log(mean(exp(scores))) over every element, without overflow.

    The plain formula overflows float32 once a score passes about 88;
    logsumexp subtracts the maximum first.
    """
    count = tf.cast(tf.size(scores), scores.dtype)
    return tf.reduce_logsumexp(scores) - tf.math.log(count)


def donsker_varadhan_bound(joint_scores, marginal_scores):
    """Returns (bound, joint_part, marginal_part) for one batch of scores.

    joint_part = mean T(joint), marginal_part = log mean exp T(marginal),
    bound = joint_part - marginal_part. With out_width > 1 every output unit
    counts as one more score, as in the reference.
    """
    joint_part = tf.reduce_mean(joint_scores)
    marginal_part = log_mean_exp(marginal_scores)
    return joint_part - marginal_part, joint_part, marginal_part


def split_halves(rows, sample_width):
    """Splits rows of 2 * sample_width columns into (joint, marginal)."""
    return rows[:, :sample_width], rows[:, sample_width:]


@tf.keras.utils.register_keras_serializable(package="mine")
class MineModel(tf.keras.Model):
    """Maps a batch of rows to (cost, joint_part, marginal_part)."""

    def __init__(self, data_dim=10, latent_dim=1, hid_width=128, out_width=1, **kwargs):
        super().__init__(**kwargs)
        self.data_dim = data_dim
        self.latent_dim = latent_dim
        self.sample_width = data_dim + latent_dim
        self.statistics_network = StatisticsNetwork(hid_width, out_width)
        self.statistics_network.build((None, self.sample_width))

    def call(self, rows):
        joint, marginal = split_halves(rows, self.sample_width)
        # One pass over both halves: a matrix product twice as tall is
        # cheaper than two, and the weights are shared anyway.
        scores = self.statistics_network(tf.concat([joint, marginal], axis=0))
        joint_scores, marginal_scores = tf.split(scores, 2, axis=0)
        bound, joint_part, marginal_part = donsker_varadhan_bound(joint_scores, marginal_scores)
        return -bound, joint_part, marginal_part
