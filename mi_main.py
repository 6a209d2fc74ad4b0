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
import hashlib
import importlib.util
import json
import os
import shlex
import signal
import sys
import time

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # hide TensorFlow's start-up chatter
import tensorflow as tf  # noqa: E402

from mi_data_processing import (  # noqa: E402
    SHARD_ROWS,
    InputError,
    build_cache,
    fold_rows,
    read_cached_rows,
    streamed_epoch,
    epoch_batches,
    TRANSFORMS,
    fit_transform_parameters,
    load_rows,
    make_transform,
    read_sidecar,
    reshuffled,
    save_json,
    save_rows,
    split_rows,
    write_atomically,
)
from mi_layers import ACTIVATIONS, training_flops_per_row  # noqa: E402
from mi_model import ESTIMATORS, MineModel, cross_fitted_interval, cross_selected_estimate  # noqa: E402

# Model
HID_WIDTH = 128  # units in each of T's two hidden layers
OUT_WIDTH = 1  # outputs of T (1: one score per sample)
ACTIVATION = "tanh"  # of T's hidden layers: "tanh", "relu" (the reference's), "gelu" or "softplus"
DATA_DIM = 10  # columns of x
LATENT_DIM = 1  # columns of z
ESTIMATOR = "mine"  # "mine" (bias-corrected gradient), "mine_biased" (the reference's), "mine_f"
EMA_RATE = 0.01  # weight of each batch in mine's moving average of mean exp T
# Data
INPUT = "data/input_set.dat"
DATA_SIZE = None  # rows expected in the input; None takes the file's count
FOLDS = 5  # > 1: cross-fit, every row evaluated once by a critic trained on the other folds
VAL_FRACTION = 0.2  # with one split (--folds 1): share of rows held out to evaluate the bound on; 0: none (the reference)
TRANSFORM = "rank"  # per-column map fitted on training rows: "rank", "standardize" or "none"
MARGINAL = "resample"  # "resample": fresh marginal pairs every epoch; "file": the file's fixed rows
EVAL_PERMUTATIONS = 4  # fresh marginal pairings averaged per held-out evaluation
# Training
BATCH_SIZE = 256
N_EPOCH = 100
LR = 0.003
OPTIMIZER = "adam"  # "adam" or "sgd" (the reference's)
LR_SCHEDULE = "cosine"  # "cosine": decays to 0 over the run; "constant": the reference's
SEED = 0
JIT = True  # compile each epoch with XLA
STRATEGY = "default"  # "default": one device; "mirrored": all local GPUs (or CPU_REPLICAS); "multi_worker": TF_CONFIG's cluster
CPU_REPLICAS = 2  # logical CPU devices that --strategy mirrored uses on a machine without GPUs
# Output
OUTPUT_DIR = "results"
CACHE_DIR = None  # stream the input from a binary cache here instead of loading it into memory
SHUFFLE_BUFFER = 262_144  # rows shuffled together when streaming
TRANSFORM_SAMPLE = 100_000  # training rows the input map is fitted on when streaming
LOGDIR = None  # TensorBoard event files; None: OUTPUT_DIR/logs
CHECKPOINT_EVERY = 1  # epochs between checkpoints; 0: none
CHECKPOINT_SECONDS = 10  # and at most one per this many seconds (the last epoch's always); 0: no limit
KEEP_CHECKPOINTS = 3  # checkpoints kept, the latest ones

ESTIMATE_FILE = "MINE_estimated_mutual_information.dat"
PARTS_FILE = "MINE_cost_parts.dat"
HELD_OUT_FILE = "MINE_held_out_mutual_information.dat"
SUMMARY_FILE = "summary.json"
FLAGS_FILE = "flags.txt"
CRITIC_FILE = "critic.keras"
TRANSFORM_FILE = "input_transform.npz"  # beside the critic: the input map it was trained on
PLOT_FILE = "mi_curve.png"
CHECKPOINT_DIR = "checkpoints"
RUN_IDENTITY_FILE = "run.json"  # in CHECKPOINT_DIR: what --resume must find unchanged


