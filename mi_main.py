"""Estimate the mutual information I(X; Z) in nats with MINE.

Trains the statistics network T to maximize the Donsker-Varadhan bound
(Belghazi et al., 2018) on rows of (x, z, x_bar, z_bar) and writes the
estimate per epoch. A share of the rows is held out: the bound on rows the
network never trained on is the estimate reported, since the bound on the
training rows overestimates once T fits them. Edit the defaults below or
override any of them:

    python mi_main.py --input data/input_set.dat --n_epoch 100 --lr 0.001
"""

import argparse
import os
import sys
import time

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # hide TensorFlow's start-up chatter
import tensorflow as tf  # noqa: E402

from mi_data_processing import (  # noqa: E402
    InputError,
    epoch_batches,
    fit_transform,
    load_rows,
    read_sidecar,
    reshuffled,
    save_json,
    save_rows,
    split_rows,
)
from mi_layers import training_flops_per_row  # noqa: E402
from mi_model import ESTIMATORS, MineModel, cross_selected_estimate  # noqa: E402

# Model
HID_WIDTH = 128  # units in each of T's two hidden layers
OUT_WIDTH = 1  # outputs of T (1: one score per sample)
DATA_DIM = 10  # columns of x
LATENT_DIM = 1  # columns of z
ESTIMATOR = "mine"  # "mine" (bias-corrected gradient), "mine_biased" (the reference's), "mine_f"
EMA_RATE = 0.01  # weight of each batch in mine's moving average of mean exp T
# Data
INPUT = "data/input_set.dat"
DATA_SIZE = None  # rows expected in the input; None takes the file's count
VAL_FRACTION = 0.2  # share of rows held out to evaluate the bound on; 0: none (the reference)
TRANSFORM = "rank"  # per-column map fitted on training rows: "rank", "standardize" or "none"
MARGINAL = "resample"  # "resample": fresh marginal pairs every epoch; "file": the file's fixed rows
EVAL_PERMUTATIONS = 4  # fresh marginal pairings averaged per held-out evaluation
# Training
BATCH_SIZE = 256
N_EPOCH = 100
LR = 0.001
OPTIMIZER = "adam"  # "adam" or "sgd" (the reference's)
LR_SCHEDULE = "cosine"  # "cosine": decays to 0 over the run; "constant": the reference's
SEED = 0
JIT = True  # compile each epoch with XLA
# Output
OUTPUT_DIR = "results"

ESTIMATE_FILE = "MINE_estimated_mutual_information.dat"
PARTS_FILE = "MINE_cost_parts.dat"
HELD_OUT_FILE = "MINE_held_out_mutual_information.dat"
SUMMARY_FILE = "summary.json"


