"""Benchmark tasks whose true mutual information is known, beyond the
Gaussian copulas of mi_data_processing.make_known_mi_rows.

Each task draws n joint rows (x, z) and returns (rows, data_dim,
latent_dim); TASKS holds (family, true MI in nats, sampler). The truth is
in closed form where one exists, otherwise a Monte Carlo average over
MONTE_CARLO_ROWS draws of the exact log density ratio (stated per task).
Invertible maps of x or z leave the MI unchanged; several tasks use that.
"""

import math

import numpy as np

MONTE_CARLO_ROWS = 1_000_000


def digamma(value):
    """psi(value) for value > 0: recurrence up to 6, then the asymptotic series."""
    shift = 0.0
    while value < 6.0:
        shift -= 1.0 / value
        value += 1.0
    inverse = 1.0 / (value * value)
    return shift + math.log(value) - 0.5 / value - inverse * (1 / 12 - inverse * (1 / 120 - inverse / 252))


def student_t_mi(data_dim, latent_dim, dof):
    """I(X; Z) of a multivariate Student t with identity dispersion, split
    into data_dim and latent_dim coordinates: the coordinates are
    uncorrelated and depend only through the shared scale. From the
    entropy of the multivariate t, h(d) = A(d) + ln G(v/2) + d/2 ln(v pi),
    A(d) = -ln G((v+d)/2) + (v+d)/2 (psi((v+d)/2) - psi(v/2)):
    I = A(dx) + A(dz) - A(dx + dz) - A(0)."""

    def a(d):
        half = (dof + d) / 2
        return -math.lgamma(half) + half * (digamma(half) - digamma(dof / 2))

    return a(data_dim) + a(latent_dim) - a(data_dim + latent_dim) - a(0)


def gaussian_channel(rng, n, data_dim, latent_dim, gains):
    """x ~ N(0, I), z = B x + e with e ~ N(0, I), B [latent_dim, data_dim]:
    I = 1/2 ln det(I + B B')."""
    x = rng.standard_normal((n, data_dim))
    z = x @ gains.T + rng.standard_normal((n, latent_dim))
    return x, z


def channel_mi(gains):
    return 0.5 * float(np.linalg.slogdet(np.eye(len(gains)) + gains @ gains.T)[1])


def scaled_gains(pattern, mi_nats):
    """pattern * c with c chosen so that channel_mi is mi_nats (bisection)."""
    low, high = 0.0, 1.0
    while channel_mi(pattern * high) < mi_nats:
        high *= 2
    for _ in range(60):
        middle = (low + high) / 2
        low, high = (middle, high) if channel_mi(pattern * middle) < mi_nats else (low, middle)
    return pattern * (low + high) / 2


def dense_pattern(dim):
    return np.random.default_rng(7).uniform(0.5, 1.5, (dim, dim))


