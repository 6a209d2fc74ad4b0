"""The in-graph epoch loop: same result as the reference's per-batch loop,
traced once, the last short batch trained as one more (padded) step, and
K critics stacked in one network (EinsumDense) training exactly as K
separate ones (Dense)."""

import numpy as np
import pytest
import tensorflow as tf

from mi_data_processing import epoch_batches
from mi_main import InputError, make_optimizer, make_train_step, parse_args, train_chunk
from mi_model import MineModel


def fresh(seed=0, critics=1):
    # SGD: Adam divides by the gradient's running size, which turns float32
    # reassociation noise in a near-zero gradient into a visible step.
    tf.keras.utils.set_random_seed(seed)
    model = MineModel(10, 1, 32, 1, "mine", critics=critics)
    optimizer = tf.keras.optimizers.SGD(0.05)
    optimizer.build(model.trainable_variables)
    return model, optimizer


def compiled_epoch(model, optimizer, jit=True):
    step = make_train_step(model, optimizer)
    return tf.function(lambda batches, batch_rows: train_chunk(step, batches, batch_rows), jit_compile=jit)


def one_epoch(row_counts, batch_size, epoch=0):
    rng = np.random.default_rng(1)
    rows = [rng.standard_normal((n_rows, 22)).astype(np.float32) for n_rows in row_counts]
    return next(iter(epoch_batches(rows, batch_size, seed=0, first_epoch=epoch, n_epoch=epoch + 1)))


@pytest.mark.parametrize("jit", [True, False])
def test_epoch_loop_matches_the_per_batch_python_loop(jit):
    batches, batch_rows = one_epoch([100], 16)  # 6 batches of 16, then 4 rows padded to 16
    assert batches.shape == (1, 7, 16, 22) and list(batch_rows.numpy()) == [16] * 6 + [4]

    fast_model, fast_optimizer = fresh()
    fast_means = compiled_epoch(fast_model, fast_optimizer, jit)(batches, batch_rows).numpy()[0]

    plain_model, plain_optimizer = fresh()
    plain_step = tf.function(make_train_step(plain_model, plain_optimizer))
    per_batch = [plain_step(batches[:, step, : int(size)]).numpy()[0] for step, size in enumerate(batch_rows.numpy())]
    sizes = batch_rows.numpy()

    assert int(fast_optimizer.iterations) == int(plain_optimizer.iterations) == 7
    for fast, plain in zip(fast_model.weights, plain_model.weights, strict=True):
        np.testing.assert_allclose(fast.numpy(), plain.numpy(), rtol=1e-4, atol=1e-5)
    # the epoch's figures are the row-weighted means of the batches'
    np.testing.assert_allclose(
        fast_means, (sizes[:, None] * np.array(per_batch)).sum(axis=0) / 100, rtol=1e-4, atol=1e-5
    )


def test_no_retrace_after_the_first_epoch():
    model, optimizer = fresh()
    train_epoch = compiled_epoch(model, optimizer)
    rows = np.random.default_rng(2).standard_normal((70, 22)).astype(np.float32)
    for batches, batch_rows in epoch_batches([rows], 32, seed=0, first_epoch=0, n_epoch=4):
        train_epoch(batches, batch_rows)
    assert train_epoch.experimental_get_tracing_count() == 1
    assert int(optimizer.iterations) == 4 * 3  # 2 full batches and the 6 left over, every epoch


def test_an_exact_multiple_of_the_batch_has_no_padded_step():
    batches, batch_rows = one_epoch([64], 16)
    assert batches.shape == (1, 4, 16, 22) and list(batch_rows.numpy()) == [16] * 4


def test_stacked_critics_train_exactly_as_separate_ones():
    """Three critics in one stacked network, on three folds' rows (a row
    apart in size), against three one-critic networks started from the
    same weights and fed the same batches: weights and bounds agree."""
    batches, batch_rows = one_epoch([64, 67, 63], 16)
    assert batches.shape == (3, 4, 16, 22) and list(batch_rows.numpy()) == [16, 16, 16, 15]  # all train on 63 rows
    together, together_optimizer = fresh(0, critics=3)
    means = compiled_epoch(together, together_optimizer)(batches, batch_rows).numpy()
    tf.keras.utils.set_random_seed(0)
    initial = MineModel(10, 1, 32, 1, "mine", critics=3).statistics_network
    for k in range(3):
        alone, alone_optimizer = fresh(k)  # Dense layers: a single critic's network
        alone.statistics_network.set_weights(initial.critic_weights(k))
        alone_means = compiled_epoch(alone, alone_optimizer)(batches[k : k + 1], batch_rows).numpy()[0]
        np.testing.assert_allclose(means[k], alone_means, rtol=1e-5, atol=1e-6)
        for weight, alone_weight in zip(
            together.statistics_network.critic_weights(k), alone.statistics_network.get_weights(), strict=True
        ):
            np.testing.assert_allclose(weight, alone_weight, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(
            together.log_moving_average.numpy()[k], alone.log_moving_average.numpy()[0], rtol=1e-5
        )
    assert int(together_optimizer.iterations) == 4


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


@pytest.mark.parametrize("flags, recovered", [([], True), (["--adam_beta_2", "0.999"], False)])
def test_adam_forgets_one_huge_gradient_within_1000_steps_at_the_default(flags, recovered):
    # A gradient 1,000 times the usual, then usual ones: Adam's steps stay
    # small until its squared-gradient average forgets the huge one.
    args = parse_args([*flags, "--lr_schedule", "constant"])
    optimizer = make_optimizer(args, 1000)
    weight = tf.Variable([0.0])
    optimizer.build([weight])
    optimizer.apply_gradients([(tf.constant([1000.0]), weight)])
    for _ in range(1000):
        before = float(weight[0])
        optimizer.apply_gradients([(tf.constant([1.0]), weight)])
    step = before - float(weight[0])
    assert (step > 0.5 * args.lr) == recovered and (step < 0.1 * args.lr) != recovered


def test_each_candidate_decays_only_its_own_critics():
    # With a zero gradient Adam moves nothing, so what changes is the decoupled decay alone:
    # every weight of a wd0.5 critic times 1 - 0.5 * lr, the other candidate's critics untouched.
    args = parse_args(["--candidates", "rank:tanh,asinh:relu:wd0.5", "--lr_schedule", "constant", "--lr", "0.1"])
    model = MineModel(10, 1, 8, 1, activation=["tanh", "relu"] * 2, critics=4, seed=1)
    optimizer = make_optimizer(args, 100, critics=4)
    before = [variable.numpy() for variable in model.trainable_variables]
    optimizer.apply_gradients([(tf.zeros_like(variable), variable) for variable in model.trainable_variables])
    for old, variable in zip(before, model.trainable_variables, strict=True):
        np.testing.assert_allclose(variable.numpy(), old * np.array([1, 0.95, 1, 0.95]).reshape(-1, 1, 1), rtol=1e-6)


@pytest.mark.parametrize("text", ["asinh:relu:2", "asinh:relu:wd-1", "asinh:relu:wdinf", "asinh:relu:wd1:wd2"])
def test_a_candidate_weight_decay_must_be_wd_and_a_number(text):
    with pytest.raises(InputError, match=f"'{text}' is not TRANSFORM:ACTIVATION or TRANSFORM:ACTIVATION:wdDECAY"):
        parse_args(["--candidates", f"rank:tanh,{text}"])
