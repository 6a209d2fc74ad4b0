"""Epochs of critics given as one array of rows each, for tests and benchmarks: the product makes its critics'
rows from an input (mi_main.in_memory_rows); these make them from arrays, with no held-out rows."""

import numpy as np
import tensorflow as tf

from mi_data_processing import CriticRows, InMemoryRows, stacked_rows


def memory_rows(
    rows_per_critic: list[np.ndarray], batch_size: int, seed: int = 0, n_epoch: int = 1, resample_latent_dim: int = 0
) -> InMemoryRows:
    """InMemoryRows of critics that each train on all of their own rows."""
    stacked, counts = stacked_rows(rows_per_critic)
    indices = np.broadcast_to(np.arange(stacked.shape[1], dtype=np.int32), stacked.shape[:2])
    return InMemoryRows(
        total_rows=int(counts.sum()),
        training_counts=[int(count) for count in counts],
        held_out_rows=[],
        transform_parameters=[],
        batch_size=batch_size,
        seed=seed,
        n_epoch=n_epoch,
        resampled_latent_dim=resample_latent_dim,
        critic_rows=CriticRows(tf.constant(stacked), np.arange(len(counts)), tf.constant(indices), counts),
    )


def epoch_batches(
    rows_per_critic: list[np.ndarray],
    batch_size: int,
    seed: int,
    first_epoch: int,
    n_epoch: int,
    resample_latent_dim: int = 0,
) -> tf.data.Dataset:
    """Every chunk of epochs first_epoch, ..., n_epoch - 1, every critic in the stack."""
    data = memory_rows(rows_per_critic, batch_size, seed, n_epoch, resample_latent_dim)
    return data.chunks(first_epoch, list(range(len(rows_per_critic))))
