"""Two encoders whose mutual information has a closed form, for the Keras layer mi_model.MutualInformation
(its tests and tests/bench_layer.py).

InfoMax: x ~ N(0, diag(INFOMAX_VARIANCES)), z = W x + 0.5 e with W of 2 x 8 (Dense's kernel is W's transpose,
its columns kept at unit norm), so I(x; z) = 1/2 log det(I + W S W' / 0.25): 2.515 nats at best (W's rows on
the two largest variances), 1.6 for a random W.

Nuisance: x = R [2 s, u, 0.1 e'] mixes a nuisance s, a signal u (standard normal scalars) and six noise columns
through a fixed rotation R; a linear autoencoder's 1-D bottleneck z = w'x + 0.1 e (w of unit norm) has
I(z; s) = 1/2 log(var z / (var z - 4 c_0^2)), c = R'w: about 3 nats when trained on reconstruction alone.
"""

import keras
import numpy as np

from mi_model import MutualInformation

BATCH_ROWS = 256
INFOMAX_VARIANCES = np.array([4.0, 2.0, 1.0, 1.0, 0.5, 0.5, 0.25, 0.25])
INFOMAX_NOISE = 0.5
NUISANCE_NOISE = 0.1
ROTATION = np.linalg.qr(np.random.default_rng(8).standard_normal((8, 8)))[0]


def unit_norm_encoder(units):
    """A linear encoder whose kernel's columns (W's rows) are kept at unit norm."""
    return keras.layers.Dense(units, use_bias=False, kernel_constraint=keras.constraints.UnitNorm(axis=0))


def infomax_rows(n, seed):
    return (np.random.default_rng(seed).standard_normal((n, 8)) * np.sqrt(INFOMAX_VARIANCES)).astype(np.float32)


def infomax_mi(kernel):
    """I(x; z) in nats of the encoder with this kernel [8, 2]."""
    signal = kernel.T @ np.diag(INFOMAX_VARIANCES) @ kernel / INFOMAX_NOISE**2
    return 0.5 * np.linalg.slogdet(np.eye(len(signal)) + signal)[1]


def infomax_model(layer=True, **layer_args):
    """(model, encoder): x -> z, with the layer on (z, x) when `layer` (maximize, unless layer_args say)."""
    x = keras.Input((8,))
    encoder = unit_norm_encoder(2)
    z = keras.layers.GaussianNoise(INFOMAX_NOISE, seed=0)(encoder(x))
    if layer:
        z = MutualInformation(**{"mode": "maximize", **layer_args})([z, x])
    return keras.Model(x, z), encoder


def nuisance_rows(n, seed):
    """(x [n, 8], s [n, 1], u [n, 1])."""
    rng = np.random.default_rng(seed)
    s, u, noise = rng.standard_normal((n, 1)), rng.standard_normal((n, 1)), rng.standard_normal((n, 6))
    x = np.concatenate([2 * s, u, 0.1 * noise], axis=1) @ ROTATION.T
    return x.astype(np.float32), s.astype(np.float32), u.astype(np.float32)


def nuisance_mi(kernel):
    """(I(z; s) in nats, corr(z, u)^2) of the bottleneck with this kernel [8, 1]."""
    c = ROTATION.T @ kernel[:, 0]
    variance = 4 * c[0] ** 2 + c[1] ** 2 + 0.01 * np.sum(c[2:] ** 2) + NUISANCE_NOISE**2
    return 0.5 * np.log(variance / (variance - 4 * c[0] ** 2)), c[1] ** 2 / variance


def nuisance_model(layer=True, **layer_args):
    """(model, encoder): (x, s) -> the reconstruction of x, with the layer on (z, s) when `layer` (minimize,
    unless layer_args say)."""
    x, s = keras.Input((8,)), keras.Input((1,))
    encoder = unit_norm_encoder(1)
    z = keras.layers.GaussianNoise(NUISANCE_NOISE, seed=0)(encoder(x))
    if layer:
        z = MutualInformation(**{"mode": "minimize", **layer_args})([z, s])
    return keras.Model([x, s], keras.layers.Dense(8)(z)), encoder


def encoded(kernel, x, noise, seed):
    """z = kernel' x + noise * e on fresh rows, as the trained encoder makes it."""
    z = x @ kernel
    return (z + noise * np.random.default_rng(seed).standard_normal(z.shape)).astype(np.float32)