class OneLineParser(argparse.ArgumentParser):
    """Reports a bad flag in one line on stderr with exit status 2, and
    reads @FILE arguments as one flag (and its value) per line."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")

    def convert_arg_line_to_args(self, line):
        return shlex.split(line, comments=True)


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
        description="Estimate I(X; Z) in nats with MINE (Donsker-Varadhan bound). "
        "Flags may also come from a file: mi_main.py @run.args (one flag per line).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        fromfile_prefix_chars="@",
    )
    model = parser.add_argument_group("model")
    model.add_argument("--hid_width", type=positive(int), default=HID_WIDTH, help="units in each hidden layer of T")
    model.add_argument("--out_width", type=positive(int), default=OUT_WIDTH, help="outputs of T")
    model.add_argument("--activation", choices=ACTIVATIONS, default=ACTIVATION, help="of T's hidden layers (relu: the reference's)")
    model.add_argument("--data_dim", type=positive(int), default=DATA_DIM, help="columns of x")
    model.add_argument("--latent_dim", type=positive(int), default=LATENT_DIM, help="columns of z")
    model.add_argument("--estimator", choices=ESTIMATORS, default=ESTIMATOR, help="mine: bias-corrected gradient; mine_biased: the reference's; mine_f: f-divergence bound")
    model.add_argument("--ema_rate", type=fraction, default=EMA_RATE, help="moving-average rate of --estimator mine")
    data = parser.add_argument_group("data")
    data.add_argument("--input", default=INPUT, help="row file: x, z, x_bar, z_bar per line, or x, z alone")
    data.add_argument("--data_size", type=positive(int), default=DATA_SIZE, help="rows expected in --input (None: take the file's count)")
    data.add_argument("--folds", type=positive(int), default=argparse.SUPPRESS, help=f"cross-fit over this many folds: the estimate is their mean, with a standard error and a 95%% interval; 1: one split by --val_fraction (default: {FOLDS}, or 1 with --val_fraction, --cache_dir or a --strategy other than default)")
    data.add_argument("--val_fraction", type=fraction, default=argparse.SUPPRESS, help=f"with one split: share of rows held out for the estimate; 0 reports the training rows' bound, as the reference (default: {VAL_FRACTION})")
    data.add_argument("--transform", choices=TRANSFORMS, default=TRANSFORM, help="per-column map fitted on the training rows")
    data.add_argument("--marginal", choices=["resample", "file"], default=MARGINAL, help="resample: pair each x_bar with another row's z_bar, afresh every epoch; file: the file's marginal half as it is")
    data.add_argument("--cache_dir", default=CACHE_DIR, help="stream the input in bounded memory from a binary cache built here once (None: load it into memory)")
    data.add_argument("--shuffle_buffer", type=positive(int), default=SHUFFLE_BUFFER, help="rows shuffled together when streaming (--cache_dir): whole shards of 65,536 rows")
    data.add_argument("--eval_permutations", type=positive(int), default=EVAL_PERMUTATIONS, help="fresh marginal pairings averaged per held-out evaluation")
    training = parser.add_argument_group("training")
    training.add_argument("--batch_size", type=positive(int), default=BATCH_SIZE, help="rows per gradient step")
    training.add_argument("--n_epoch", type=positive(int), default=N_EPOCH, help="passes over the training rows")
    training.add_argument("--lr", type=positive(float), default=LR, help="learning rate")
    training.add_argument("--lr_schedule", choices=["cosine", "constant"], default=LR_SCHEDULE, help="cosine: --lr decays to 0 over the run, so the last epochs' weights settle; constant: the reference's")
    training.add_argument("--optimizer", choices=["adam", "sgd"], default=OPTIMIZER, help="sgd is the reference's")
    training.add_argument("--seed", type=int, default=SEED, help="seeds the split, the weights and the shuffles")
    training.add_argument("--jit", action=argparse.BooleanOptionalAction, default=JIT, help="compile each epoch with XLA")
    training.add_argument("--strategy", choices=["default", "mirrored", "multi_worker"], default=STRATEGY, help="tf.distribute strategy: one device; all local GPUs (or --cpu_replicas CPU devices); the workers of the TF_CONFIG environment variable")
    training.add_argument("--cpu_replicas", type=positive(int), default=CPU_REPLICAS, help="replicas of --strategy mirrored on a machine without GPUs")
    training.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --output_dir to --n_epoch epochs")
    output = parser.add_argument_group("output")
    output.add_argument("--output_dir", default=OUTPUT_DIR, help="where results, checkpoints and flags.txt are written (created if missing)")
    output.add_argument("--logdir", default=LOGDIR, help="TensorBoard event files (None: OUTPUT_DIR/logs)")
    output.add_argument("--checkpoint_every", type=int, default=CHECKPOINT_EVERY, help="epochs between checkpoints; 0: none")
    output.add_argument("--checkpoint_seconds", type=float, default=CHECKPOINT_SECONDS, help="at most one checkpoint per this many seconds, the last epoch's always saved; 0: no limit (a save costs about as much as a 3,000-row epoch)")
    output.add_argument("--keep_checkpoints", type=positive(int), default=KEEP_CHECKPOINTS, help="how many of the latest checkpoints to keep")
    output.add_argument("--plot", action="store_true", help=f"write {PLOT_FILE}, the estimate per epoch (needs matplotlib)")
    output.add_argument("--quiet", action="store_true", help="print only the final line")
    output.add_argument("--evaluate_only", metavar="CRITIC", help=f"no training: load a saved {CRITIC_FILE} and report its bound on --input")
    args = parser.parse_args(argv)
    if args.checkpoint_every < 0:
        parser.error(f"argument --checkpoint_every: must be 0 or more, got {args.checkpoint_every}")
    if args.checkpoint_seconds < 0:
        parser.error(f"argument --checkpoint_seconds: must be 0 or more, got {args.checkpoint_seconds}")
    # Both default through each other (SUPPRESS: absent unless given): one
    # split where one was asked for, or where the critics cannot share a device.
    if "folds" not in args:
        args.folds = 1 if "val_fraction" in args or args.cache_dir or args.strategy != "default" else FOLDS
    if "val_fraction" not in args:
        args.val_fraction = VAL_FRACTION
    return args


def flags_file_text(args):
    """The flags of a run, one per line, as @FILE reads them back."""
    lines = []
    for name, value in vars(args).items():
        if value is None or name == "resume":
            continue
        if isinstance(value, bool):
            if name == "jit":
                lines.append("--jit" if value else "--no-jit")
            elif value:
                lines.append(f"--{name}")
        else:
            lines.append(f"--{name} {shlex.quote(str(value))}")
    return "\n".join(lines) + "\n"


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
    check_file_against_flags(args, *rows.shape)
    if rows.shape[1] == width:
        rows = np.concatenate([rows, rows], axis=1)
    return rows


def check_file_against_flags(args, total_rows, file_width):
    """Ends the run if the file's row count or layout contradicts the flags."""
    if args.data_size is not None and args.data_size != total_rows:
        fail(f"--data_size {args.data_size} disagrees with {args.input}, which has {total_rows} rows")
    if file_width == args.data_dim + args.latent_dim and args.marginal == "file":
        fail(f"--marginal file needs the marginal half in {args.input}, which has the joint half alone ({file_width} columns)")


