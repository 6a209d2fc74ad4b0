"""The in-graph epoch loop: same result as the reference's per-batch loop,
traced once, the last short batch trained as one more (padded) step, and
K critics stacked in one network (EinsumDense) training exactly as K
separate ones (Dense)."""

import dataclasses

import numpy as np
import pytest
import tensorflow as tf
from epoch_rows import epoch_batches

from mi_layers import copula_pair_terms, copula_weights
from mi_main import (
    CompiledCritics,
    Config,
    EpochSchedule,
    InputError,
    critic_settings_of,
    make_optimizer,
    make_train_step,
    parse_flags,
)
from mi_model import MineModel, every_pair_parts, parts_in_pairings, pooled_bound

# SGD: Adam divides by the gradient's running size, which turns float32
# reassociation noise in a near-zero gradient into a visible step.
SMALL_SGD = Config(hid_width=32, candidates="rank:tanh", optimizer="sgd", lr=0.05)


def compiled(critics=1, jit=True, seed=0):
    """The run's CompiledCritics of a small network trained by SGD at 0.05."""
    settings = dataclasses.replace(SMALL_SGD, jit=jit).critic_settings
    stack = CompiledCritics(settings, critics, tf.distribute.get_strategy(), seed)
    stack.set_learning_rate(0.05, 0.05, 1)
    return stack


def one_epoch(row_counts, batch_size, epoch=0):
    rng = np.random.default_rng(1)
    rows = [rng.standard_normal((n_rows, 22)).astype(np.float32) for n_rows in row_counts]
    return next(iter(epoch_batches(rows, batch_size, seed=0, first_epoch=epoch, n_epoch=epoch + 1)))


@pytest.mark.parametrize("jit", [True, False])
def test_epoch_loop_matches_the_per_batch_python_loop(jit):
    batches, batch_rows = one_epoch([100], 16)  # 6 batches of 16, then 4 rows padded to 16
    assert batches.shape == (1, 7, 16, 22) and list(batch_rows.numpy()) == [16] * 6 + [4]

    fast = compiled(jit=jit)
    plain_model = MineModel(10, 1, 32, 1, "mine")
    plain_model.set_weights(fast.model.get_weights())
    fast_means, _, rows_trained = fast.train_epoch([(batches, batch_rows)], None, 0, 1, [0])

    plain_optimizer = tf.keras.optimizers.SGD(0.05)
    plain_optimizer.build(plain_model.trainable_variables)
    plain_step = tf.function(make_train_step(plain_model, plain_optimizer))
    per_batch = [plain_step(batches[:, step, : int(size)]).numpy()[0] for step, size in enumerate(batch_rows.numpy())]
    sizes = batch_rows.numpy()

    assert int(fast.optimizer.iterations) == int(plain_optimizer.iterations) == 7 and rows_trained == 100
    for fast_weight, plain_weight in zip(fast.model.weights, plain_model.weights, strict=True):
        np.testing.assert_allclose(fast_weight.numpy(), plain_weight.numpy(), rtol=1e-4, atol=1e-5)
    # the epoch's figures are the row-weighted means of the batches'
    np.testing.assert_allclose(
        fast_means[0], (sizes[:, None] * np.array(per_batch)).sum(axis=0) / 100, rtol=1e-4, atol=1e-5
    )


def test_no_retrace_after_the_first_epoch():
    critics = compiled()
    rows = np.random.default_rng(2).standard_normal((70, 22)).astype(np.float32)
    for epoch, chunk in enumerate(epoch_batches([rows], 32, seed=0, first_epoch=0, n_epoch=4), 1):
        critics.train_epoch([chunk], None, 0, epoch, [0])
    assert critics.compiled_steps.experimental_get_tracing_count() == 1
    assert int(critics.optimizer.iterations) == 4 * 3  # 2 full batches and the 6 left over, every epoch


def test_an_exact_multiple_of_the_batch_has_no_padded_step():
    batches, batch_rows = one_epoch([64], 16)
    assert batches.shape == (1, 4, 16, 22) and list(batch_rows.numpy()) == [16] * 4