def sparse_pattern(dim):
    pattern = np.zeros((dim, dim))
    pattern[np.arange(dim), np.arange(dim)] = 1.0  # each z coordinate sees one x coordinate, half of them
    pattern[dim // 2 :] = 0.0
    return pattern


def gaussian_task(dim, mi_nats, pattern, distortion=None):
    gains = scaled_gains(pattern(dim), mi_nats)

    def sample(rng, n):
        x, z = gaussian_channel(rng, n, dim, dim, gains)
        if distortion is not None:
            x, z = distortion(x), distortion(z)
        return np.column_stack([x, z]), dim, dim

    return channel_mi(gains), sample


def additive_uniform_noise(noise=0.2):
    """x ~ U(0, 1), z = x + n, n ~ U(0, noise), noise < 1: h(z | x) = ln noise,
    z's density is a trapezoid with h(z) = noise / 2, so I = noise / 2 - ln noise."""

    def sample(rng, n):
        x = rng.uniform(0, 1, n)
        return np.column_stack([x, x + rng.uniform(0, noise, n)]), 1, 1

    return noise / 2 - math.log(noise), sample


def student_t_task(dim, dof, asinh=False):
    def sample(rng, n):
        joint = rng.standard_normal((n, 2 * dim)) / np.sqrt(rng.chisquare(dof, (n, 1)) / dof)
        return (np.arcsinh(joint) if asinh else joint), dim, dim

    return student_t_mi(dim, dim, dof), sample


def radial_mixture(dim=10, scales=(1.0, 2.0, 3.0), noise=0.01):
    """k uniform on `scales`, x ~ N(0, k^2 I), z = k + N(0, noise^2): z tells
    k (the scales are 100 noise apart), so I(X; Z) = I(X; K) =
    ln 3 + E ln p(k | x), by Monte Carlo over MONTE_CARLO_ROWS draws."""
    scales = np.asarray(scales)

    def sample(rng, n):
        k = rng.choice(scales, n)
        return np.column_stack([rng.standard_normal((n, dim)) * k[:, None], k + noise * rng.standard_normal(n)]), dim, 1

    rng = np.random.default_rng(12345)
    k = rng.choice(len(scales), MONTE_CARLO_ROWS)
    squares = (rng.standard_normal((MONTE_CARLO_ROWS, dim)) ** 2).sum(axis=1) * scales[k] ** 2
    log_densities = -dim * np.log(scales)[None, :] - squares[:, None] / (2 * scales[None, :] ** 2)
    posterior = log_densities[np.arange(MONTE_CARLO_ROWS), k] - np.logaddexp.reduce(log_densities, axis=1)
    return math.log(len(scales)) + float(posterior.mean()), sample


def class_mixture(dim=5, classes=4, separation=1.5):
    """z uniform on {0, ..., classes - 1}, x | z ~ N(mu_z, I) with means
    `separation` apart along the first axes: I = ln C + E ln p(z | x), by
    Monte Carlo over MONTE_CARLO_ROWS draws."""
    means = np.zeros((classes, dim))
    means[np.arange(classes), np.arange(classes) % dim] = separation

    def sample(rng, n):
        z = rng.integers(classes, size=n)
        return np.column_stack([means[z] + rng.standard_normal((n, dim)), z]), dim, 1

    rng = np.random.default_rng(54321)
    z = rng.integers(classes, size=MONTE_CARLO_ROWS)
    x = means[z] + rng.standard_normal((MONTE_CARLO_ROWS, dim))
    log_densities = -0.5 * ((x[:, None, :] - means[None]) ** 2).sum(axis=2)
    posterior = log_densities[np.arange(MONTE_CARLO_ROWS), z] - np.logaddexp.reduce(log_densities, axis=1)
    return math.log(classes) + float(posterior.mean()), sample


def spiral(points, speed=0.5):
    """Rotates each point's first two coordinates by an angle growing with
    its squared norm: invertible (the norm is kept), so the MI is kept."""
    angle = speed * (points**2).sum(axis=1)
    first = np.cos(angle) * points[:, 0] - np.sin(angle) * points[:, 1]
    second = np.sin(angle) * points[:, 0] + np.cos(angle) * points[:, 1]
    return np.column_stack([first, second, points[:, 2:]])


def spiral_task(dim, mi_nats):
    """The dense Gaussian channel, x and z each wound into a spiral."""
    truth, base = gaussian_task(dim, mi_nats, dense_pattern)

    def sample(rng, n):
        rows, data_dim, latent_dim = base(rng, n)
        return np.column_stack([spiral(rows[:, :data_dim]), spiral(rows[:, data_dim:])]), data_dim, latent_dim

    return truth, sample


def bimodal(values):
    """An increasing map that splits each coordinate's mass into two modes."""
    return values + 3.0 * np.tanh(4.0 * values)


def half_cube(values):
    return values * np.sqrt(np.abs(values))


def gaussian_10x1(mi_nats, distortion=None):
    """The 10 x 1 Gaussian channel of mi_data_processing's generator."""
    gains = scaled_gains(np.ones((1, 10)), mi_nats)

    def sample(rng, n):
        x, z = gaussian_channel(rng, n, 10, 1, gains)
        if distortion is not None:
            x, z = distortion(x), distortion(z)
        return np.column_stack([x, z]), 10, 1

    return mi_nats, sample


# name: (family, maker of (true MI, sampler)); made on use (two run a Monte Carlo)
TASK_MAKERS = {
    "gauss-6.0": ("gaussian, high MI", lambda: gaussian_10x1(6.0)),
    "bimodal-1.0": ("mixture marginals", lambda: gaussian_10x1(1.0, bimodal)),
    "uniform-noise-1x1": ("additive noise", lambda: additive_uniform_noise(0.2)),
    **{
        f"student-t-{dim}x{dim}-df{dof}{'-asinh' if asinh else ''}": (
            "heavy tails",
            lambda dim=dim, dof=dof, asinh=asinh: student_t_task(dim, dof, asinh),
        )
        for dof in (1, 2, 3)
        for dim in (1, 2, 3, 5)
        for asinh in (False, True)
    },
    "radial-10x1": ("radial mixture", lambda: radial_mixture()),
    "gauss-1x1": ("gaussian, small", lambda: gaussian_task(1, 1.0, dense_pattern)),
    "gauss-3x3": ("gaussian, small", lambda: gaussian_task(3, 1.0, dense_pattern)),
    "dense-5x5": ("several dimensions", lambda: gaussian_task(5, 0.6, dense_pattern)),
    "sparse-25x25": ("several dimensions", lambda: gaussian_task(25, 1.0, sparse_pattern)),
    "sparse-25x25-half_cube": ("several dimensions", lambda: gaussian_task(25, 1.0, sparse_pattern, half_cube)),
    "dense-25x25": ("several dimensions", lambda: gaussian_task(25, 1.3, dense_pattern)),
    "spiral-3x3": ("embedding", lambda: spiral_task(3, 1.0)),
    "spiral-5x5": ("embedding", lambda: spiral_task(5, 1.0)),
    "classes-5x1": ("discrete z", lambda: class_mixture()),
    # each z coordinate correlated with one x coordinate, equally: the literature's staircase (issue 34)
    **{
        f"staircase-20x20-{mi_nats}": ("gaussian, high MI", lambda mi_nats=mi_nats: gaussian_task(20, mi_nats, np.eye))
        for mi_nats in (2, 4, 6, 8, 10)
    },
}