def resampled_latent_dim(args):
    """How many trailing columns (z_bar) get fresh pairings; 0 keeps the file's."""
    return args.latent_dim if args.marginal == "resample" else 0


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


class TrainingData:
    """Where an epoch's rows come from: in memory or streamed from a cache.

    epochs(first_epoch) yields, for each epoch from first_epoch on, an
    iterable of (full_batches, last_batch) chunks for make_train_epoch.
    """

    def __init__(self, total_rows, training_count, held_out_rows, transform_parameters, epochs):
        self.total_rows = total_rows
        self.training_count = training_count
        self.held_out_rows = held_out_rows
        self.transform_parameters = transform_parameters
        self.epochs = epochs


def in_memory_data(args, resample_latent_dim):
    """The rows in memory, as one TrainingData per critic: one (training
    and held-out rows by --val_fraction), or one per fold with --folds."""
    rows = read_input(args)
    if args.folds == 1:
        splits = [split_input(args, rows)]
    else:
        splits = [fold_rows(rows, args.folds, fold, args.seed) for fold in range(args.folds)]
        if min(len(training_rows) for training_rows, _ in splits) < args.batch_size or len(rows) < 4 * args.folds:
            fail(f"{args.input} has {len(rows)} rows: too few for --folds {args.folds} with --batch_size {args.batch_size}")
    sample_width = args.data_dim + args.latent_dim
    folds_data = []
    for training_rows, held_out_rows in splits:
        parameters = fit_transform_parameters(args.transform, training_rows, sample_width)
        transform = make_transform(args.transform, parameters, sample_width)
        training_rows = transform(training_rows)

        def epochs(first_epoch, training_rows=training_rows):
            for element in epoch_batches(training_rows, args.batch_size, args.seed, first_epoch, args.n_epoch, resample_latent_dim):
                yield [element]

        folds_data.append(TrainingData(len(rows), len(training_rows), transform(held_out_rows), parameters, epochs))
    return folds_data


def streamed_data(args, resample_latent_dim):
    """The input through a binary cache, in bounded memory, as a list of
    one TrainingData (streaming does not cross-fit). The held-out
    rows are a fixed block at the end of the file (at most one shard), so
    the file should be in random order; the input map is fitted on a
    random sample of TRANSFORM_SAMPLE training rows."""
    width = args.data_dim + args.latent_dim
    try:
        cache_path, total_rows, file_width = build_cache(args.input, (2 * width, width), args.cache_dir)
    except InputError as error:
        fail(str(error))
    except OSError as error:
        fail(f"--cache_dir {args.cache_dir}: {error.strerror}")
    check_file_against_flags(args, total_rows, file_width)
    held_out = min(int(round(args.val_fraction * total_rows)), SHARD_ROWS)
    training_rows = total_rows - held_out
    if training_rows < args.batch_size:
        fail(f"{args.input} has {total_rows} rows, {training_rows} of them for training: fewer than one batch (--batch_size {args.batch_size})")

    def full_width(raw):
        return np.concatenate([raw, raw], axis=1) if file_width == width else raw

    if args.val_fraction > 0 and held_out < 4:
        fail(f"--val_fraction {args.val_fraction} holds out {held_out} of {total_rows} rows; at least 4 are needed")

    rng = np.random.default_rng(args.seed)
    keep = min(1.0, TRANSFORM_SAMPLE / training_rows)
    sample = []
    for start in range(0, training_rows, SHARD_ROWS):
        shard = read_cached_rows(cache_path, file_width, start, min(SHARD_ROWS, training_rows - start))
        sample.append(shard[rng.random(len(shard)) < keep])
    parameters = fit_transform_parameters(args.transform, full_width(np.concatenate(sample)), width)
    transform = make_transform(args.transform, parameters, width)
    held_out_rows = transform(full_width(read_cached_rows(cache_path, file_width, training_rows, held_out)))

    def epochs(first_epoch):
        for epoch in range(first_epoch, args.n_epoch):
            yield streamed_epoch(cache_path, file_width, training_rows, args.batch_size, args.seed, epoch,
                                 args.shuffle_buffer, lambda raw: transform(full_width(raw)), resample_latent_dim)

    return [TrainingData(total_rows, training_rows, held_out_rows, parameters, epochs)]


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


