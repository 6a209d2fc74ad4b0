"""Speed benchmark: training rows per second, side by side in one run.

Not collected by pytest. Run from the repository root:

    python tests/bench_speed.py

For each batch size it measures, on the default network (11 -> 128 -> 128
-> 1 on both halves of each row):
  (a) the project's loop: a whole epoch per call to an XLA-compiled
      tf.function (mi_main.make_train_epoch), and the same without XLA;
  (b) the reference's loop: the same training step as a tf.function, called
      from Python once per batch of a tf.data dataset;
  (c) the float32 matrix-product ceiling: NumPy timing the forward and
      backward matrix products of one batch at the network's shapes.
Ratios a/b and a/c are printed with the first epoch's extra cost (tracing
and compiling) of (a).

A second table times cross-fitting's K critics (--folds K, batch 256, 8,000
training rows each, 20 epochs, compiling included): trained one after
another, one compiled call per critic and epoch, against side by side, all
K stepped in the same compiled call per epoch (what mi_main does).
"""

import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import mi_main  # noqa: E402  (sets TensorFlow's log level before importing it)
import tensorflow as tf  # noqa: E402
from mi_data_processing import epoch_batches  # noqa: E402
from mi_layers import training_flops_per_row  # noqa: E402
from mi_model import MineModel  # noqa: E402

SAMPLE_WIDTH, HID_WIDTH = 11, 128
FLOPS_PER_ROW = training_flops_per_row(SAMPLE_WIDTH, HID_WIDTH, 1)
# Rows per timed epoch: enough for about a second of work at each batch size.
ROWS = {2: 8_192, 64: 65_536, 512: 262_144, 4096: 262_144}


def fresh_model():
    tf.keras.utils.set_random_seed(0)
    model = MineModel(10, 1, HID_WIDTH, 1, "mine", activation=mi_main.ACTIVATION)
    optimizer = tf.keras.optimizers.Adam(1e-4)
    optimizer.build(model.trainable_variables)
    return model, optimizer


def project_loop(rows, batch_size, jit=True):
    """Returns (rows/s after the first epoch, first epoch's extra seconds)."""
    model, optimizer = fresh_model()
    train_epoch = mi_main.make_train_epoch([mi_main.make_train_step(model, optimizer)], jit)
    seconds = []
    for full_batches, last_batch in epoch_batches(rows, batch_size, 0, 0, 3, resample_latent_dim=1):
        start = time.perf_counter()
        train_epoch([(full_batches, last_batch)]).numpy()
        seconds.append(time.perf_counter() - start)
    steady = min(seconds[1:])
    return len(rows) / steady, seconds[0] - steady


def per_batch_python_loop(rows, batch_size):
    """The reference's way: Python calls the tf.function once per batch."""
    model, optimizer = fresh_model()
    train_step = tf.function(mi_main.make_train_step(model, optimizer))
    dataset = tf.data.Dataset.from_tensor_slices(rows).shuffle(len(rows), seed=0).batch(batch_size).prefetch(2)
    for batch in dataset.take(3):  # trace first
        train_step(batch).numpy()
    start = time.perf_counter()
    for batch in dataset:
        result = train_step(batch)
    result.numpy()
    return len(rows) / (time.perf_counter() - start)


def matmul_ceiling(batch_size, repeats):
    """Rows/s if every matrix product of a training step ran back to back
    in NumPy float32, nothing else: forward of both halves (2 * batch
    samples), then the gradients of the hidden activations and weights."""
    rng = np.random.default_rng(0)
    samples = 2 * batch_size
    inputs = rng.standard_normal((samples, SAMPLE_WIDTH), dtype=np.float32)
    weights_1 = rng.standard_normal((SAMPLE_WIDTH, HID_WIDTH), dtype=np.float32)
    weights_2 = rng.standard_normal((HID_WIDTH, HID_WIDTH), dtype=np.float32)
    weights_3 = rng.standard_normal((HID_WIDTH, 1), dtype=np.float32)
    best = np.inf
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(repeats):
            hidden_1 = inputs @ weights_1
            hidden_2 = hidden_1 @ weights_2
            scores = hidden_2 @ weights_3
            d_hidden_2 = scores @ weights_3.T
            d_weights_3 = hidden_2.T @ scores
            d_hidden_1 = d_hidden_2 @ weights_2.T
            d_weights_2 = hidden_1.T @ d_hidden_2
            d_weights_1 = inputs.T @ d_hidden_1
        best = min(best, time.perf_counter() - start)
    del d_weights_1, d_weights_2, d_weights_3
    return batch_size * repeats / best


def critics_seconds(critics, side_by_side, epochs=20, n_rows=8_000, batch_size=256):
    """Seconds to train `critics` critics for `epochs` epochs, compiling included."""
    rows = np.random.default_rng(0).standard_normal((n_rows, 2 * SAMPLE_WIDTH)).astype(np.float32)
    elements = list(epoch_batches(rows, batch_size, 0, 0, epochs, resample_latent_dim=1))
    start = time.perf_counter()
    steps = [mi_main.make_train_step(*fresh_model()) for _ in range(critics)]
    groups = [steps] if side_by_side else [[step] for step in steps]
    for group in groups:
        train_epoch = mi_main.make_train_epoch(group, jit=True)
        for element in elements:
            train_epoch([element] * len(group)).numpy()
    return time.perf_counter() - start


def main():
    print(f"TensorFlow {tf.__version__}, NumPy {np.__version__}, {os.cpu_count()} CPUs; "
          f"{FLOPS_PER_ROW / 1e3:.0f} kFLOP per training row")
    print("| batch | (a) project rows/s | (a) without XLA | (b) per-batch Python rows/s | (c) matmul ceiling rows/s "
          "| a/b | a/c | (a) GFLOP/s | (a) first-epoch extra s |")
    print("|" + " --- |" * 9, flush=True)
    for batch_size, n_rows in ROWS.items():
        rows = np.random.default_rng(batch_size).standard_normal((n_rows, 2 * SAMPLE_WIDTH)).astype(np.float32)
        project, first_epoch_extra = project_loop(rows, batch_size)
        without_xla, _ = project_loop(rows, batch_size, jit=False)
        plain = per_batch_python_loop(rows, batch_size)
        ceiling = matmul_ceiling(batch_size, max(1, n_rows // batch_size // 4))
        print(
            f"| {batch_size} | {project:,.0f} | {without_xla:,.0f} | {plain:,.0f} | {ceiling:,.0f} | {project / plain:.2f} | "
            f"{project / ceiling:.2f} | {project * FLOPS_PER_ROW / 1e9:.1f} | {first_epoch_extra:.2f} |",
            flush=True,
        )
    print("\n| critics | one after another s | side by side s | ratio |")
    print("|" + " --- |" * 4, flush=True)
    for critics in (1, 5):
        apart, together = critics_seconds(critics, side_by_side=False), critics_seconds(critics, side_by_side=True)
        print(f"| {critics} | {apart:.1f} | {together:.1f} | {apart / together:.2f} |", flush=True)


if __name__ == "__main__":
    main()
