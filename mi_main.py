"""Estimate the mutual information I(X; Z) in nats with MINE.

Trains the statistics network T to maximize the Donsker-Varadhan bound
(Belghazi et al., 2018) on rows of (x, z, x_bar, z_bar) and writes the
estimate per epoch. Edit the defaults below or override any of them:

    python mi_main.py --input data/input_set.dat --n_epoch 100 --lr 0.001
"""

import argparse
import os
import sys
import time

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # hide TensorFlow's start-up chatter
import tensorflow as tf  # noqa: E402

from mi_data_processing import InputError, epoch_batches, load_rows, read_sidecar, save_json, save_rows  # noqa: E402
from mi_model import MineModel  # noqa: E402

# Model
HID_WIDTH = 128  # units in each of T's two hidden layers
OUT_WIDTH = 1  # outputs of T (1: one score per sample)
DATA_DIM = 10  # columns of x
LATENT_DIM = 1  # columns of z
# Data
INPUT = "data/input_set.dat"
DATA_SIZE = None  # rows expected in the input; None takes the file's count
# Training
BATCH_SIZE = 256
N_EPOCH = 12
LR = 0.001
OPTIMIZER = "adam"  # "adam" or "sgd" (the reference's)
SEED = 0
JIT = True  # compile each epoch with XLA
# Output
OUTPUT_DIR = "results"

ESTIMATE_FILE = "MINE_estimated_mutual_information.dat"
PARTS_FILE = "MINE_cost_parts.dat"
SUMMARY_FILE = "summary.json"