def make_train_epoch(train_steps, jit):
    """Every step of one epoch in a single TensorFlow call, compiled with
    XLA when `jit`: no Python runs between steps. `train_steps` holds one
    step per critic (several when cross-fitting), and the returned function
    takes one element of epoch_batches per critic and steps them in turn
    in the same loop, which is cheaper than one call per critic (measured:
    README.md, "Error bars"). Returns a [critics, 3] tensor: the row-weighted
    means of (bound, joint_part, marginal_part) over each critic's batches.
    Shapes are the same every epoch, so it is traced once."""

    @tf.function(jit_compile=jit)
    def train_epoch(elements):
        shared_steps = min(full_batches.shape[0] for full_batches, _ in elements)
        batch_size = elements[0][0].shape[1]
        totals = tf.zeros([len(elements), 3])
        for step in tf.range(shared_steps):
            totals += batch_size * tf.stack([train_step(full_batches[step]) for train_step, (full_batches, _) in zip(train_steps, elements)])
        means = []
        for total, train_step, (full_batches, last_batch) in zip(tf.unstack(totals), train_steps, elements):
            # folds may differ by a row, and so by a step or the last batch
            for step in range(shared_steps, full_batches.shape[0]):
                total += batch_size * train_step(full_batches[step])
            if last_batch.shape[0]:  # the rows left over, as one smaller batch
                total += last_batch.shape[0] * train_step(last_batch)
            means.append(total / (full_batches.shape[0] * batch_size + last_batch.shape[0]))
        return tf.stack(means)

    return train_epoch


def make_strategy(args):
    """The tf.distribute strategy of --strategy. Called before TensorFlow
    runs anything, since the CPU can only be split into logical devices
    before its runtime starts."""
    if args.strategy == "default":
        return tf.distribute.get_strategy()
    if args.strategy == "multi_worker":
        if "TF_CONFIG" not in os.environ:
            fail("--strategy multi_worker needs the TF_CONFIG environment variable describing the cluster (README: Scaling out)")
        return tf.distribute.MultiWorkerMirroredStrategy()
    if tf.config.list_physical_devices("GPU"):
        return tf.distribute.MirroredStrategy()
    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * args.cpu_replicas)
    except RuntimeError:
        pass  # the runtime has started already; fine if it was split so before
    devices = tf.config.list_logical_devices("CPU")
    if len(devices) < args.cpu_replicas:
        fail(f"--cpu_replicas {args.cpu_replicas}: TensorFlow started with {len(devices)} CPU device(s) and cannot split it now")
    return tf.distribute.MirroredStrategy([device.name for device in devices[: args.cpu_replicas]])


