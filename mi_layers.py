"""The statistics network T of MINE, for one critic or several side by side.

T maps one sample (x, z) to a score. MINE uses the same T on the joint
half and on the marginal half of every row, so the model holds one
instance of this layer and calls it twice.

Several critics (one per cross-fitting fold) are stacked on a leading
critic axis: each layer is an EinsumDense whose kernel holds one
[inputs, outputs] matrix per critic, applied to that critic's own rows by
a batched matrix product. One graph then serves any number of critics,
so tracing and compiling cost the same for 5 critics as for 1, and each
critic still computes exactly what a Dense network of its own would. A
single critic uses Dense layers themselves (on [1, rows, inputs]): the
same function, and a plain matrix product is cheaper per step.

The reference's hidden layers use ReLU. A smooth activation fits a smooth
log density ratio with fewer units (a ReLU network is piecewise linear, and
the bound weighs the tails of T through exp T), so the trained critic sits
closer to the optimal one and the bound's bias is smaller; tests/BENCHMARKS.md,
"Activation: the bound's bias on fresh rows", has the measurement.
"""

import math

import tensorflow as tf


def training_flops_per_row(sample_width: int, hid_width: int, out_width: int) -> int:
    """Floating-point operations to train on one row: forward and backward
    of T on both halves. A dense layer costs 2 * inputs * outputs FLOPs per
    sample forward and about twice that backward (gradients of the inputs
    and of the weights)."""
    forward = 2 * (sample_width * hid_width + hid_width * hid_width + hid_width * out_width)
    return 2 * 3 * forward


ACTIVATIONS = ("relu", "tanh", "gelu", "softplus")


@tf.keras.utils.register_keras_serializable(package="mine")
class PerCriticGlorotUniform(tf.keras.initializers.Initializer):
    """Glorot-uniform weights for each critic's [inputs, outputs] kernel, as
    Dense draws them. (Keras's own initializer would count the critic axis
    into the fan-in and fan-out, and start stacked critics too small.)

    seed: None draws from Keras's global random state; a pair of integers
    draws the same weights every time, whatever that state (which differs
    with and without a tf.distribute strategy's scope)."""

    def __init__(self, seed=None):
        self.seed = seed

    def __call__(self, shape, dtype=None):
        limit = math.sqrt(6.0 / (shape[-2] + shape[-1]))
        if self.seed is None:
            return tf.keras.initializers.RandomUniform(-limit, limit)(shape, dtype)
        return tf.random.stateless_uniform(shape, seed=self.seed, minval=-limit, maxval=limit, dtype=dtype or "float32")

    def get_config(self):
        return {"seed": self.seed}


@tf.keras.utils.register_keras_serializable(package="mine")
class StatisticsNetwork(tf.keras.layers.Layer):
    """Dense(hid_width, activation) -> Dense(hid_width, activation) -> Dense(out_width),
    once per critic: [critics, rows, inputs] -> [critics, rows, out_width]."""

    def __init__(self, hid_width=128, out_width=1, activation="tanh", critics=1, seed=None, **kwargs):
        """activation: one for every critic, or a list of one per critic
        (candidate critics of several kinds side by side)."""
        super().__init__(**kwargs)
        per_critic = [activation] * critics if isinstance(activation, str) else list(activation)
        if len(per_critic) != critics or any(name not in ACTIVATIONS for name in per_critic):
            raise ValueError(
                f"activation must be one of {ACTIVATIONS}, or a list of one per critic; got {activation!r}"
            )
        self.hid_width = hid_width
        self.out_width = out_width
        self.activation = activation
        self.critics = critics
        self.seed = seed
        # one activation for all: the layers apply it; several: self.activate picks each critic's
        shared = per_critic[0] if len(set(per_critic)) == 1 else None
        self.activation_masks = (
            None
            if shared
            else {
                name: tf.constant([[[float(each == name)]] for each in per_critic]) for name in sorted(set(per_critic))
            }
        )
        activation = shared

        def dense(units, layer, activation=None):
            initializer = PerCriticGlorotUniform(None if seed is None else [seed, layer])
            if critics == 1:  # a plain matrix product: XLA runs it 2.3x faster than a batched one of 1 at batch 2
                return tf.keras.layers.Dense(units, activation=activation, kernel_initializer=initializer)
            # per critic k: rows r, inputs i -> outputs o
            return tf.keras.layers.EinsumDense(
                "kri,kio->kro",
                output_shape=(None, units),
                bias_axes="ko",
                activation=activation,
                kernel_initializer=initializer,
            )

        self.hidden_1 = dense(hid_width, 1, activation)
        self.hidden_2 = dense(hid_width, 2, activation)
        self.scores = dense(out_width, 3)

    def build(self, input_shape):
        self.hidden_1.build((self.critics, None, input_shape[-1]))
        self.hidden_2.build((self.critics, None, self.hid_width))
        self.scores.build((self.critics, None, self.hid_width))
        super().build(input_shape)

    def critic_weights(self, k):
        """Critic k's weights, shaped as a one-critic network holds them."""
        if self.critics == 1:
            return [weight.numpy() for weight in self.weights]
        # EinsumDense's bias is [critics, 1, outputs]; Dense's [outputs]
        return [
            weight.numpy()[k].reshape(-1) if weight.name == "bias" else weight.numpy()[k] for weight in self.weights
        ]

    def activate(self, values):
        """Each critic's own activation, [critics, rows, units], when they differ."""
        if self.activation_masks is None:
            return values
        return tf.add_n([mask * tf.keras.activations.get(name)(values) for name, mask in self.activation_masks.items()])

    def call(self, samples):
        if self.critics == 1:  # as a plain [rows, inputs] matrix: XLA makes a rank-3 Dense a batched product
            return self.scores(self.hidden_2(self.hidden_1(samples[0])))[None]
        return self.scores(self.activate(self.hidden_2(self.activate(self.hidden_1(samples)))))

    def get_config(self):
        return {
            **super().get_config(),
            "hid_width": self.hid_width,
            "out_width": self.out_width,
            "activation": self.activation,
            "critics": self.critics,
            "seed": self.seed,
        }
