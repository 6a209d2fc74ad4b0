"""The statistics network T of MINE.

T maps one 11-column sample (x, z) to a score. MINE uses the same T on the
joint half and on the marginal half of every row, so the model holds one
instance of this layer and calls it twice.

The reference's hidden layers use ReLU. A smooth activation fits a smooth
log density ratio with fewer units (a ReLU network is piecewise linear, and
the bound weighs the tails of T through exp T), so the trained critic sits
closer to the optimal one and the bound's bias is smaller; README.md,
"Activation", has the measurement.
"""

import tensorflow as tf


def training_flops_per_row(sample_width, hid_width, out_width):
    """Floating-point operations to train on one row: forward and backward
    of T on both halves. A dense layer costs 2 * inputs * outputs FLOPs per
    sample forward and about twice that backward (gradients of the inputs
    and of the weights)."""
    forward = 2 * (sample_width * hid_width + hid_width * hid_width + hid_width * out_width)
    return 2 * 3 * forward


ACTIVATIONS = ("relu", "tanh", "gelu", "softplus")


@tf.keras.utils.register_keras_serializable(package="mine")
class StatisticsNetwork(tf.keras.layers.Layer):
    """Dense(hid_width, activation) -> Dense(hid_width, activation) -> Dense(out_width)."""

    def __init__(self, hid_width=128, out_width=1, activation="relu", **kwargs):
        super().__init__(**kwargs)
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
        self.hid_width = hid_width
        self.out_width = out_width
        self.activation = activation
        self.hidden_1 = tf.keras.layers.Dense(hid_width, activation=activation)
        self.hidden_2 = tf.keras.layers.Dense(hid_width, activation=activation)
        self.scores = tf.keras.layers.Dense(out_width)

    def build(self, input_shape):
        self.hidden_1.build(input_shape)
        self.hidden_2.build((None, self.hid_width))
        self.scores.build((None, self.hid_width))
        super().build(input_shape)

    def call(self, samples):
        return self.scores(self.hidden_2(self.hidden_1(samples)))

    def get_config(self):
        return {**super().get_config(), "hid_width": self.hid_width, "out_width": self.out_width, "activation": self.activation}
