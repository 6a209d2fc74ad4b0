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

import numpy as np
import tensorflow as tf


def training_flops_per_row(sample_width: int, hid_width: int, out_width: int) -> int:
    """Floating-point operations to train on one row: forward and backward
    of T on both halves. A dense layer costs 2 * inputs * outputs FLOPs per
    sample forward and about twice that backward (gradients of the inputs
    and of the weights)."""
    forward = 2 * (sample_width * hid_width + hid_width * hid_width + hid_width * out_width)
    return 2 * 3 * forward


ACTIVATIONS = ("relu", "tanh", "gelu", "softplus", "quadratic", "copula")
# Activations that differ between the two hidden layers. quadratic: the first layer's units squared, the second
# linear, so that T is a quadratic form in its inputs of rank at most hid_width, a class that holds the exact log
# density ratio of every Gaussian (of the rank-mapped columns: of every Gaussian copula). copula: the same network
# with that ratio's weights fitted in closed form (copula_weights), never trained (FITTED_ACTIVATIONS).
LAYER_ACTIVATIONS = {"quadratic": ("square", "linear"), "copula": ("square", "linear")}
FITTED_ACTIVATIONS = ("copula",)


def layer_activation(name: str, layer: int) -> str:
    """The activation hidden layer `layer` (0 or 1) of a critic of activation `name` applies."""
    return LAYER_ACTIVATIONS.get(name, (name, name))[layer]


def activated(name: str, values: tf.Tensor) -> tf.Tensor:
    """values through the activation `name` (a Keras activation, or square)."""
    return tf.square(values) if name == "square" else tf.keras.activations.get(name)(values)


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


def copula_weights(samples: np.ndarray, data_dim: int, hid_width: int, out_width: int) -> list[np.ndarray]:
    """The weights of a quadratic critic (one critic, as critic_weights gives them) whose T is the log density
    ratio log p(x, z) / (p(x) p(z)) of the Gaussian fitted to samples [rows, data_dim + latent_dim]:

        T(u) = u'A u + b'u + c,  A = (S_x^-1 (+) S_z^-1 - S^-1) / 2  on u centred on the samples' mean,

    c = (log det S_x + log det S_z - log det S) / 2, S the samples' covariance (S_x, S_z its blocks). A has rank
    at most 2 min(data_dim, latent_dim); its hid_width largest eigenvalues (by size) are kept: at 100 x 100
    columns that is 128 of up to 200, an approximation. Each output unit gets the same T."""
    samples = np.asarray(samples, np.float64)
    mean = samples.mean(axis=0)
    # A ridge of 1e-6 of the mean variance keeps S invertible with fewer rows than columns
    covariance = np.cov(samples, rowvar=False).reshape(samples.shape[1], samples.shape[1])
    covariance += 1e-6 * np.trace(covariance) / len(covariance) * np.eye(len(covariance))
    blocks = np.zeros_like(covariance)
    blocks[:data_dim, :data_dim] = np.linalg.inv(covariance[:data_dim, :data_dim])
    blocks[data_dim:, data_dim:] = np.linalg.inv(covariance[data_dim:, data_dim:])
    eigenvalues, eigenvectors = np.linalg.eigh((blocks - np.linalg.inv(covariance)) / 2)
    kept = np.argsort(-np.abs(eigenvalues))[:hid_width]
    log_dets = [
        np.linalg.slogdet(part)[1]
        for part in (covariance[:data_dim, :data_dim], covariance[data_dim:, data_dim:], covariance)
    ]
    kernel_1 = np.zeros((len(covariance), hid_width))
    kernel_1[:, : len(kept)] = eigenvectors[:, kept]
    # unit k: (v_k'(u - mean))^2, weighed by its eigenvalue in the last layer
    return [
        kernel_1.astype(np.float32),
        (-mean @ kernel_1).astype(np.float32),
        np.eye(hid_width, dtype=np.float32),
        np.zeros(hid_width, np.float32),
        np.repeat(np.pad(eigenvalues[kept], (0, hid_width - len(kept)))[:, None], out_width, axis=1).astype(np.float32),
        np.full(out_width, (log_dets[0] + log_dets[1] - log_dets[2]) / 2, np.float32),
    ]


