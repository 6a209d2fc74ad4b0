"""The in-graph epoch loop: same result as the reference's per-batch loop,
traced once, the last short batch trained as one more step, and several
critics (--folds) stepped side by side as each would train alone."""

import numpy as np
import pytest
import tensorflow as tf

from mi_data_processing import epoch_batches
from mi_main import make_train_epoch, make_train_step
from mi_model import MineModel


def fresh(seed=0):
    # SGD: Adam divides by the gradient's running size, which turns float32
    # reassociation noise in a near-zero gradient into a visible step.
    tf.keras.utils.set_random_seed(seed)
    model = MineModel(10, 1, 32, 1, "mine")
    optimizer = tf.keras.optimizers.SGD(0.05)
    optimizer.build(model.trainable_variables)
    return model, optimizer


def one_epoch(n_rows, batch_size, epoch=0):
    rows = np.random.default_rng(1).standard_normal((n_rows, 22)).astype(np.float32)
    return next(iter(epoch_batches(rows, batch_size, seed=0, first_epoch=epoch, n_epoch=epoch + 1)))


@pytest.mark.parametrize("jit", [True, False])
def test_epoch_loop_matches_the_per_batch_python_loop(jit):
    full_batches, last_batch = one_epoch(100, 16)  # 6 batches of 16, then 4 rows

    fast_model, fast_optimizer = fresh()
    fast_means = make_train_epoch([make_train_step(fast_model, fast_optimizer)], jit)([(full_batches, last_batch)]).numpy()[0]

    plain_model, plain_optimizer = fresh()
    plain_step = tf.function(make_train_step(plain_model, plain_optimizer))
    per_batch = [plain_step(batch).numpy() for batch in list(full_batches) + [last_batch]]
    sizes = np.array([16] * 6 + [4])

    assert int(fast_optimizer.iterations) == int(plain_optimizer.iterations) == 7
    for fast, plain in zip(fast_model.weights, plain_model.weights):
        np.testing.assert_allclose(fast.numpy(), plain.numpy(), rtol=1e-4, atol=1e-5)
    # the epoch's figures are the row-weighted means of the batches'
    np.testing.assert_allclose(fast_means, (sizes[:, None] * np.array(per_batch)).sum(axis=0) / 100, rtol=1e-4, atol=1e-5)


def test_no_retrace_after_the_first_epoch():
    model, optimizer = fresh()
    train_epoch = make_train_epoch([make_train_step(model, optimizer)], jit=True)
    rows = np.random.default_rng(2).standard_normal((70, 22)).astype(np.float32)
    for full_batches, last_batch in epoch_batches(rows, 32, seed=0, first_epoch=0, n_epoch=4):
        train_epoch([(full_batches, last_batch)])
    assert train_epoch.experimental_get_tracing_count() == 1
    assert int(optimizer.iterations) == 4 * 3  # 2 full batches and the 6 left over, every epoch


def test_an_exact_multiple_of_the_batch_has_no_last_batch():
    full_batches, last_batch = one_epoch(64, 16)
    assert full_batches.shape == (4, 16, 22) and last_batch.shape == (0, 22)
    model, optimizer = fresh()
    make_train_epoch([make_train_step(model, optimizer)], jit=True)([(full_batches, last_batch)])
    assert int(optimizer.iterations) == 4


def test_critics_side_by_side_train_as_they_would_alone():
    """Folds differ by a row, so one critic has a step or a last batch the
    other lacks; each must still see exactly its own batches."""
    rng = np.random.default_rng(4)
    epochs = [next(iter(epoch_batches(rng.standard_normal((n_rows, 22)).astype(np.float32), 16, 0, 0, 1))) for n_rows in (64, 67, 63)]
    together = [fresh(seed) for seed in range(3)]
    means = make_train_epoch([make_train_step(*pair) for pair in together], jit=True)(epochs).numpy()
    for seed, (element, (model, optimizer)) in enumerate(zip(epochs, together)):
        alone_model, alone_optimizer = fresh(seed)
        alone_means = make_train_epoch([make_train_step(alone_model, alone_optimizer)], jit=True)([element]).numpy()[0]
        assert int(optimizer.iterations) == int(alone_optimizer.iterations) == element[0].shape[0] + (element[1].shape[0] > 0)
        np.testing.assert_allclose(means[seed], alone_means, rtol=1e-5, atol=1e-6)
        for weight, alone_weight in zip(model.weights, alone_model.weights):
            np.testing.assert_allclose(weight.numpy(), alone_weight.numpy(), rtol=1e-5, atol=1e-6)