@pytest.mark.slow
def test_stacked_critics_train_exactly_as_separate_ones():
    """Three critics in one stacked network, on three folds' rows (a row
    apart in size), against three one-critic networks started from the
    same weights and fed the same batches: weights and bounds agree."""
    batches, batch_rows = one_epoch([64, 67, 63], 16)
    assert batches.shape == (3, 4, 16, 22) and list(batch_rows.numpy()) == [16, 16, 16, 15]  # all train on 63 rows
    together = compiled(critics=3)
    initial = [together.model.statistics_network.critic_weights(k) for k in range(3)]
    means, _, _ = together.train_epoch([(batches, batch_rows)], None, 0, 1, [0, 1, 2])
    for k in range(3):
        alone = compiled(seed=k)  # Dense layers: a single critic's network
        alone.model.statistics_network.set_weights(initial[k])
        alone_means, _, _ = alone.train_epoch([(batches[k : k + 1], batch_rows)], None, 0, 1, [k])
        np.testing.assert_allclose(means[k], alone_means[0], rtol=1e-5, atol=1e-6)
        for weight, alone_weight in zip(
            together.model.statistics_network.critic_weights(k),
            alone.model.statistics_network.get_weights(),
            strict=True,
        ):
            np.testing.assert_allclose(weight, alone_weight, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(
            together.model.log_moving_average.numpy()[k], alone.model.log_moving_average.numpy()[0], rtol=1e-5
        )
    assert int(together.optimizer.iterations) == 4


def test_stacked_critics_start_as_dense_layers_would():
    """Each critic's kernels are drawn at the scale Dense draws them,
    whatever the number of critics stacked."""
    limit = np.sqrt(6.0 / (128 + 128))
    for critics in (1, 5):
        network = MineModel(10, 1, 128, 1, critics=critics, seed=3).statistics_network
        for k in range(critics):
            kernel = network.critic_weights(k)[2]  # hidden_2's kernel
            assert kernel.shape == (128, 128)
            assert np.abs(kernel).max() <= limit and np.abs(kernel).max() > 0.9 * limit


def constant_rate(rate):
    schedule = EpochSchedule()
    schedule.set(0, 1, rate, rate)
    return schedule


@pytest.mark.slow
@pytest.mark.parametrize("flags, recovered", [([], True), (["--adam_beta_2", "0.999"], False)])
def test_adam_forgets_one_huge_gradient_within_1000_steps_at_the_default(flags, recovered):
    # A gradient 1,000 times the usual, then usual ones: Adam's steps stay
    # small until its squared-gradient average forgets the huge one.
    config = parse_flags(flags)
    optimizer = make_optimizer(config.critic_settings, constant_rate(config.lr))
    weight = tf.Variable([0.0])
    optimizer.build([weight])
    optimizer.apply_gradients([(tf.constant([1000.0]), weight)])
    for _ in range(1000):
        before = float(weight[0])
        optimizer.apply_gradients([(tf.constant([1.0]), weight)])
    step = before - float(weight[0])
    assert (step > 0.5 * config.lr) == recovered and (step < 0.1 * config.lr) != recovered


def test_each_candidate_decays_only_its_own_critics():
    # With a zero gradient Adam moves nothing, so what changes is the decoupled decay alone:
    # every weight of a wd0.5 critic times 1 - 0.5 * lr, the other candidate's critics untouched.
    config = parse_flags(["--candidates", "rank:tanh,asinh:relu:wd0.5"])
    model = MineModel(10, 1, 8, 1, activation=["tanh", "relu"] * 2, critics=4, seed=1)
    optimizer = make_optimizer(config.critic_settings, constant_rate(0.1), critics=4)
    before = [variable.numpy() for variable in model.trainable_variables]
    optimizer.apply_gradients([(tf.zeros_like(variable), variable) for variable in model.trainable_variables])
    for old, variable in zip(before, model.trainable_variables, strict=True):
        np.testing.assert_allclose(variable.numpy(), old * np.array([1, 0.95, 1, 0.95]).reshape(-1, 1, 1), rtol=1e-6)


@pytest.mark.parametrize("text", ["asinh:relu:2", "asinh:relu:wd-1", "asinh:relu:wdinf", "asinh:relu:wd1:wd2"])
def test_a_candidate_weight_decay_must_be_wd_and_a_number(text):
    with pytest.raises(InputError, match=f"'{text}' is not TRANSFORM:ACTIVATION or TRANSFORM:ACTIVATION:wdDECAY"):
        parse_flags(["--candidates", f"rank:tanh,{text}"])


def second_differences(network, critic, points, step):
    """T(u + v) + T(u - v) - 2 T(u) of one critic at each point u, for one step v: 2 v'Av wherever T is a
    quadratic form u'Au + b'u + c, whatever u."""
    critics = network.critics

    def scores(samples):
        stacked = tf.tile(tf.constant(samples, tf.float32)[None], [critics, 1, 1])
        return network(stacked).numpy()[critic, :, 0]

    return scores(points + step) + scores(points - step) - 2 * scores(points)


def test_a_quadratic_critic_is_a_quadratic_form_beside_others_in_its_stack():
    network = MineModel(2, 1, 16, 1, activation=["tanh", "quadratic", "relu"], critics=3, seed=4).statistics_network
    rng = np.random.default_rng(0)
    points, step = rng.standard_normal((50, 3)), rng.standard_normal(3)
    quadratic = second_differences(network, 1, points, step)
    np.testing.assert_allclose(quadratic, np.full(50, quadratic.mean()), rtol=1e-4, atol=1e-4)
    assert np.ptp(second_differences(network, 0, points, step)) > 100 * np.ptp(quadratic)  # tanh: not a quadratic


def test_a_quadratic_critic_taken_from_its_stack_scores_as_in_it():
    model = MineModel(2, 1, 16, 1, activation=["tanh", "quadratic"], critics=2, seed=4)
    samples = tf.random.stateless_normal([2, 20, 3], seed=[1, 2])
    alone = model.critic(1)
    assert alone.statistics_network.activation == "quadratic"
    np.testing.assert_allclose(
        alone.statistics_network(samples[1:]).numpy(), model.statistics_network(samples).numpy()[1:], rtol=1e-5
    )


def test_copula_weights_give_the_gaussian_log_density_ratio():
    rng = np.random.default_rng(0)
    covariance = np.array([[1.0, 0.5, 0.3], [0.5, 1.0, 0.2], [0.3, 0.2, 1.0]])
    samples = rng.multivariate_normal([0.5, -1.0, 2.0], covariance, 400_000)
    network = MineModel(2, 1, 8, 1, activation="copula", seed=0).statistics_network
    network.set_weights(copula_weights(samples, 2, 8, 1))
    points = rng.multivariate_normal([0.5, -1.0, 2.0], covariance, 6)

    def log_density(values, block):
        centred, part = values - np.array([0.5, -1.0, 2.0])[block], covariance[np.ix_(block, block)]
        quadratic = np.einsum("ri,ij,rj->r", centred, np.linalg.inv(part), centred)
        return -0.5 * (quadratic + np.linalg.slogdet(2 * np.pi * part)[1])

    exact = log_density(points, [0, 1, 2]) - log_density(points[:, :2], [0, 1]) - log_density(points[:, 2:], [2])
    scores = network(tf.constant(points[None], tf.float32)).numpy()[0, :, 0]
    np.testing.assert_allclose(scores, exact, atol=0.02)


def test_fitted_critics_alone_take_the_hidden_units_their_quadratic_form_needs():
    config = parse_flags(["--candidates", "rank:tanh,rank:copula,standardize:copula"])
    assert critic_settings_of(config, [1, 2]).hid_width == 2  # 2 min(10, 1): the rank of the log ratio at 10 x 1
    assert critic_settings_of(config, [0, 1]).hid_width == 128  # beside a trained critic, as --hid_width says
    wide = dataclasses.replace(config, data_dim=100, latent_dim=100)
    assert critic_settings_of(wide, [1]).hid_width == 128  # rank up to 200: the largest 128 (copula_weights)


def test_a_fitted_critic_keeps_its_weights_while_its_stack_trains():
    config = Config(hid_width=16, candidates="rank:tanh,rank:copula", lr=0.01)
    stack = CompiledCritics(config.critic_settings, 2, tf.distribute.get_strategy(), seed=0)
    stack.set_learning_rate(0.01, 0.01, 1)
    rows = np.random.default_rng(3).standard_normal((64, 22)).astype(np.float32)
    fitted = copula_weights(rows[:, :11], 10, 16, 1)
    stack.model.statistics_network.set_critic_weights(1, fitted)
    before = stack.model.statistics_network.critic_weights(0)
    stack.train_epoch(list(epoch_batches([rows, rows], 16, 0, 0, 1)), None, 0, 1, [0, 1])
    for weight, expected in zip(stack.model.statistics_network.critic_weights(1), fitted, strict=True):
        np.testing.assert_array_equal(weight, expected.reshape(weight.shape))
    assert any(
        not np.array_equal(a, b) for a, b in zip(stack.model.statistics_network.critic_weights(0), before, strict=True)
    )


def test_a_fitted_candidate_takes_no_weight_decay():
    with pytest.raises(InputError, match="fitted, not trained"):
        parse_flags(["--candidates", "rank:tanh,rank:copula:wd2"])


def test_every_pair_parts_of_a_copula_critic_are_those_over_every_pair():
    rng = np.random.default_rng(5)
    samples = rng.multivariate_normal([0, 0, 0], [[1.0, 0.6, 0.3], [0.6, 1.0, 0.1], [0.3, 0.1, 1.0]], 300)
    weights = copula_weights(samples, 2, 8, 1)
    network = MineModel(2, 1, 8, 1, activation="copula", seed=0).statistics_network
    network.set_weights(weights)
    x, z = samples[:40, :2], samples[:40, 2:]
    pairs = np.array([[*x[i], *z[j]] for i in range(40) for j in range(40)], np.float32)
    scores = network(tf.constant(pairs[None])).numpy()[0, :, 0].reshape(40, 40)
    terms = copula_pair_terms(weights, x, z)
    np.testing.assert_allclose(terms[0][:, None] + terms[1][None] + terms[2] @ terms[3].T, scores, atol=1e-4)
    others = scores[~np.eye(40, dtype=bool)]
    expected = scores.diagonal().mean(), np.log(np.mean(np.exp(others.astype(np.float64))))
    assert every_pair_parts(*terms) == pytest.approx(expected, abs=1e-4)


def test_a_pooled_reading_over_every_cyclic_shift_is_the_bound_over_every_pair():
    rng = np.random.default_rng(6)
    rows = rng.standard_normal((2, 25, 3)).astype(np.float32)  # two halves of 25 rows of (x [2], z [1])
    model = MineModel(2, 1, 8, 1, seed=0)
    halves = (tf.constant(np.concatenate([rows, rows], axis=-1)[None]), tf.constant([[25, 25]]))
    shifts = [tf.fill([2], shift) for shift in range(1, 25)]
    pooled = pooled_bound(*parts_in_pairings(model, halves, shifts, 1), "mine").numpy()[0]
    for half, expected in zip(rows, pooled, strict=True):
        pairs = np.array([[*half[i, :2], half[j, 2]] for i in range(25) for j in range(25)], np.float32)
        scores = model.statistics_network(tf.constant(pairs[None])).numpy()[0, :, 0].reshape(25, 25)
        others = scores[~np.eye(25, dtype=bool)].astype(np.float64)
        assert expected == pytest.approx(scores.diagonal().mean() - np.log(np.mean(np.exp(others))), abs=1e-5)