def copula_pair_terms(
    weights: list[np.ndarray], x: np.ndarray, z: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(row_terms [n], column_terms [n], x_factors [n, r], z_factors [n, r]) of a copula critic's weights on
    samples x and z, such that T(x_i, z_j) = row_terms[i] + column_terms[j] + x_factors[i] . z_factors[j]: the
    score of every pair from one matrix product. With hidden units p = W x + V z + b, T = sum_k w_k p_k^2 + c."""
    kernel_1, bias_1, _, _, kernel_3, bias_3 = (np.asarray(weight, np.float64) for weight in weights)
    units = np.flatnonzero(kernel_3[:, 0])
    from_x = np.asarray(x, np.float64) @ kernel_1[: x.shape[1], units] + bias_1[units]
    from_z = np.asarray(z, np.float64) @ kernel_1[x.shape[1] :, units]
    unit_weights = kernel_3[units, 0]
    return from_x**2 @ unit_weights + bias_3[0], from_z**2 @ unit_weights, 2 * from_x * unit_weights, from_z


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
        # one activation for all: the layers apply it (square: call does); several: self.activate picks each
        # critic's, layer by layer
        shared = per_critic[0] if len(set(per_critic)) == 1 else None
        self.shared_activations = None if shared is None else [layer_activation(shared, layer) for layer in (0, 1)]
        self.activation_masks = (
            None
            if shared
            else [
                {
                    name: tf.constant([[[float(layer_activation(each, layer) == name)]] for each in per_critic])
                    for name in sorted({layer_activation(each, layer) for each in per_critic})
                }
                for layer in (0, 1)
            ]
        )
        keras_activations = [None if name == "square" else name for name in self.shared_activations or [None, None]]

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

        self.hidden_1 = dense(hid_width, 1, keras_activations[0])
        self.hidden_2 = dense(hid_width, 2, keras_activations[1])
        self.scores = dense(out_width, 3)

    def build(self, input_shape):
        self.hidden_1.build((self.critics, None, input_shape[-1]))
        self.hidden_2.build((self.critics, None, self.hid_width))
        self.scores.build((self.critics, None, self.hid_width))
        super().build(input_shape)

    def critic_weights(self, k, values=None):
        """Critic k's weights, shaped as a one-critic network holds them; from `values` (the stack's weights as
        get_weights gives them, read once for several critics) where given."""
        values = self.get_weights() if values is None else values
        if self.critics == 1:
            return values
        # EinsumDense's bias is [critics, 1, outputs]; Dense's [outputs]
        return [
            value[k].reshape(-1) if weight.name == "bias" else value[k]
            for weight, value in zip(self.weights, values, strict=True)
        ]

    def set_critic_weights(self, k, weights):
        """Critic k's weights set to `weights`, shaped as critic_weights gives them."""
        if self.critics == 1:
            self.set_weights(weights)
            return
        for variable, value in zip(self.weights, weights, strict=True):
            stacked = variable.numpy()
            stacked[k] = np.reshape(value, stacked.shape[1:])
            variable.assign(stacked)

    def activate(self, values, layer):
        """Hidden layer `layer`'s values [critics, rows, units] through each critic's own activation: the layer
        applied it where all critics share one, but square."""
        if self.activation_masks is None:
            return tf.square(values) if self.shared_activations[layer] == "square" else values
        masks = self.activation_masks[layer]
        return tf.add_n([mask * activated(name, values) for name, mask in masks.items()])

    def call(self, samples):
        if self.critics == 1:  # as a plain [rows, inputs] matrix: XLA makes a rank-3 Dense a batched product
            hidden = self.activate(self.hidden_1(samples[0]), 0)
            return self.scores(self.activate(self.hidden_2(hidden), 1))[None]
        return self.scores(self.activate(self.hidden_2(self.activate(self.hidden_1(samples), 0)), 1))

    def get_config(self):
        return {
            **super().get_config(),
            "hid_width": self.hid_width,
            "out_width": self.out_width,
            "activation": self.activation,
            "critics": self.critics,
            "seed": self.seed,
        }