class OneLineParser(argparse.ArgumentParser):
    """Reports a bad flag in one line on stderr with exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def positive(kind):
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not a {'whole ' if kind is int else ''}number") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be greater than 0, got {text}")
        return value

    return parse


def parse_args(argv=None):
    parser = OneLineParser(
        prog="mi_main.py",
        description="Estimate I(X; Z) in nats with MINE (Donsker-Varadhan bound).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--hid_width", type=positive(int), default=HID_WIDTH, help="units in each hidden layer of T")
    parser.add_argument("--out_width", type=positive(int), default=OUT_WIDTH, help="outputs of T")
    parser.add_argument("--data_dim", type=positive(int), default=DATA_DIM, help="columns of x")
    parser.add_argument("--latent_dim", type=positive(int), default=LATENT_DIM, help="columns of z")
    parser.add_argument("--input", default=INPUT, help="row file: x, z, x_bar, z_bar per line")
    parser.add_argument("--data_size", type=positive(int), default=DATA_SIZE, help="rows expected in --input (None: take the file's count)")
    parser.add_argument("--batch_size", type=positive(int), default=BATCH_SIZE, help="rows per gradient step")
    parser.add_argument("--n_epoch", type=positive(int), default=N_EPOCH, help="passes over the rows")
    parser.add_argument("--lr", type=positive(float), default=LR, help="learning rate")
    parser.add_argument("--optimizer", choices=["adam", "sgd"], default=OPTIMIZER, help="sgd is the reference's")
    parser.add_argument("--seed", type=int, default=SEED, help="seeds the weights and the shuffles")
    parser.add_argument("--jit", action=argparse.BooleanOptionalAction, default=JIT, help="compile each epoch with XLA")
    parser.add_argument("--output_dir", default=OUTPUT_DIR, help="where results are written (created if missing)")
    return parser.parse_args(argv)


def fail(message):
    """Ends the run on bad input: one line on stderr, exit status 2."""
    print(f"mi_main.py: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def read_input(args):
    columns = 2 * (args.data_dim + args.latent_dim)
    try:
        rows = load_rows(args.input, columns)
    except InputError as error:
        fail(f"{error} (--data_dim {args.data_dim} and --latent_dim {args.latent_dim} make {columns} columns per row)"
             if "columns" in str(error) else str(error))
    if args.data_size is not None and args.data_size != len(rows):
        fail(f"--data_size {args.data_size} disagrees with {args.input}, which has {len(rows)} rows")
    if len(rows) < args.batch_size:
        fail(f"{args.input} has {len(rows)} rows, fewer than one batch (--batch_size {args.batch_size})")
    return rows


def make_optimizer(name, learning_rate):
    if name == "sgd":
        return tf.keras.optimizers.SGD(learning_rate)
    return tf.keras.optimizers.Adam(learning_rate)


def main(argv=None):
    args = parse_args(argv)
    rows = read_input(args)
    try:
        os.makedirs(args.output_dir, exist_ok=True)
    except OSError as error:
        fail(f"--output_dir {args.output_dir}: cannot create: {error.strerror}")
    truth = (read_sidecar(args.input) or {}).get("true_mi_nats")

    tf.keras.utils.set_random_seed(args.seed)
    model = MineModel(args.data_dim, args.latent_dim, args.hid_width, args.out_width)
    optimizer = make_optimizer(args.optimizer, args.lr)
    optimizer.build(model.trainable_variables)
    n_rows = len(rows)

    def train_step(batch):
        with tf.GradientTape() as tape:
            cost, joint_part, marginal_part = model(batch, training=True)
        gradients = tape.gradient(cost, model.trainable_variables)
        optimizer.apply_gradients(zip(gradients, model.trainable_variables))
        return tf.stack([-cost, joint_part, marginal_part])

    @tf.function(jit_compile=args.jit)
    def train_epoch(full_batches, last_batch):
        """Every step of one epoch in a single call, so that no Python runs
        between steps. Returns the row-weighted means of (bound, joint_part,
        marginal_part) over the epoch's batches."""
        totals = tf.zeros([3])
        for step in tf.range(tf.shape(full_batches)[0]):
            totals += args.batch_size * train_step(full_batches[step])
        if last_batch.shape[0]:  # a static size, the same every epoch: one trace
            totals += last_batch.shape[0] * train_step(last_batch)
        return totals / n_rows

    print(
        f"MINE on {args.input}: {n_rows} rows, batch {args.batch_size}, {args.n_epoch} epochs, "
        f"{args.optimizer} lr {args.lr}, seed {args.seed}" + (f", true MI {truth} nats" if truth is not None else "")
    )
    history = []
    train_start = time.perf_counter()
    for epoch, (full_batches, last_batch) in enumerate(epoch_batches(rows, args.batch_size, args.seed, 0, args.n_epoch), 1):
        epoch_start = time.perf_counter()
        bound, joint_part, marginal_part = train_epoch(full_batches, last_batch).numpy()
        seconds = time.perf_counter() - epoch_start
        history.append((bound, joint_part, marginal_part))
        print(
            f"epoch {epoch:4d}/{args.n_epoch}  estimate {bound:8.4f}  joint {joint_part:8.4f}  "
            f"marginal {marginal_part:8.4f}  {seconds:6.2f} s",
            flush=True,
        )
    train_seconds = time.perf_counter() - train_start

    history = np.array(history, dtype=np.float64)
    save_rows(os.path.join(args.output_dir, ESTIMATE_FILE), history[:, 0])
    save_rows(os.path.join(args.output_dir, PARTS_FILE), history[:, 1:])
    summary = {
        "mi_estimate": float(history[-1, 0]),
        "true_mi_nats": truth,
        "n_epoch": args.n_epoch,
        "rows": n_rows,
        "batch_size": args.batch_size,
        "seed": args.seed,
        "train_seconds": round(train_seconds, 3),
        "samples_per_second": round(n_rows * args.n_epoch / train_seconds, 1),
        "hyperparameters": vars(args),
    }
    save_json(os.path.join(args.output_dir, SUMMARY_FILE), summary)
    print(
        f"estimated I(X; Z) = {summary['mi_estimate']:.4f} nats"
        + (f" (true {truth})" if truth is not None else "")
        + f" in {train_seconds:.1f} s; results in {args.output_dir}/"
    )
    return summary


if __name__ == "__main__":
    main()