class OneLineParser(argparse.ArgumentParser):
    """Reports a bad flag in one line on stderr with exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def fraction(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 0 and below 1, got {text}")
    return value


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
    parser.add_argument("--estimator", choices=ESTIMATORS, default=ESTIMATOR, help="mine: bias-corrected gradient; mine_biased: the reference's; mine_f: f-divergence bound")
    parser.add_argument("--ema_rate", type=fraction, default=EMA_RATE, help="moving-average rate of --estimator mine")
    parser.add_argument("--input", default=INPUT, help="row file: x, z, x_bar, z_bar per line, or x, z alone")
    parser.add_argument("--data_size", type=positive(int), default=DATA_SIZE, help="rows expected in --input (None: take the file's count)")
    parser.add_argument("--val_fraction", type=fraction, default=VAL_FRACTION, help="share of rows held out for the estimate; 0 reports the training rows' bound, as the reference")
    parser.add_argument("--transform", choices=["rank", "standardize", "none"], default=TRANSFORM, help="per-column map fitted on the training rows")
    parser.add_argument("--marginal", choices=["resample", "file"], default=MARGINAL, help="resample: pair each x_bar with another row's z_bar, afresh every epoch; file: the file's marginal half as it is")
    parser.add_argument("--eval_permutations", type=positive(int), default=EVAL_PERMUTATIONS, help="fresh marginal pairings averaged per held-out evaluation")
    parser.add_argument("--batch_size", type=positive(int), default=BATCH_SIZE, help="rows per gradient step")
    parser.add_argument("--n_epoch", type=positive(int), default=N_EPOCH, help="passes over the rows")
    parser.add_argument("--lr", type=positive(float), default=LR, help="learning rate")
    parser.add_argument("--optimizer", choices=["adam", "sgd"], default=OPTIMIZER, help="sgd is the reference's")
    parser.add_argument("--lr_schedule", choices=["cosine", "constant"], default=LR_SCHEDULE, help="cosine: --lr decays to 0 over the run, so the last epochs' weights settle; constant: the reference's")
    parser.add_argument("--seed", type=int, default=SEED, help="seeds the weights and the shuffles")
    parser.add_argument("--jit", action=argparse.BooleanOptionalAction, default=JIT, help="compile each epoch with XLA")
    parser.add_argument("--output_dir", default=OUTPUT_DIR, help="where results are written (created if missing)")
    return parser.parse_args(argv)


def fail(message):
    """Ends the run on bad input: one line on stderr, exit status 2."""
    print(f"mi_main.py: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def read_input(args):
    """The checked rows, always in the full 2 * (data_dim + latent_dim) layout.

    A joint-only file gets a copy of its joint half as marginal half; the
    resampling then pairs each x with another row's z.
    """
    width = args.data_dim + args.latent_dim
    try:
        rows = load_rows(args.input, (2 * width, width))
    except InputError as error:
        message = str(error)
        if "columns, expected" in message:
            message += f" (--data_dim {args.data_dim} and --latent_dim {args.latent_dim} make {2 * width} columns, or {width} for the joint half alone)"
        fail(message)
    if args.data_size is not None and args.data_size != len(rows):
        fail(f"--data_size {args.data_size} disagrees with {args.input}, which has {len(rows)} rows")
    if rows.shape[1] == width:
        if args.marginal == "file":
            fail(f"--marginal file needs the marginal half in {args.input}, which has the joint half alone ({width} columns)")
        rows = np.concatenate([rows, rows], axis=1)
    return rows


def split_input(args, rows):
    """(training, held_out) rows, checked to be enough for a batch and an evaluation."""
    training_rows, held_out_rows = split_rows(rows, args.val_fraction, args.seed)
    if len(training_rows) < args.batch_size:
        fail(
            f"{args.input} has {len(rows)} rows, {len(training_rows)} of them for training after --val_fraction "
            f"{args.val_fraction}: fewer than one batch (--batch_size {args.batch_size})"
        )
    if args.val_fraction > 0 and len(held_out_rows) < 4:
        fail(f"--val_fraction {args.val_fraction} holds out {len(held_out_rows)} of {len(rows)} rows; at least 4 are needed")
    return training_rows, held_out_rows


def make_optimizer(args, total_steps):
    learning_rate = args.lr
    if args.lr_schedule == "cosine":
        learning_rate = tf.keras.optimizers.schedules.CosineDecay(args.lr, total_steps)
    if args.optimizer == "sgd":
        return tf.keras.optimizers.SGD(learning_rate)
    return tf.keras.optimizers.Adam(learning_rate)


def make_train_step(model, optimizer):
    """The training step of the reference: one gradient step on a batch.

    Returns (bound, joint_part, marginal_part) of the batch.
    """

    def train_step(batch):
        with tf.GradientTape() as tape:
            cost, joint_part, marginal_part = model(batch, training=True)
        gradients = tape.gradient(cost, model.trainable_variables)
        optimizer.apply_gradients(zip(gradients, model.trainable_variables))
        return tf.stack([-cost, joint_part, marginal_part])

    return train_step


def make_train_epoch(train_step, jit):
    """Every step of one epoch in a single TensorFlow call, compiled with
    XLA when `jit`: no Python runs between steps. Called with one element of
    epoch_batches; returns the row-weighted means of (bound, joint_part,
    marginal_part) over the epoch's batches. Shapes are the same every
    epoch, so it is traced once."""

    @tf.function(jit_compile=jit)
    def train_epoch(full_batches, last_batch):
        steps, batch_size, _ = full_batches.shape
        totals = tf.zeros([3])
        for step in tf.range(steps):
            totals += batch_size * train_step(full_batches[step])
        if last_batch.shape[0]:  # the rows left over, as one smaller batch
            totals += last_batch.shape[0] * train_step(last_batch)
        return totals / (steps * batch_size + last_batch.shape[0])

    return train_epoch


def main(argv=None):
    args = parse_args(argv)
    rows = read_input(args)
    training_rows, held_out_rows = split_input(args, rows)
    try:
        os.makedirs(args.output_dir, exist_ok=True)
    except OSError as error:
        fail(f"--output_dir {args.output_dir}: cannot create: {error.strerror}")
    truth = (read_sidecar(args.input) or {}).get("true_mi_nats")

    transform = fit_transform(args.transform, training_rows, args.data_dim + args.latent_dim)
    training_rows, held_out_rows = transform(training_rows), transform(held_out_rows)
    resample_latent_dim = args.latent_dim if args.marginal == "resample" else 0

    tf.keras.utils.set_random_seed(args.seed)
    model = MineModel(args.data_dim, args.latent_dim, args.hid_width, args.out_width, args.estimator, args.ema_rate)
    n_rows = len(training_rows)
    optimizer = make_optimizer(args, args.n_epoch * -(-n_rows // args.batch_size))
    optimizer.build(model.trainable_variables)

    train_epoch = make_train_epoch(make_train_step(model, optimizer), args.jit)

    half = len(held_out_rows) // 2
    held_out_halves = (tf.constant(held_out_rows[:half]), tf.constant(held_out_rows[half:]))
    passes = args.eval_permutations if resample_latent_dim else 1

    sample_width = args.data_dim + args.latent_dim

    @tf.function
    def evaluate_held_out(epoch):
        """The bound on each half of the held-out rows, each half in one
        batch, averaged over `passes` fresh marginal pairings (streams 1..
        keep them apart from the training order). The joint scores do not
        depend on the pairing, so they are computed once. Not compiled with
        XLA: measured faster without, and it saves the compile."""
        bounds = []
        for rows in held_out_halves:
            joint_scores = model.statistics_network(rows[:, :sample_width])
            pairings = [reshuffled(rows, args.seed, epoch, stream, resample_latent_dim) for stream in range(1, passes + 1)]
            bounds.append(tf.reduce_mean([
                model.bound(joint_scores, model.statistics_network(paired[:, sample_width:]))[0] for paired in pairings
            ]))
        return tf.stack(bounds)

    print(
        f"MINE ({args.estimator}) on {args.input}: {n_rows} training rows, {len(held_out_rows)} held out, "
        f"batch {args.batch_size}, {args.n_epoch} epochs, {args.optimizer} lr {args.lr}, seed {args.seed}"
        + (f", true MI {truth} nats" if truth is not None else "")
    )
    flops_per_row = training_flops_per_row(args.data_dim + args.latent_dim, args.hid_width, args.out_width)
    history, step_seconds = [], []
    train_start = time.perf_counter()
    epochs = epoch_batches(training_rows, args.batch_size, args.seed, 0, args.n_epoch, resample_latent_dim)
    for epoch, (full_batches, last_batch) in enumerate(epochs, 1):
        epoch_start = time.perf_counter()
        bound, joint_part, marginal_part = train_epoch(full_batches, last_batch).numpy()
        step_seconds.append(time.perf_counter() - epoch_start)
        bound_a, bound_b = evaluate_held_out(tf.constant(epoch, tf.int64)).numpy() if half else (np.nan, np.nan)
        held_out_bound = (bound_a + bound_b) / 2
        history.append((bound, joint_part, marginal_part, held_out_bound, bound_a, bound_b))
        rows_per_second = n_rows / step_seconds[-1]
        print(
            f"epoch {epoch:4d}/{args.n_epoch}  train {bound:8.4f}  held-out {held_out_bound:8.4f}  "
            f"joint {joint_part:8.4f}  marginal {marginal_part:8.4f}  {time.perf_counter() - epoch_start:6.2f} s  "
            f"{rows_per_second:9.0f} rows/s  {rows_per_second * flops_per_row / 1e9:5.1f} GFLOP/s",
            flush=True,
        )
    train_seconds = time.perf_counter() - train_start
    # after the first epoch, which also traces and compiles
    steady_rows_per_second = n_rows * (len(step_seconds) - 1) / sum(step_seconds[1:]) if len(step_seconds) > 1 else np.nan

    history = np.array(history, dtype=np.float64)
    if half:
        mi_estimate, best_a, best_b = cross_selected_estimate(history[:, 4], history[:, 5])
        estimate_from = f"held-out bound at the best epochs of the other half ({best_a}, {best_b})"
    else:
        mi_estimate, estimate_from = float(history[-1, 0]), "training rows' bound, last epoch"
    save_rows(os.path.join(args.output_dir, ESTIMATE_FILE), history[:, 0])
    save_rows(os.path.join(args.output_dir, PARTS_FILE), history[:, 1:3])
    if len(held_out_rows):
        save_rows(os.path.join(args.output_dir, HELD_OUT_FILE), history[:, 3])
    summary = {
        "mi_estimate": mi_estimate,
        "mi_estimate_from": estimate_from,
        "held_out_last_epoch": float(history[-1, 3]),
        "training_rows_estimate": float(history[-1, 0]),
        "true_mi_nats": truth,
        "estimator": args.estimator,
        "n_epoch": args.n_epoch,
        "rows": len(rows),
        "training_rows": n_rows,
        "held_out_rows": len(held_out_rows),
        "batch_size": args.batch_size,
        "seed": args.seed,
        "train_seconds": round(train_seconds, 3),
        "samples_per_second": round(n_rows * args.n_epoch / train_seconds, 1),
        "first_epoch_seconds": round(step_seconds[0], 3),
        "training_rows_per_second": round(steady_rows_per_second, 1),
        "training_gflops_per_second": round(steady_rows_per_second * flops_per_row / 1e9, 2),
        "training_flops_per_row": flops_per_row,
        "hyperparameters": vars(args),
    }
    save_json(os.path.join(args.output_dir, SUMMARY_FILE), summary)
    print(
        f"estimated I(X; Z) = {mi_estimate:.4f} nats"
        + (f" (true {truth})" if truth is not None else "")
        + f" from the {estimate_from}, in {train_seconds:.1f} s; results in {args.output_dir}/"
    )
    return summary


if __name__ == "__main__":
    main()