def is_chief(strategy):
    """Whether this process writes the run's results: always, but for the
    workers other than the first of a multi-worker cluster."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    return resolver.task_type == "chief" or (resolver.task_type == "worker" and resolver.task_id == 0)


def split_for_replicas(strategy, full_batches, last_batch):
    """Each replica's share of every global batch of an epoch: rows
    [r * B / R, (r + 1) * B / R) of each batch for replica r of R. Every
    worker builds the same epoch from (seed, epoch) and keeps its own
    replicas' shares, so no rows travel between workers."""

    def share(rows, context):
        size = rows.shape[0]
        replica, replicas = context.replica_id_in_sync_group, context.num_replicas_in_sync
        return rows[replica * size // replicas : (replica + 1) * size // replicas]

    full_shares = strategy.experimental_distribute_values_from_function(
        lambda context: tf.transpose(share(tf.transpose(full_batches, [1, 0, 2]), context), [1, 0, 2])
    )
    last_shares = strategy.experimental_distribute_values_from_function(lambda context: share(last_batch, context))
    return full_shares, last_shares


def make_distributed_train_epoch(strategy, train_step):
    """make_train_epoch for several replicas: the loop over steps stays in
    one tf.function, and each step runs on every replica (strategy.run) on
    its share of the global batch (split_for_replicas). The bound is that of
    the whole global batch (MineModel.cross_replica_cost), so the result is
    the same as on one device. Not compiled with XLA: XLA cannot compile the
    replicas' collective operations in this loop."""

    @tf.function
    def train_epoch(full_shares, last_shares, batch_size, last_size):
        steps = strategy.experimental_local_results(full_shares)[0].shape[0]
        totals = tf.zeros([3])
        for step in tf.range(steps):
            results = strategy.run(lambda shares: train_step(shares[step]), args=(full_shares,))
            totals += batch_size * strategy.experimental_local_results(results)[0]
        if last_size:
            results = strategy.run(train_step, args=(last_shares,))
            totals += last_size * strategy.experimental_local_results(results)[0]
        return totals / (steps * batch_size + last_size)

    return train_epoch


LOCK_FILE = ".lock"


def acquire_lock(output_dir):
    """Claims output_dir for this process, or ends the run naming the
    process that holds it. A lock left by a process that no longer runs is
    taken over. Returns the lock file's path."""
    path = os.path.join(output_dir, LOCK_FILE)
    for _ in range(2):
        try:
            descriptor = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                with open(path) as stream:
                    holder = int(stream.read().strip())
            except (OSError, ValueError):
                holder = None
            if holder is not None and process_exists(holder):
                fail(f"--output_dir {output_dir}: another run (process {holder}) is writing there; wait for it or choose another --output_dir")
            try:
                os.unlink(path)  # stale: its process is gone
            except FileNotFoundError:
                pass
            continue
        with os.fdopen(descriptor, "w") as stream:
            stream.write(f"{os.getpid()}\n")
        return path
    fail(f"--output_dir {output_dir}: cannot take its lock file {path}")


def process_exists(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class StopRequest:
    """Turns the first SIGINT or SIGTERM into a request to stop after the
    epoch in progress (its TensorFlow call cannot be cut short); a second
    one exits at once. Every output file is replaced atomically, so
    exiting at any moment leaves each one whole."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signal = None
        self.previous = {number: signal.signal(number, self.handle) for number in self.SIGNALS}

    def handle(self, number, frame):
        if self.signal is not None:
            os._exit(128 + number)
        self.signal = number
        print(f"\n{signal.Signals(number).name}: stopping after this epoch (again to stop at once)", file=sys.stderr, flush=True)

    def restore(self):
        for number, handler in self.previous.items():
            signal.signal(number, handler)


def make_evaluator(models, seed, passes, resample_latent_dim):
    """A tf.function (rows per model, epoch) -> each model's bound on its
    rows in one batch, averaged over `passes` fresh marginal pairings
    (streams 1.. keep them apart from the training order). The joint scores
    do not depend on the pairing, so they are computed once. One function
    for all the critics: one call per epoch, traced once. Not compiled with
    XLA: measured faster without, and it saves the compile."""
    width = models[0].sample_width

    @tf.function(reduce_retracing=True)
    def evaluate(rows_per_model, epoch):
        model_bounds = []
        for model, rows in zip(models, rows_per_model):
            joint_scores = model.statistics_network(rows[:, :width])
            bounds = []
            for stream in range(1, passes + 1):
                paired = reshuffled(rows, seed, epoch, stream, resample_latent_dim)
                bounds.append(model.bound(joint_scores, model.statistics_network(paired[:, width:]))[0])
            model_bounds.append(tf.reduce_mean(bounds))
        return tf.stack(model_bounds)

    return evaluate


# What --resume must find unchanged: any of these changes the split, the
# network or the steps, and the continued run would not be the same run.
RESUME_MUST_MATCH = ("data_dim", "latent_dim", "hid_width", "out_width", "activation", "estimator", "seed",
                     "val_fraction", "folds", "transform", "marginal", "batch_size", "optimizer")


def run_identity(args):
    with open(args.input, "rb") as stream:
        digest = hashlib.file_digest(stream, "sha256").hexdigest()  # in blocks: the file may exceed memory
    return {"input_sha256": digest, **{name: getattr(args, name) for name in RESUME_MUST_MATCH}}


def check_resumable(args, checkpoint_dir, identity):
    try:
        with open(os.path.join(checkpoint_dir, RUN_IDENTITY_FILE)) as stream:
            saved = json.load(stream)
    except (OSError, ValueError):
        fail(f"--resume: no checkpoint to resume in {checkpoint_dir}")
    if tf.train.latest_checkpoint(checkpoint_dir) is None:
        fail(f"--resume: no checkpoint to resume in {checkpoint_dir}")
    if saved["input_sha256"] != identity["input_sha256"]:
        fail(f"--resume: {args.input} is not the input file the checkpoint in {checkpoint_dir} was trained on")
    for name in RESUME_MUST_MATCH:
        if saved[name] != identity[name]:
            fail(f"--resume: the checkpoint in {checkpoint_dir} was made with --{name} {saved[name]}, not {identity[name]}")


def require_matplotlib():
    if importlib.util.find_spec("matplotlib") is None:
        fail("--plot needs matplotlib, which is not installed: pip install matplotlib")


def save_plot(path, history, truth):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = np.arange(1, len(history) + 1)
    figure, axes = plt.subplots(figsize=(7, 4))
    axes.plot(epochs, history[:, 0], label="training rows")
    if not np.isnan(history[:, 3]).all():
        axes.plot(epochs, history[:, 3], label="held-out rows")
    if truth is not None:
        axes.axhline(truth, color="black", linestyle="--", label=f"true MI {truth:g}")
    axes.set(xlabel="epoch", ylabel="bound on I(X; Z), nats", title="MINE estimate per epoch")
    axes.legend()
    figure.tight_layout()
    write_atomically(path, lambda stream: figure.savefig(stream, format="png", dpi=100), binary=True)
    plt.close(figure)


def save_critic(output_dir, model, transform_kind, transform_parameters):
    """The trained model as a .keras file, and beside it the input map it
    was trained on (--evaluate_only needs both)."""
    temporary = os.path.join(output_dir, ".tmp-" + CRITIC_FILE)
    model.save(temporary)
    os.replace(temporary, os.path.join(output_dir, CRITIC_FILE))
    write_atomically(
        os.path.join(output_dir, TRANSFORM_FILE),
        lambda stream: np.savez(stream, kind=transform_kind, **transform_parameters),
        binary=True,
    )


def evaluate_only(args):
    """Reports a saved critic's bound on --input, without training."""
    try:
        model = tf.keras.models.load_model(args.evaluate_only)
        with np.load(os.path.join(os.path.dirname(args.evaluate_only), TRANSFORM_FILE)) as saved:
            kind = str(saved["kind"])
            parameters = {name: saved[name] for name in saved.files if name != "kind"}
    except (OSError, ValueError) as error:
        fail(f"--evaluate_only {args.evaluate_only}: cannot load the critic and its {TRANSFORM_FILE}: {error}")
    args.data_dim, args.latent_dim = model.data_dim, model.latent_dim
    rows = make_transform(kind, parameters, model.sample_width)(read_input(args))
    resample_latent_dim = resampled_latent_dim(args)
    passes = args.eval_permutations if resample_latent_dim else 1
    evaluate = make_evaluator([model], args.seed, passes, resample_latent_dim)
    bound = float(evaluate([tf.constant(rows)], tf.constant(0, tf.int64))[0])
    print(f"bound of {args.evaluate_only} on {args.input}: {bound:.4f} nats ({len(rows)} rows, {passes} marginal pairings)")
    return {"mi_estimate": bound, "rows": len(rows)}


def main(argv=None):
    args = parse_args(argv)
    if args.evaluate_only:
        return evaluate_only(args)
    if args.plot:
        require_matplotlib()
    if args.folds > 1 and args.strategy != "default":
        fail(f"--folds trains its critics side by side on one device; it does not combine with --strategy {args.strategy}")
    strategy = make_strategy(args)
    if not is_chief(strategy):  # the other workers' files go aside
        args.output_dir = os.path.join(args.output_dir, f"worker-{strategy.cluster_resolver.task_id}")
        args.logdir = None
    resample_latent_dim = resampled_latent_dim(args)
    if args.folds > 1 and args.cache_dir:
        fail("--folds needs the rows in memory; it does not combine with --cache_dir")
    folds_data = streamed_data(args, resample_latent_dim) if args.cache_dir else in_memory_data(args, resample_latent_dim)
    try:
        os.makedirs(args.output_dir, exist_ok=True)
    except OSError as error:
        fail(f"--output_dir {args.output_dir}: cannot create: {error.strerror}")
    lock = acquire_lock(args.output_dir)
    stop = StopRequest()
    try:
        return train(args, strategy, folds_data, stop)
    finally:
        stop.restore()
        os.unlink(lock)


def held_out_halves(held_out_rows):
    """The two halves whose best epochs select each other's estimate
    (cross_selected_estimate); None without held-out rows."""
    half = len(held_out_rows) // 2
    return (tf.constant(held_out_rows[:half]), tf.constant(held_out_rows[half:])) if half else None


def train(args, strategy, folds_data, stop):
    """Trains one critic per entry of folds_data, writes the outputs, and
    returns the summary. One entry is the plain run; with --folds K there
    are K critics, trained side by side in the same compiled call per epoch,
    critic k on every fold but k and read on fold k (its files in
    OUTPUT_DIR/fold-k). On divergence or a stop request the outputs of the
    completed epochs are written, and the run ends with exit status 3, or
    128 + the signal's number."""
    critics = len(folds_data)
    output_dirs = [args.output_dir] if critics == 1 else [os.path.join(args.output_dir, f"fold-{k + 1}") for k in range(critics)]
    resample_latent_dim = resampled_latent_dim(args)
    checkpoint_dir = os.path.join(args.output_dir, CHECKPOINT_DIR)
    identity = run_identity(args)
    if args.resume:
        check_resumable(args, checkpoint_dir, identity)
    for output_dir in output_dirs:
        os.makedirs(output_dir, exist_ok=True)
    write_atomically(os.path.join(args.output_dir, FLAGS_FILE), lambda stream: stream.write(flags_file_text(args)))
    truth = (read_sidecar(args.input) or {}).get("true_mi_nats")

    sample_width = args.data_dim + args.latent_dim
    tf.keras.utils.set_random_seed(args.seed)
    with strategy.scope():
        models = [
            MineModel(args.data_dim, args.latent_dim, args.hid_width, args.out_width, args.estimator, args.ema_rate, args.activation)
            for _ in folds_data
        ]
        optimizers = [make_optimizer(args, args.n_epoch * -(-data.training_count // args.batch_size)) for data in folds_data]
        for model, optimizer in zip(models, optimizers):
            optimizer.build(model.trainable_variables)
    train_steps = [make_train_step(model, optimizer) for model, optimizer in zip(models, optimizers)]
    replicated = strategy.num_replicas_in_sync > 1  # then there is one critic: main refuses --folds
    if replicated:
        train_epoch = make_distributed_train_epoch(strategy, train_steps[0])
    else:
        train_epoch = make_train_epoch(train_steps, args.jit)
    passes = args.eval_permutations if resample_latent_dim else 1
    evaluate = make_evaluator(models, args.seed, passes, resample_latent_dim)
    halves = [held_out_halves(data.held_out_rows) for data in folds_data]
    has_held_out = halves[0] is not None

    # Everything a resumed run needs to continue as if never stopped: the
    # shuffles are fixed by (seed, epoch), so the epoch stands for the RNG.
    # The history holds, per epoch and critic: bound, joint_part and
    # marginal_part on the training rows, then the held-out bound and its
    # two halves' bounds.
    completed_epochs = tf.Variable(0, dtype=tf.int64)
    history_so_far = tf.Variable(np.zeros((0, critics * 6)), shape=tf.TensorShape([None, critics * 6]), dtype=tf.float64)
    checkpoint = tf.train.Checkpoint(models=models, optimizers=optimizers, epoch=completed_epochs, history=history_so_far)
    manager = tf.train.CheckpointManager(checkpoint, checkpoint_dir, max_to_keep=args.keep_checkpoints)
    if args.resume:
        checkpoint.restore(manager.latest_checkpoint).assert_existing_objects_matched()
    else:
        os.makedirs(checkpoint_dir, exist_ok=True)
        save_json(os.path.join(checkpoint_dir, RUN_IDENTITY_FILE), identity)
    history = list(history_so_far.numpy().reshape(-1, critics, 6))
    first_epoch = int(completed_epochs)

    writer = tf.summary.create_file_writer(args.logdir or os.path.join(args.output_dir, "logs"))
    with writer.as_default():
        tf.summary.text("hyperparameters", "```\n" + flags_file_text(args) + "```", step=first_epoch)
    progress = tf.keras.utils.Progbar(args.n_epoch, stateful_metrics=["train", "held-out", "rows/s"]) if sys.stdout.isatty() and not args.quiet else None
    training_counts = [data.training_count for data in folds_data]
    held_out_counts = [len(data.held_out_rows) for data in folds_data]
    if not args.quiet:
        def span(counts):
            return f"{min(counts)}" if min(counts) == max(counts) else f"{min(counts)} to {max(counts)}"

        rows_text = (f"{training_counts[0]} training rows, {held_out_counts[0]} held out" if critics == 1 else
                     f"{critics} critics side by side, each trained on {span(training_counts)} rows and read on "
                     f"the other {span(held_out_counts)}")
        print(
            f"MINE ({args.estimator}) on {args.input}: {rows_text}, "
            f"batch {args.batch_size}, {args.n_epoch} epochs, {args.optimizer} lr {args.lr}, seed {args.seed}"
            + (f", {strategy.num_replicas_in_sync} replicas ({args.strategy})" if replicated else "")
            + (f", true MI {truth} nats" if truth is not None else "")
            + (f"; resumed after epoch {first_epoch}" if args.resume else "")
        )

    flops_per_row = training_flops_per_row(sample_width, args.hid_width, args.out_width)
    training_seconds, rows_per_epoch = [], []
    diverged_in = None
    train_start = last_save = time.perf_counter()
    for epoch, chunks_per_critic in enumerate(zip(*(data.epochs(first_epoch) for data in folds_data)), first_epoch + 1):
        epoch_start = time.perf_counter()
        totals, rows_trained = np.zeros((critics, 3)), np.zeros((critics, 1))
        for elements in zip(*chunks_per_critic):  # one element per critic; streaming has several per epoch
            if replicated:
                (full_batches, last_batch), = elements
                shares = split_for_replicas(strategy, full_batches, last_batch)
                means = train_epoch(*shares, full_batches.shape[1], last_batch.shape[0])[None]
            else:
                means = train_epoch(elements)
            chunk_rows = np.array([[full_batches.shape[0] * full_batches.shape[1] + last_batch.shape[0]] for full_batches, last_batch in elements])
            totals += chunk_rows * means.numpy()
            rows_trained += chunk_rows
        if not np.isfinite(totals).all():
            # A non-finite loss or gradient poisons every later step of the
            # epoch; nothing of this epoch is kept, the last checkpoint stays.
            diverged_in = epoch
            break
        training_seconds.append(time.perf_counter() - epoch_start)
        rows_per_epoch.append(rows_trained.sum())
        epoch_tensor = tf.constant(epoch, tf.int64)
        if has_held_out:  # [critics, 2]: the bounds on each critic's two halves
            held_out = np.stack([evaluate(half, epoch_tensor).numpy() for half in zip(*halves)], axis=1).astype(np.float64)
        else:
            held_out = np.full((critics, 2), np.nan)
        history.append(np.column_stack([totals / rows_trained, held_out.mean(axis=1), held_out]))
        # the figures of the epoch, averaged over the critics
        bound, joint_part, marginal_part, held_out_bound = history[-1][:, :4].mean(axis=0)
        rows_per_second = rows_per_epoch[-1] / training_seconds[-1]

        with writer.as_default(step=epoch):
            tf.summary.scalar("estimate/training_rows", bound)
            if has_held_out:
                tf.summary.scalar("estimate/held_out", held_out_bound)
            if critics > 1:
                for k in range(critics):
                    tf.summary.scalar(f"folds/held_out_{k + 1}", history[-1][k, 3])
            tf.summary.scalar("parts/joint", joint_part)
            tf.summary.scalar("parts/marginal", marginal_part)
            tf.summary.scalar("speed/rows_per_second", rows_per_second)
            tf.summary.scalar("learning_rate", float(optimizers[0].learning_rate))
        if progress:
            progress.update(epoch, [("train", bound), ("held-out", held_out_bound), ("rows/s", rows_per_second)])
        elif not args.quiet:
            print(
                f"epoch {epoch:4d}/{args.n_epoch}  train {bound:8.4f}  held-out {held_out_bound:8.4f}  "
                f"joint {joint_part:8.4f}  marginal {marginal_part:8.4f}  {time.perf_counter() - epoch_start:6.2f} s  "
                f"{rows_per_second:9.0f} rows/s  {rows_per_second * flops_per_row / 1e9:5.1f} GFLOP/s",
                flush=True,
            )
        due = args.checkpoint_every and (
            epoch == args.n_epoch
            or stop.signal is not None
            or (epoch % args.checkpoint_every == 0 and time.perf_counter() - last_save >= args.checkpoint_seconds)
        )
        if due:
            completed_epochs.assign(epoch)
            history_so_far.assign(np.array(history, dtype=np.float64).reshape(-1, critics * 6))
            manager.save(checkpoint_number=epoch)
            last_save = time.perf_counter()
        if stop.signal is not None:
            break
    train_seconds = time.perf_counter() - train_start
    status = "diverged" if diverged_in else "interrupted" if stop.signal is not None else "completed"
    writer.flush()

    history = np.array(history, dtype=np.float64).reshape(-1, critics, 6)
    estimates, best_epochs = [], []
    for k in range(critics):
        if not len(history):
            estimates.append(None)
        elif has_held_out:
            estimate, best_a, best_b = cross_selected_estimate(history[:, k, 4], history[:, k, 5])
            estimates.append(estimate)
            best_epochs.append((best_a, best_b))
        else:
            estimates.append(float(history[-1, k, 0]))
    if not len(history):
        estimate_from = "no completed epoch"
    elif critics > 1:
        estimate_from = f"mean of {critics} cross-fitted folds' held-out bounds, each at the best epochs of the other half"
    elif has_held_out:
        estimate_from = "held-out bound at the best epochs of the other half ({}, {})".format(*best_epochs[0])
    else:
        estimate_from = "training rows' bound, last epoch"
    try:
        for k, (output_dir, data) in enumerate(zip(output_dirs, folds_data)):
            save_rows(os.path.join(output_dir, ESTIMATE_FILE), history[:, k, 0])
            save_rows(os.path.join(output_dir, PARTS_FILE), history[:, k, 1:3])
            if has_held_out:
                save_rows(os.path.join(output_dir, HELD_OUT_FILE), history[:, k, 3])
            if status != "diverged":
                save_critic(output_dir, models[k], args.transform, data.transform_parameters)
            if args.plot and len(history):
                save_plot(os.path.join(output_dir, PLOT_FILE), history[:, k], truth)
    except OSError as error:
        print(f"mi_main.py: error: cannot write the results to {args.output_dir}: {error.strerror}; "
              "the files already there are the previous complete ones", file=sys.stderr)
        raise SystemExit(1) from None

    trained_epochs = len(training_seconds)
    # speeds after the first epoch of this process, which also traces and compiles
    steady_rows_per_second = sum(rows_per_epoch[1:]) / sum(training_seconds[1:]) if trained_epochs > 1 else None
    summary = {
        "status": status,
        "folds": critics,
        "epochs_completed": first_epoch + trained_epochs,
        "diverged_in_epoch": diverged_in,
        "mi_estimate": estimates[0],
        "mi_estimate_from": estimate_from,
    }
    if critics > 1:
        interval = cross_fitted_interval(estimates) if len(history) else (None, None, (None, None))
        summary.update(mi_estimate=interval[0], mi_stderr=interval[1], mi_ci95=list(interval[2]), fold_estimates=estimates)
    summary.update({
        "held_out_last_epoch": float(history[-1, :, 3].mean()) if len(history) else None,
        "training_rows_estimate": float(history[-1, :, 0].mean()) if len(history) else None,
        "true_mi_nats": truth,
        "estimator": args.estimator,
        "activation": args.activation,
        "n_epoch": args.n_epoch,
        "resumed_after_epoch": first_epoch if args.resume else None,
        "rows": folds_data[0].total_rows,
        "training_rows": training_counts[0] if critics == 1 else training_counts,
        "held_out_rows": held_out_counts[0] if critics == 1 else held_out_counts,
        "batch_size": args.batch_size,
        "seed": args.seed,
        "train_seconds": round(train_seconds, 3),
        "samples_per_second": round(sum(rows_per_epoch) / train_seconds, 1) if trained_epochs else None,
        "first_epoch_seconds": round(training_seconds[0], 3) if trained_epochs else None,
        "training_rows_per_second": round(steady_rows_per_second, 1) if steady_rows_per_second else None,
        "training_gflops_per_second": round(steady_rows_per_second * flops_per_row / 1e9, 2) if steady_rows_per_second else None,
        "training_flops_per_row": flops_per_row,
        "hyperparameters": vars(args),
    })
    try:
        save_json(os.path.join(args.output_dir, SUMMARY_FILE), summary)
    except OSError as error:
        print(f"mi_main.py: error: cannot write {SUMMARY_FILE} to {args.output_dir}: {error.strerror}", file=sys.stderr)
        raise SystemExit(1) from None
    if diverged_in:
        print(f"mi_main.py: error: the loss became NaN or infinite in epoch {diverged_in}; the {len(history)} completed "
              f"epochs are in {args.output_dir}/; try a smaller --lr or --estimator mine_f", file=sys.stderr)
        raise SystemExit(3)
    if stop.signal is not None:
        print(f"stopped by {signal.Signals(stop.signal).name} after {len(history)} epochs; their results are in "
              f"{args.output_dir}/ (continue with --resume)", file=sys.stderr)
        raise SystemExit(128 + stop.signal)
    mi_estimate = summary["mi_estimate"]
    if critics > 1:
        low, high = summary["mi_ci95"]
        estimate_text = f"{mi_estimate:.4f} ± {summary['mi_stderr']:.4f} nats (95 % interval {low:.4f} to {high:.4f}, {critics} folds)"
    else:
        estimate_text = f"{mi_estimate:.4f} nats"
    print(
        f"estimated I(X; Z) = {estimate_text}" + (f" (true {truth})" if truth is not None else "")
        + (f" from the {estimate_from}" if critics == 1 else "") + f", in {train_seconds:.1f} s; results in {args.output_dir}/"
    )
    return summary


if __name__ == "__main__":
    main()
