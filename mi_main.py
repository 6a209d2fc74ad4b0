"""Estimate the mutual information I(X; Z) in nats with MINE.

Trains the statistics network T to maximize the Donsker-Varadhan bound
(Belghazi et al., 2018) on rows of (x, z, x_bar, z_bar) and writes the
estimate per epoch. A share of the rows is held out: the bound on rows the
network never trained on is the estimate reported, since the bound on the
training rows overestimates once T fits them. Edit the defaults below or
override any of them:

    python mi_main.py --input data/input_set.dat --n_epoch 100 --lr 0.001

Top to bottom: the defaults; TensorFlow's start-up; the flags; the
tf.function training step and the compiled critics; tf.distribute; the
epoch loop; main, estimate and run; the estimate's choice and the final
line. Reading and checking inputs, and writing results, live in
mi_data_processing; the bounds in mi_model; the network T in mi_layers.
"""

import argparse
import contextlib
import ctypes
import hashlib
import math
import os
import platform
import re
import shlex
import signal
import sys
import tempfile
import time

import numpy as np

# Model
HID_WIDTH = 128  # units in each of T's two hidden layers
OUT_WIDTH = 1  # outputs of T (1: one score per sample)
ACTIVATION = "tanh"  # of T's hidden layers: "tanh", "relu" (the reference's), "gelu" or "softplus"
# Candidate critics trained side by side on every fold, as input map:activation[:wdDECAY]; each fold
# is read at the (candidate, epoch) with the highest mean held-out bound over the other folds (one
# split: chosen on one held-out half, read on the other). Weight decay (wd) lifts sparse and heavy-
# tailed dependence; two decays, since the stronger loses additive noise (tests/BENCHMARKS.md).
CANDIDATES = "rank:tanh,asinh:relu:wd0.5,asinh:relu:wd2"
DATA_DIM = 10  # columns of x
LATENT_DIM = 1  # columns of z
ESTIMATOR = "mine"  # "mine" (bias-corrected gradient), "mine_biased" (the reference's), "mine_f"
EMA_RATE = 0.01  # weight of each batch in mine's moving average of mean exp T
# Data
INPUT = "data/input_set.dat"  # .dat/.txt rows, .npy, .npz (arrays x and z), or .csv/.tsv with a header
X_COLUMNS = None  # of a .csv/.tsv input: names, 0-based indices or ranges ("0-9"); None: the first data_dim
Z_COLUMNS = None  # of a .csv/.tsv input; None: the latent_dim after x's
DATA_SIZE = None  # rows expected in the input; None takes the file's count
FOLDS = 5  # > 1: cross-fit, every row evaluated once by a critic trained on the other folds
# with one split (--folds 1): share of rows held out to evaluate the bound on; 0: none (the reference)
VAL_FRACTION = 0.2
TRANSFORM = "rank"  # per-column map fitted on training rows: "rank", "standardize" or "none"
MARGINAL = "resample"  # "resample": fresh marginal pairs every epoch; "file": the file's fixed rows
EVAL_PERMUTATIONS = 4  # fresh marginal pairings averaged per held-out evaluation
# Training
BATCH_SIZE = 256
N_EPOCH = 100
# Default runs stop at this many steps per critic, whatever the rows: 100 epochs
# of a 10,000-row input's 8,000 training rows. More rows buy fewer epochs, not more time.
STEP_BUDGET = 3200
LR = 0.003
OPTIMIZER = "adam"  # "adam" or "sgd" (the reference's)
# Adam's decay of its squared-gradient average. Keras's 0.999 remembers one huge gradient (a
# heavy-tailed batch, weighted by exp T) for about 1,000 steps and stalls the critic meanwhile.
ADAM_BETA_2 = 0.99
LR_SCHEDULE = "cosine"  # "cosine": decays to 0 over the run; "constant": the reference's
SEED = 0
JIT = True  # compile each epoch with XLA
# "default": one device; "mirrored": all local GPUs (or CPU_REPLICAS); "multi_worker": TF_CONFIG's cluster
STRATEGY = "default"
CPU_REPLICAS = 2  # logical CPU devices that --strategy mirrored uses on a machine without GPUs
# Output
OUTPUT_DIR = "results"
ESTIMATE_OUTPUT_DIR = None  # estimate(): where the Python API writes; None: nothing anywhere
UNITS = "nats"  # of the final line and summary.json: "nats" or "bits"
CACHE_DIR = None  # stream the input from a binary cache here instead of loading it into memory
SHUFFLE_BUFFER = 262_144  # rows shuffled together when streaming
TRANSFORM_SAMPLE = 100_000  # training rows the input map is fitted on when streaming
LOGDIR = None  # TensorBoard event files; None: OUTPUT_DIR/logs
CHECKPOINT_EVERY = 1  # epochs between checkpoints; 0: none
CHECKPOINT_SECONDS = 10  # and at most one per this many seconds (the last epoch's always); 0: no limit
KEEP_CHECKPOINTS = 3  # checkpoints kept, the latest ones


# TensorFlow's start-up: its log filter, the malloc arena cap and XLA's compile cache, before it loads

# An absl log record: severity letter, date, time (or seconds since 1970), thread, file:line].
LOG_RECORD = re.compile(r"^([IWEF])\d{4} [\d:.]+\s+\d+ [^\]]*\] ")
LOG_PREAMBLE = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"


# Records TensorFlow 2.21 logs as errors on every load from XLA's persistent
# cache on a CPU, though the load succeeds: a text-format attempt before the
# binary one, and tuning options (+prefer-no-scatter) taken for CPU features.
CACHE_LOAD_NOISE = re.compile(
    r"(Error parsing text-format tensorflow\.XlaSerializedCacheEntry|"
    r"Loading XLA:CPU AOT result\. Target machine feature \+prefer-no-(scatter|gather) )"
)


def startup_lines_kept(text, min_level, dropped=None):
    """The lines of TensorFlow's stderr that TF_CPP_MIN_LOG_LEVEL
    `min_level` lets through: records of severity I, W, E, F (0-3) at
    min_level or above, with their continuation lines, but for records
    whose message matches `dropped`; anything that is not a record and
    follows none is kept. absl's preamble is dropped."""
    kept, keeping = [], True
    for line in text.splitlines(keepends=True):
        record = LOG_RECORD.match(line)
        if record:
            keeping = "IWEF".index(record.group(1)) >= min_level and not (dropped and dropped.match(line, record.end()))
        if keeping and line.rstrip("\n") != LOG_PREAMBLE:
            kept.append(line)
    return "".join(kept)


@contextlib.contextmanager
def tensorflow_log_filtered(dropped=None):
    """Filters what TensorFlow writes to file descriptor 2 inside the block.

    TensorFlow 2.21 logs a few INFO lines while its libraries load (oneDNN
    on CPUs with AVX-512 or AMX, CPU features), before absl's logging reads
    TF_CPP_MIN_LOG_LEVEL, and so whatever it is set to. Set to 2 here
    unless the user set it, those lines are held back; warnings and errors
    still reach stderr, but for records matching `dropped`, and everything
    does if the block fails.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    min_level = int(os.environ["TF_CPP_MIN_LOG_LEVEL"]) if os.environ["TF_CPP_MIN_LOG_LEVEL"].isdigit() else 0
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        failed = True
        try:
            yield
            failed = False
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            text = captured.read().decode(errors="replace")
            sys.stderr.write(text if failed else startup_lines_kept(text, min_level, dropped))
            sys.stderr.flush()


def limit_malloc_arenas(arenas=2):
    """Caps glibc's malloc arenas, before TensorFlow starts its threads.

    By default glibc gives each thread that allocates its own arena, up to 8
    per core; TensorFlow's thread pools then spread a run's memory over
    many, and memory freed in one arena does not serve the next run's
    allocations in another: the peak grew by about 25 MB with each run in
    one process (README.md, "Many runs in one process"). Not glibc (macOS,
    musl): nothing to do.
    """
    try:
        ctypes.CDLL(None).mallopt(-8, arenas)  # M_ARENA_MAX
    except (OSError, AttributeError):
        pass


def cpu_identity():
    """A short digest of this machine's CPU model and features (Linux's
    /proc/cpuinfo; elsewhere the platform's processor name)."""
    try:
        with open("/proc/cpuinfo") as stream:
            text = "".join(sorted({line for line in stream if line.startswith(("model name", "flags"))}))
    except OSError:
        text = platform.processor() + platform.machine()
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def use_persistent_xla_cache():
    """Keeps XLA's compiled programs on disk, before TensorFlow reads its
    flags: a later run of the same shapes on this machine loads them instead
    of compiling again (the first epoch of a default run: 6.0 s cold, 3.1 s
    warm). The directory is $MINE_XLA_CACHE, by default
    ~/.cache/mi_mine/xla, in a folder per CPU model and feature set, since
    a program compiled for one CPU may not run on another that shares the
    home directory; MINE_XLA_CACHE= (empty) turns it off, and a cache
    directory already in TF_XLA_FLAGS is left as it is."""
    flags = os.environ.get("TF_XLA_FLAGS", "")
    default = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "mi_mine", "xla")
    directory = os.environ.get("MINE_XLA_CACHE", default)
    if not directory or "tf_xla_persistent_cache_directory" in flags:
        return
    directory = os.path.join(directory, cpu_identity())
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError:  # a read-only home: compile every time, as without the cache
        return
    os.environ["TF_XLA_FLAGS"] = f"{flags} --tf_xla_persistent_cache_directory={directory}".strip()


limit_malloc_arenas()
use_persistent_xla_cache()
with tensorflow_log_filtered():
    import tensorflow as tf

from mi_data_processing import (  # noqa: E402
    CHECKPOINT_DIR,
    CRITIC_FILE,
    FLAGS_FILE,
    NATS_PER_BIT,
    PLOT_FILE,
    RUN_IDENTITY_FILE,
    SUMMARY_FILE,
    TEXT_SUFFIXES,
    TRANSFORM_FILE,
    TRANSFORMS,
    InputError,
    OutputError,
    acquire_lock,
    candidates,
    check_resumable,
    checked_array,
    fail,
    in_memory_data,
    in_units,
    input_name,
    make_transform,
    read_input,
    read_sidecar,
    require_matplotlib,
    resampled_latent_dim,
    run_identity,
    save_critic,
    save_curves,
    save_json,
    stacked_rows,
    streamed_data,
    write_atomically,
)
from mi_layers import ACTIVATIONS, training_flops_per_row  # noqa: E402
from mi_model import (  # noqa: E402
    ESTIMATORS,
    MineModel,
    cross_fitted_interval,
    cross_selected_estimate,
    held_out_bounds,
    held_out_scores,
    held_out_stderr,
    normal_interval,
    pooled_selected_estimates,
)


class OneLineParser(argparse.ArgumentParser):
    """Reports a bad flag in one line on stderr with exit status 2, and
    reads @FILE arguments as one flag (and its value) per line."""

    def error(self, message):
        raise InputError(message)  # main prints it as one line, with exit status 2

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


def add_model_flags(parser):
    """The flags of T and its bound."""
    model = parser.add_argument_group("model")
    model.add_argument("--hid_width", type=positive(int), default=HID_WIDTH, help="units in each hidden layer of T")
    model.add_argument("--out_width", type=positive(int), default=OUT_WIDTH, help="outputs of T")
    model.add_argument(
        "--activation",
        choices=ACTIVATIONS,
        default=argparse.SUPPRESS,
        help="of T's hidden layers (relu: the reference's); with --transform, one fixed critic instead of "
        f"--candidates (default: {ACTIVATION})",
    )
    model.add_argument(
        "--candidates",
        type=candidate_list,
        default=argparse.SUPPRESS,
        help="critics trained side by side on every fold, each TRANSFORM:ACTIVATION, or TRANSFORM:ACTIVATION:wdDECAY "
        "for a decoupled weight decay (asinh:relu:wd2); each fold is read at the one with the highest held-out bound "
        f"on the other folds; one candidate: a fixed critic (default: {CANDIDATES}, or "
        f"{TRANSFORM}:{ACTIVATION} with --cache_dir or a --strategy other than default)",
    )
    model.add_argument("--data_dim", type=positive(int), default=DATA_DIM, help="columns of x")
    model.add_argument("--latent_dim", type=positive(int), default=LATENT_DIM, help="columns of z")
    model.add_argument(
        "--estimator",
        choices=ESTIMATORS,
        default=ESTIMATOR,
        help="mine: bias-corrected gradient; mine_biased: the reference's; mine_f: f-divergence bound",
    )
    model.add_argument("--ema_rate", type=fraction, default=EMA_RATE, help="moving-average rate of --estimator mine")


def add_data_flags(parser):
    """The flags of the input, its split and its maps."""
    data = parser.add_argument_group("data")
    data.add_argument(
        "--input",
        default=INPUT,
        help="the samples: a row file (.dat, .txt: x, z, x_bar, z_bar per line, or x, z alone; .npy: one such array), "
        "a .npz with arrays x and z, or a .csv/.tsv table with a header (see --x_columns)",
    )
    data.add_argument(
        "--x_columns",
        default=X_COLUMNS,
        help="with a .csv or .tsv --input: the columns of x, as header names, 0-based indices or ranges such as 0-9, "
        "comma-separated (None: the first --data_dim)",
    )
    data.add_argument(
        "--z_columns",
        default=Z_COLUMNS,
        help="with a .csv or .tsv --input: the columns of z, as --x_columns (None: the --latent_dim after x's)",
    )
    data.add_argument(
        "--data_size",
        type=positive(int),
        default=DATA_SIZE,
        help="rows expected in --input (None: take the file's count)",
    )
    data.add_argument(
        "--folds",
        type=positive(int),
        default=argparse.SUPPRESS,
        help="cross-fit over this many folds: the estimate is their mean, with a standard error, a 95%% interval and "
        f"a 95%% lower confidence bound; 1: one split by --val_fraction (default: {FOLDS}, or 1 with "
        "--val_fraction, --cache_dir or a --strategy other than default)",
    )
    data.add_argument(
        "--val_fraction",
        type=fraction,
        default=argparse.SUPPRESS,
        help="with one split: share of rows held out for the estimate; 0 reports the training rows' bound, as the "
        f"reference (default: {VAL_FRACTION})",
    )
    add_map_flags(data)


def add_map_flags(data):
    """The data flags of the input maps, the marginal pairs and streaming."""
    data.add_argument(
        "--transform",
        choices=TRANSFORMS,
        default=argparse.SUPPRESS,
        help="per-column map fitted on the training rows; with --activation, one fixed critic instead of --candidates "
        f"(default: {TRANSFORM})",
    )
    data.add_argument(
        "--marginal",
        choices=["resample", "file"],
        default=MARGINAL,
        help="resample: pair each x_bar with another row's z_bar, afresh every epoch; file: the file's marginal half "
        "as it is",
    )
    data.add_argument(
        "--cache_dir",
        default=CACHE_DIR,
        help="stream the input in bounded memory from a binary cache built here once (None: load it into memory)",
    )
    data.add_argument(
        "--shuffle_buffer",
        type=positive(int),
        default=SHUFFLE_BUFFER,
        help="rows shuffled together when streaming (--cache_dir): whole shards of 65,536 rows",
    )
    data.add_argument(
        "--eval_permutations",
        type=positive(int),
        default=EVAL_PERMUTATIONS,
        help="fresh marginal pairings averaged per held-out evaluation",
    )


def add_training_flags(parser):
    """The flags of the optimizer, the steps and the devices."""
    training = parser.add_argument_group("training")
    training.add_argument(
        "--batch_size",
        type=positive(int),
        default=argparse.SUPPRESS,
        help=f"rows per gradient step (default: {BATCH_SIZE}, or a fold's training rows where they are fewer)",
    )
    training.add_argument(
        "--n_epoch",
        type=positive(int),
        default=argparse.SUPPRESS,
        help=f"passes over the training rows (default: {N_EPOCH}, or fewer where {STEP_BUDGET:,} steps take fewer)",
    )
    training.add_argument("--lr", type=positive(float), default=LR, help="learning rate")
    training.add_argument(
        "--lr_schedule",
        choices=["cosine", "constant"],
        default=LR_SCHEDULE,
        help="cosine: --lr decays to 0 over the run, so the last epochs' weights settle; constant: the reference's",
    )
    training.add_argument("--optimizer", choices=["adam", "sgd"], default=OPTIMIZER, help="sgd is the reference's")
    training.add_argument(
        "--adam_beta_2",
        type=fraction,
        default=ADAM_BETA_2,
        help="Adam's decay of its squared-gradient average (Keras's default: 0.999)",
    )
    training.add_argument("--seed", type=int, default=SEED, help="seeds the split, the weights and the shuffles")
    training.add_argument(
        "--jit", action=argparse.BooleanOptionalAction, default=JIT, help="compile each epoch with XLA"
    )
    training.add_argument(
        "--strategy",
        choices=["default", "mirrored", "multi_worker"],
        default=STRATEGY,
        help="tf.distribute strategy: one device; all local GPUs (or --cpu_replicas CPU devices); the workers of the "
        "TF_CONFIG environment variable",
    )
    training.add_argument(
        "--cpu_replicas",
        type=positive(int),
        default=CPU_REPLICAS,
        help="replicas of --strategy mirrored on a machine without GPUs",
    )
    training.add_argument(
        "--resume", action="store_true", help="continue from the latest checkpoint in --output_dir to --n_epoch epochs"
    )


def add_output_flags(parser):
    """The flags of what is written and printed."""
    output = parser.add_argument_group("output")
    output.add_argument(
        "--output_dir",
        default=OUTPUT_DIR,
        help="where results, checkpoints and flags.txt are written (created if missing)",
    )
    output.add_argument("--logdir", default=LOGDIR, help="TensorBoard event files (None: OUTPUT_DIR/logs)")
    output.add_argument(
        "--checkpoint_every", type=int, default=CHECKPOINT_EVERY, help="epochs between checkpoints; 0: none"
    )
    output.add_argument(
        "--checkpoint_seconds",
        type=float,
        default=CHECKPOINT_SECONDS,
        help="at most one checkpoint per this many seconds, the last epoch's always saved; 0: no limit (a save costs "
        "about as much as a 3,000-row epoch)",
    )
    output.add_argument(
        "--keep_checkpoints",
        type=positive(int),
        default=KEEP_CHECKPOINTS,
        help="how many of the latest checkpoints to keep",
    )
    output.add_argument(
        "--plot", action="store_true", help=f"write {PLOT_FILE}, the estimate per epoch (needs matplotlib)"
    )
    output.add_argument("--quiet", action="store_true", help="print only the final line")
    output.add_argument(
        "--units",
        choices=["nats", "bits"],
        default=UNITS,
        help="of the final line and summary.json's estimates (the per-epoch files stay in nats)",
    )
    output.add_argument(
        "--evaluate_only",
        metavar="CRITIC",
        help=f"no training: load a saved {CRITIC_FILE} and report its bound on --input",
    )


def make_parser():
    parser = OneLineParser(
        prog="mi_main.py",
        description="Estimate I(X; Z) in nats with MINE (Donsker-Varadhan bound). "
        "Flags may also come from a file: mi_main.py @run.args (one flag per line).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        fromfile_prefix_chars="@",
    )
    for add_flags in (add_model_flags, add_data_flags, add_training_flags, add_output_flags):
        add_flags(parser)
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The flags of argv, checked; a bad one raises InputError."""
    parser = make_parser()
    args = parser.parse_args(argv)
    if args.checkpoint_every < 0:
        parser.error(f"argument --checkpoint_every: must be 0 or more, got {args.checkpoint_every}")
    if args.checkpoint_seconds < 0:
        parser.error(f"argument --checkpoint_seconds: must be 0 or more, got {args.checkpoint_seconds}")
    # A small input adapts the defaults it cannot use; what was given stays.
    # data_dim and latent_dim at their defaults follow the arrays of a .npz, a table or estimate()
    args.adaptable = [name for name in ("folds", "batch_size", "n_epoch") if name not in args] + [
        name for name, default in (("data_dim", DATA_DIM), ("latent_dim", LATENT_DIM)) if getattr(args, name) == default
    ]
    if "batch_size" not in args:
        args.batch_size = BATCH_SIZE
    if "n_epoch" not in args:
        args.n_epoch = N_EPOCH
    # Both default through each other (SUPPRESS: absent unless given): one
    # split where one was asked for, or where the critics cannot share a device.
    if "folds" not in args:
        args.folds = 1 if "val_fraction" in args or args.cache_dir or args.strategy != "default" else FOLDS
    if "val_fraction" not in args:
        args.val_fraction = VAL_FRACTION
    # --transform or --activation name one fixed critic; kept in args as --candidates alone
    fixed = "transform" in args or "activation" in args
    if fixed and "candidates" in args:
        parser.error("argument --candidates: not together with --transform or --activation (they name one candidate)")
    if fixed:
        args.candidates = f"{getattr(args, 'transform', TRANSFORM)}:{getattr(args, 'activation', ACTIVATION)}"
    elif "candidates" not in args:
        # one critic where the critics cannot share a device, or no held-out rows could choose one
        alone = args.cache_dir or args.strategy != "default" or (args.folds == 1 and args.val_fraction == 0)
        args.candidates = f"{TRANSFORM}:{ACTIVATION}" if alone else CANDIDATES
    if args.folds == 1 and args.val_fraction == 0 and "," in args.candidates:
        parser.error(
            "argument --candidates: choosing among candidates needs held-out rows (--val_fraction above 0, or --folds)"
        )
    args.transform = args.activation = None
    return args


def is_weight_decay(text):
    """'wd2', 'wd0.5': a candidate's weight decay, wd and a number >= 0."""
    try:
        return text.startswith("wd") and 0 <= float(text[2:]) < math.inf
    except ValueError:
        return False


def candidate_list(text):
    """'rank:tanh,asinh:relu:wd2' -> the same text, checked; parse with candidates()."""
    for candidate in text.split(","):
        fields = candidate.split(":")
        if not (
            len(fields) in (2, 3)
            and fields[0] in TRANSFORMS
            and fields[1] in ACTIVATIONS
            and all(map(is_weight_decay, fields[2:]))
        ):
            raise argparse.ArgumentTypeError(
                f"'{candidate}' is not TRANSFORM:ACTIVATION or TRANSFORM:ACTIVATION:wdDECAY with TRANSFORM in "
                f"{', '.join(TRANSFORMS)}, ACTIVATION in {', '.join(ACTIVATIONS)} and DECAY a number >= 0"
            )
    if len(set(text.split(","))) != len(text.split(",")):
        raise argparse.ArgumentTypeError(f"'{text}' names a candidate twice")
    return text


def critic_folders(args, folds):
    """Each critic's folder under --output_dir, fold-major (critic
    f * candidates + c): fold-F/, TRANSFORM-ACTIVATION/, or both nested."""
    folders = []
    names = args.candidates.split(",")
    for fold in range(folds):
        for name in names:
            parts = ([f"fold-{fold + 1}"] if folds > 1 else []) + ([name.replace(":", "-")] if len(names) > 1 else [])
            folders.append(os.path.join(*parts))
    return folders


def flags_file_text(args):
    """The flags of a run, one per line, as @FILE reads them back."""
    lines = []
    for name, value in vars(args).items():
        if value is None or name in ("resume", "adaptable"):
            continue
        if isinstance(value, bool):
            if name == "jit":
                lines.append("--jit" if value else "--no-jit")
            elif value:
                lines.append(f"--{name}")
        else:
            lines.append(f"--{name} {shlex.quote(str(value))}")
    return "\n".join(lines) + "\n"


def make_optimizer(args, total_steps, critics=1):
    """The optimizer of `critics` critics, critic k being candidate k % candidates. Each candidate's weight
    decay is decoupled, as in AdamW: Keras multiplies every weight by 1 - decay * learning rate each step,
    and a [critics, 1, 1] array of decays broadcasts over the stacked kernels and biases, one per critic."""
    learning_rate = args.lr
    if args.lr_schedule == "cosine":
        learning_rate = tf.keras.optimizers.schedules.CosineDecay(args.lr, total_steps)
    decays = [decay for _, _, decay in candidates(args)]
    weight_decay = None
    if any(decays):
        per_critic = [decays[k % len(decays)] for k in range(critics)]
        weight_decay = per_critic[0] if critics == 1 else np.array(per_critic, np.float32).reshape(-1, 1, 1)
    if args.optimizer == "sgd":
        return tf.keras.optimizers.SGD(learning_rate, weight_decay=weight_decay)
    return tf.keras.optimizers.Adam(learning_rate, beta_2=args.adam_beta_2, weight_decay=weight_decay)


def make_train_step(model, optimizer):
    """The training step of the reference: one gradient step on a batch,
    [critics, rows, columns], for every critic at once; real_rows
    [critics, rows] marks padding rows with 0 (None: every row is real).

    Returns [critics, 3]: (bound, joint_part, marginal_part) of each
    critic's batch.
    """

    def train_step(batch, real_rows=None):
        with tf.GradientTape() as tape:
            cost, joint_part, marginal_part = model(batch, real_rows, training=True)
            total_cost = tf.reduce_sum(cost)  # critics share no weight: each gets its own gradient
        gradients = tape.gradient(total_cost, model.trainable_variables)
        optimizer.apply_gradients(zip(gradients, model.trainable_variables, strict=True))
        return tf.stack([-cost, joint_part, marginal_part], axis=1)

    return train_step


def weighted_steps(step_figures, steps, batch_rows, critics):
    """Runs step_figures(step) -> [critics, 3] for every step in one graph
    loop and returns the means weighted by batch_rows[step], the real rows
    of each step. A plain tf.while_loop, so that the functions calling it
    need no AutoGraph: converting their source cost about 0.5 s of every
    run's first epoch."""

    def one_step(step, totals):
        return step + 1, totals + tf.cast(batch_rows[step], tf.float32) * step_figures(step)

    _, totals = tf.while_loop(lambda step, _: step < steps, one_step, (tf.constant(0), tf.zeros([critics, 3])))
    return totals / tf.cast(tf.reduce_sum(batch_rows), tf.float32)


def train_chunk(train_step, batches, batch_rows):
    """Every step of one chunk of an epoch (epoch_batches), in one graph
    loop: batches [critics, steps, batch_size, columns], of which the first
    batch_rows[step] rows of each step are real. Returns [critics, 3]: the
    row-weighted means of (bound, joint_part, marginal_part) over the
    chunk's steps."""
    critics, steps, batch_size = batches.shape[:3]

    def step_figures(step):
        real_rows = tf.cast(tf.range(batch_size) < batch_rows[step], tf.float32)
        return train_step(batches[:, step], tf.tile(real_rows[None], [critics, 1]))

    return weighted_steps(step_figures, steps, batch_rows, critics)


class CompiledCritics:
    """The critics' model and optimizer, and the TensorFlow functions that
    train and evaluate them, each traced (and compiled with XLA when `jit`)
    on first use.

    train(batches, batch_rows) runs every step of a chunk of an epoch (a
    whole in-memory epoch, or one window of a streamed one) in one call and
    returns [critics, 3] training means; train_and_evaluate(batches,
    batch_rows, halves, seed, epoch) does the same, then evaluates each
    critic on its two held-out halves in the same compiled call, and also
    returns those bounds, [critics, 2] (halves as stacked_halves makes
    them); evaluate(halves, seed, epoch) evaluates alone (replicated runs).
    One or two calls per epoch, whatever the number of critics.
    """

    def __init__(self, model, optimizer, jit, passes, resample_latent_dim):
        self.model, self.optimizer = model, optimizer
        self.initial_optimizer_state = [variable.numpy() for variable in optimizer.variables]
        self.step = step = make_train_step(model, optimizer)

        def evaluate(halves, seed, epoch):
            return held_out_bounds(model, halves, seed, epoch, passes, resample_latent_dim)

        self.train = tf.function(
            lambda batches, batch_rows: train_chunk(step, batches, batch_rows), jit_compile=jit, autograph=False
        )
        self.train_and_evaluate = tf.function(
            lambda batches, batch_rows, halves, seed, epoch: (
                train_chunk(step, batches, batch_rows),
                evaluate(halves, seed, epoch),
            ),
            jit_compile=jit,
            autograph=False,
        )
        self.evaluate = tf.function(evaluate, autograph=False)  # replicas' variables: not in an XLA call

    def reset(self, initial_weights):
        """Back to the start of a run: the given weights, a fresh optimizer."""
        self.model.set_weights(initial_weights)
        for variable, value in zip(self.optimizer.variables, self.initial_optimizer_state, strict=True):
            variable.assign(value)


# Every call of main() in a process (notebooks, sweeps, the benchmarks)
# reuses the CompiledCritics of a configuration it has seen: a new model
# would trace and compile its functions anew, and TensorFlow keeps every
# compiled function for the life of the process (measured: about 80 MB a
# call; README.md, "Many runs in one process").
COMPILED_CRITICS = {}


def make_model(args, critics, seed=None):
    """The run's model, critic f * candidates + c being fold f's candidate
    c; with a seed, its initial weights are those of the seed."""
    activations = [activation for _, activation, _ in candidates(args)] * (critics // len(candidates(args)))
    activation = activations[0] if len(set(activations)) == 1 else activations
    return MineModel(
        args.data_dim,
        args.latent_dim,
        args.hid_width,
        args.out_width,
        args.estimator,
        args.ema_rate,
        activation,
        critics,
        seed,
    )


def compiled_critics(args, critics, total_steps, strategy):
    """The CompiledCritics for this run's configuration, with its weights
    set to this seed's initial ones, made or taken from COMPILED_CRITICS."""
    passes = args.eval_permutations if resampled_latent_dim(args) else 1
    key = (
        args.data_dim,
        args.latent_dim,
        args.hid_width,
        args.out_width,
        args.candidates,
        args.estimator,
        args.ema_rate,
        critics,
        args.optimizer,
        args.lr,
        args.lr_schedule,
        total_steps,
        args.jit,
        passes,
        resampled_latent_dim(args),
    )
    compiled = COMPILED_CRITICS.get(key)
    replicated = strategy.num_replicas_in_sync > 1
    if replicated or compiled is None:
        with strategy.scope():
            model = make_model(args, critics, args.seed)
            optimizer = make_optimizer(args, total_steps, critics)
            optimizer.build(model.trainable_variables)
        compiled = CompiledCritics(model, optimizer, args.jit, passes, resampled_latent_dim(args))
        if not replicated:  # a replicated model's variables belong to its strategy: not kept
            COMPILED_CRITICS[key] = compiled
    else:  # a model made for another seed: this seed's initial weights, a fresh optimizer
        compiled.reset(make_model(args, critics, args.seed).get_weights())
    return compiled


def make_strategy(args):
    """The tf.distribute strategy of --strategy. Called before TensorFlow
    runs anything, since the CPU can only be split into logical devices
    before its runtime starts."""
    if args.strategy == "default":
        return tf.distribute.get_strategy()
    if args.strategy == "multi_worker":
        if "TF_CONFIG" not in os.environ:
            fail(
                "--strategy multi_worker needs the TF_CONFIG environment variable describing the cluster (README: "
                "Scaling out)"
            )
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
        fail(
            f"--cpu_replicas {args.cpu_replicas}: TensorFlow started with {len(devices)} CPU device(s) and cannot "
            "split it now"
        )
    return tf.distribute.MirroredStrategy([device.name for device in devices[: args.cpu_replicas]])


def is_chief(strategy):
    """Whether this process writes the run's results: always, but for the
    workers other than the first of a multi-worker cluster."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    return resolver.task_type == "chief" or (resolver.task_type == "worker" and resolver.task_id == 0)


def split_for_replicas(strategy, batches):
    """Each replica's share of every global batch of an epoch (one critic):
    rows [r * B / R, (r + 1) * B / R) of each batch for replica r of R.
    Every worker builds the same epoch from (seed, epoch) and keeps its own
    replicas' shares, so no rows travel between workers."""

    def share(context):
        replica, replicas, size = context.replica_id_in_sync_group, context.num_replicas_in_sync, batches.shape[2]
        return batches[:, :, replica * size // replicas : (replica + 1) * size // replicas]

    return strategy.experimental_distribute_values_from_function(share)


def make_distributed_train_epoch(strategy, train_step):
    """train_chunk for several replicas: the loop over steps stays in one
    tf.function, and each step runs on every replica (strategy.run) on its
    share of the global batch (split_for_replicas), padding rows masked as
    in train_chunk. The bound is that of the whole global batch
    (MineModel.cross_replica_cost), so the result is the same as on one
    device. Not compiled with XLA: XLA cannot compile the replicas'
    collective operations in this loop."""

    @tf.function(autograph=False)
    def train_epoch(shares, batch_rows, batch_size):
        steps = strategy.experimental_local_results(shares)[0].shape[1]

        def step_figures(step):
            def replica_step(replica_batches):
                context = tf.distribute.get_replica_context()
                first_row = context.replica_id_in_sync_group * batch_size // context.num_replicas_in_sync
                real_rows = tf.cast(first_row + tf.range(replica_batches.shape[2]) < batch_rows[step], tf.float32)[None]
                return train_step(replica_batches[:, step], real_rows)

            return strategy.experimental_local_results(strategy.run(replica_step, args=(shares,)))[0]

        return weighted_steps(step_figures, steps, batch_rows, 1)

    return train_epoch


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
        print(
            f"\n{signal.Signals(number).name}: stopping after this epoch (again to stop at once)",
            file=sys.stderr,
            flush=True,
        )

    def restore(self):
        for number, handler in self.previous.items():
            signal.signal(number, handler)


class Run:
    """What the epoch loop and the outputs need of a prepared run."""

    def __init__(self, **fields):
        self.__dict__.update(fields)


def stacked_halves(held_out_rows):
    """Each critic's held-out rows cut into the two halves whose best epochs
    select each other's estimate (cross_selected_estimate), as (rows
    [critics, 2, most rows, columns], counts [critics, 2]); None without
    held-out rows."""
    if min(len(rows) for rows in held_out_rows) < 2:
        return None
    rows, counts = stacked_rows(
        [half for rows in held_out_rows for half in (rows[: len(rows) // 2], rows[len(rows) // 2 :])]
    )
    return tf.constant(rows.reshape(len(held_out_rows), 2, *rows.shape[1:])), tf.constant(counts.reshape(-1, 2))


def checkpoint_manager(args, compiled, critics, identity):
    """(CheckpointManager or None, completed epochs, history so far) of a
    run: everything a resumed run needs to continue as if never stopped,
    restored with --resume. The shuffles are fixed by (seed, epoch), so the
    epoch stands for the RNG; the history holds, per epoch and critic: the
    bound, joint_part and marginal_part on the training rows, then the
    held-out bound and its two halves' bounds. identity None: nothing is
    written."""
    completed_epochs = tf.Variable(0, dtype=tf.int64)
    history_so_far = tf.Variable(
        np.zeros((0, critics * 6)), shape=tf.TensorShape([None, critics * 6]), dtype=tf.float64
    )
    if identity is None:
        return None, completed_epochs, history_so_far
    checkpoint_dir = os.path.join(args.output_dir, CHECKPOINT_DIR)
    checkpoint = tf.train.Checkpoint(
        model=compiled.model, optimizer=compiled.optimizer, epoch=completed_epochs, history=history_so_far
    )
    manager = tf.train.CheckpointManager(checkpoint, checkpoint_dir, max_to_keep=args.keep_checkpoints)
    if args.resume:
        checkpoint.restore(manager.latest_checkpoint).assert_existing_objects_matched()
    else:
        os.makedirs(checkpoint_dir, exist_ok=True)
        save_json(os.path.join(checkpoint_dir, RUN_IDENTITY_FILE), identity)
    return manager, completed_epochs, history_so_far


def summary_writer(args, compiled, critics, has_held_out, first_epoch):
    """The run's TensorBoard writer (a no-op one without a log directory)
    and write_summaries(epoch, figures), an epoch's scalars in one call (a
    dozen eager ones cost about 6 ms an epoch): figures are the critics'
    means of the training bound, held-out bound, joint and marginal parts,
    the rows per second, then each critic's held-out bound."""
    logdir = args.logdir or (args.output_dir is not None and os.path.join(args.output_dir, "logs"))
    writer = tf.summary.create_file_writer(logdir) if logdir else tf.summary.create_noop_writer()
    with writer.as_default():
        tf.summary.text("hyperparameters", "```\n" + flags_file_text(args) + "```", step=first_epoch)

    @tf.function(autograph=False)
    def write_summaries(epoch, figures):
        with writer.as_default(step=epoch):
            tf.summary.scalar("estimate/training_rows", figures[0])
            if has_held_out:
                tf.summary.scalar("estimate/held_out", figures[1])
            if critics > 1:
                for k in range(critics):
                    tf.summary.scalar(f"folds/held_out_{k + 1}", figures[5 + k])
            tf.summary.scalar("parts/joint", figures[2])
            tf.summary.scalar("parts/marginal", figures[3])
            tf.summary.scalar("speed/rows_per_second", figures[4])
            tf.summary.scalar("learning_rate", compiled.optimizer.learning_rate)

    return writer, write_summaries


def prepare(args, strategy, data, arrays=None):
    """Everything before the first epoch: directories, the compiled critics,
    the checkpoint (restored with --resume), TensorBoard and the start line.
    Without an output directory (estimate()'s default) nothing is written:
    no checkpoint, and TensorBoard only to an explicit --logdir."""
    critics = data.critics
    writes = args.output_dir is not None
    output_dirs = (
        [args.output_dir]
        if critics == 1 or not writes
        else [
            os.path.join(args.output_dir, folder) for folder in critic_folders(args, critics // len(candidates(args)))
        ]
    )
    if writes:
        checkpoint_dir = os.path.join(args.output_dir, CHECKPOINT_DIR)
        identity = run_identity(args, arrays)
        if args.resume:
            check_resumable(args, checkpoint_dir, identity)
        for output_dir in output_dirs:
            os.makedirs(output_dir, exist_ok=True)
        write_atomically(os.path.join(args.output_dir, FLAGS_FILE), lambda stream: stream.write(flags_file_text(args)))

    compiled = compiled_critics(args, critics, args.n_epoch * -(-data.rows_per_epoch // args.batch_size), strategy)
    replicated = strategy.num_replicas_in_sync > 1  # then there is one critic: main refuses --folds
    manager, completed_epochs, history_so_far = checkpoint_manager(
        args, compiled, critics, identity if writes else None
    )
    first_epoch = int(completed_epochs)
    truth = (read_sidecar(args.input) or {}).get("true_mi_nats") if args.input is not None else None
    halves = stacked_halves(data.held_out_rows)
    writer, write_summaries = summary_writer(args, compiled, critics, halves is not None, first_epoch)

    run = Run(
        critics=critics,
        output_dirs=output_dirs,
        compiled=compiled,
        replicated=replicated,
        truth=truth,
        write_summaries=write_summaries,
        distributed_epoch=make_distributed_train_epoch(strategy, compiled.step) if replicated else None,
        strategy=strategy,
        halves=halves,
        first_epoch=first_epoch,
        history=list(history_so_far.numpy().reshape(-1, critics, 6)),
        completed_epochs=completed_epochs,
        history_so_far=history_so_far,
        manager=manager,
        writer=writer,
        flops_per_row=training_flops_per_row(args.data_dim + args.latent_dim, args.hid_width, args.out_width),
    )
    if not args.quiet:
        print_start_line(args, run, data)
    return run


def print_start_line(args, run, data):
    held_out_counts = [len(rows) for rows in data.held_out_rows]

    def span(counts):
        return f"{min(counts)}" if min(counts) == max(counts) else f"{min(counts)} to {max(counts)}"

    folds = run.critics // len(candidates(args))
    rows_text = (
        f"{data.training_counts[0]} training rows, {held_out_counts[0]} held out"
        if folds == 1
        else f"{folds} cross-fitted folds, each critic trained on {span(data.training_counts)} rows and read on "
        f"the other {span(held_out_counts)}"
    )
    if len(candidates(args)) > 1:
        rows_text += f"; candidates {args.candidates.replace(',', ', ')} on each ({run.critics} critics side by side)"
    print(
        f"MINE ({args.estimator}) on {input_name(args)}: {rows_text}, "
        f"batch {args.batch_size}, {args.n_epoch} epoch{'s' if args.n_epoch > 1 else ''}, "
        f"{args.optimizer} lr {args.lr}, seed {args.seed}"
        + (f", {run.strategy.num_replicas_in_sync} replicas ({args.strategy})" if run.replicated else "")
        + (f", true MI {run.truth} nats" if run.truth is not None else "")
        + (f"; resumed after epoch {run.first_epoch}" if args.resume else "")
        + "".join(f"; {note}" for note in data.adapted)
    )


def train_one_epoch(args, run, data, chunks, epoch):
    """One epoch's training calls (one in memory, one per window when
    streamed), the last of which also evaluates the held-out rows: returns the row-weighted means
    [critics, 3] over the epoch's chunks, the rows trained (all critics)
    and the held-out bounds [critics, 2] (NaN without held-out rows)."""
    compiled, seed, epoch = run.compiled, tf.constant(args.seed, tf.int64), tf.constant(epoch, tf.int64)
    totals, rows_trained, held_out = np.zeros((run.critics, 3)), 0, None
    chunks = iter(chunks)
    upcoming = next(chunks)
    while upcoming is not None:
        (batches, batch_rows), upcoming = upcoming, next(chunks, None)
        if run.replicated:
            means = run.distributed_epoch(split_for_replicas(run.strategy, batches), batch_rows, batches.shape[2])
        elif upcoming is None and run.halves is not None:  # the epoch's last chunk: evaluate in the same call
            means, held_out = compiled.train_and_evaluate(batches, batch_rows, run.halves, seed, epoch)
        else:
            means = compiled.train(batches, batch_rows)
        rows = int(np.sum(batch_rows))
        totals += rows * means.numpy()
        rows_trained += rows
    if held_out is None:
        held_out = (
            compiled.evaluate(run.halves, seed, epoch) if run.halves is not None else np.full((run.critics, 2), np.nan)
        )
    return totals / rows_trained, rows_trained * run.critics, np.asarray(held_out, dtype=np.float64)


class Outcome:
    """What the epoch loop did: per-epoch history [epochs, critics, 6], the
    seconds and rows of each epoch trained by this process, and how it ended."""

    def __init__(self, history, training_seconds, rows_per_epoch, diverged_in, train_seconds, status):
        self.history, self.training_seconds, self.rows_per_epoch = history, training_seconds, rows_per_epoch
        self.diverged_in, self.train_seconds, self.status = diverged_in, train_seconds, status


def report_epoch(args, run, progress, epoch, figures, rows_per_second, epoch_start):
    """An epoch's TensorBoard scalars, and its progress bar step or line,
    from its figures [critics, 6] averaged over the critics."""
    bound, joint_part, marginal_part, held_out_bound = figures[:, :4].mean(axis=0)
    run.write_summaries(
        tf.constant(epoch, tf.int64),
        tf.constant([bound, held_out_bound, joint_part, marginal_part, rows_per_second, *figures[:, 3]], tf.float32),
    )
    if progress:
        progress.update(epoch, [("train", bound), ("held-out", held_out_bound), ("rows/s", rows_per_second)])
    elif not args.quiet:
        print(
            f"epoch {epoch:4d}/{args.n_epoch}  train {bound:8.4f}  held-out {held_out_bound:8.4f}  "
            f"joint {joint_part:8.4f}  marginal {marginal_part:8.4f}  {time.perf_counter() - epoch_start:6.2f} s  "
            f"{rows_per_second:9.0f} rows/s  {rows_per_second * run.flops_per_row / 1e9:5.1f} GFLOP/s",
            flush=True,
        )


def epoch_loop(args, run, data, stop):
    """Trains epoch after epoch, logging each, checkpointing as due, until
    --n_epoch, divergence or a stop request."""
    progress = (
        tf.keras.utils.Progbar(args.n_epoch, stateful_metrics=["train", "held-out", "rows/s"])
        if sys.stdout.isatty() and not args.quiet
        else None
    )
    history, training_seconds, rows_per_epoch = run.history, [], []
    diverged_in = None
    train_start = last_save = time.perf_counter()
    for epoch, chunks in enumerate(data.epochs(run.first_epoch), run.first_epoch + 1):
        epoch_start = time.perf_counter()
        # the first epoch compiles, or loads from XLA's cache
        with tensorflow_log_filtered(CACHE_LOAD_NOISE) if epoch == run.first_epoch + 1 else contextlib.nullcontext():
            means, rows_trained, held_out = train_one_epoch(args, run, data, chunks, epoch)
        if not np.isfinite(means).all():
            # A non-finite loss or gradient poisons every later step of the
            # epoch; nothing of this epoch is kept, the last checkpoint stays.
            diverged_in = epoch
            break
        training_seconds.append(time.perf_counter() - epoch_start)
        rows_per_epoch.append(rows_trained)
        history.append(np.column_stack([means, held_out.mean(axis=1), held_out]))
        report_epoch(args, run, progress, epoch, history[-1], rows_per_epoch[-1] / training_seconds[-1], epoch_start)
        due = (
            run.manager
            and args.checkpoint_every
            and (
                epoch == args.n_epoch
                or stop.signal is not None
                or (epoch % args.checkpoint_every == 0 and time.perf_counter() - last_save >= args.checkpoint_seconds)
            )
        )
        if due:
            run.completed_epochs.assign(epoch)
            run.history_so_far.assign(np.array(history, dtype=np.float64).reshape(-1, run.critics * 6))
            run.manager.save(checkpoint_number=epoch)
            last_save = time.perf_counter()
        if stop.signal is not None:
            break
    train_seconds = time.perf_counter() - train_start
    run.writer.close()
    status = "diverged" if diverged_in else "interrupted" if stop.signal is not None else "completed"
    return Outcome(
        np.array(history, dtype=np.float64).reshape(-1, run.critics, 6),
        training_seconds,
        rows_per_epoch,
        diverged_in,
        train_seconds,
        status,
    )


def evaluate_only(args, arrays=None):
    """Reports a saved critic's bound on --input, without training."""
    try:
        model = tf.keras.models.load_model(args.evaluate_only)
        with np.load(os.path.join(os.path.dirname(args.evaluate_only), TRANSFORM_FILE)) as saved:
            kind = str(saved["kind"])
            parameters = {name: saved[name] for name in saved.files if name != "kind"}
    except (OSError, ValueError) as error:
        fail(f"--evaluate_only {args.evaluate_only}: cannot load the critic and its {TRANSFORM_FILE}: {error}")
    args.data_dim, args.latent_dim = model.data_dim, model.latent_dim
    rows = make_transform(kind, parameters, model.sample_width)(read_input(args, arrays))
    resample_latent_dim = resampled_latent_dim(args)
    passes = args.eval_permutations if resample_latent_dim else 1
    every_row = tf.constant(rows[None, None]), tf.constant([[len(rows)]])  # one critic, one part
    bound = float(held_out_bounds(model, every_row, args.seed, 0, passes, resample_latent_dim)[0, 0])
    print(
        f"bound of {args.evaluate_only} on {input_name(args)}: {bound:.4f} nats ({len(rows)} rows, {passes} marginal "
        "pairings)"
    )
    return {"mi_estimate": bound, "rows": len(rows)}


def main(argv: list[str] | None = None) -> dict:
    """The command line: runs with the flags of argv (sys.argv by default)
    and ends with the exit status of the README: 0 done, 1 results not
    written, 2 bad input or flag (one line on stderr), 3 diverged,
    128 + N stopped by signal N. Returns the summary when done."""
    try:
        summary = run(parse_args(argv))
    except InputError as error:
        print(f"mi_main.py: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    except OutputError as error:
        print(f"mi_main.py: error: {error}", file=sys.stderr)
        raise SystemExit(1) from None
    where = summary.get("hyperparameters", {}).get("output_dir")
    if summary.get("status") == "diverged":
        print(
            f"mi_main.py: error: the loss became NaN or infinite in epoch {summary['diverged_in_epoch']}; the "
            f"{summary['epochs_completed']} completed epochs are in {where}/; try a smaller --lr or --estimator mine_f",
            file=sys.stderr,
        )
        raise SystemExit(3)
    if summary.get("status") == "interrupted":
        print(
            f"stopped by {summary['stopped_by']} after {summary['epochs_completed']} epochs; their results are in "
            f"{where}/ (continue with --resume)",
            file=sys.stderr,
        )
        raise SystemExit(128 + signal.Signals[summary["stopped_by"]])
    return summary


def estimate(x: np.ndarray, z: np.ndarray, **flags) -> dict:
    """Estimates I(X; Z) from arrays: x [rows, data_dim] and z [rows,
    latent_dim] (1-D: one column), the same rows in the same order.

    Every flag of mi_main.py is a keyword with the same name and default
    (n_epoch=..., folds=..., seed=...); data_dim and latent_dim come from
    the arrays. With output_dir=None (the default here: ESTIMATE_OUTPUT_DIR)
    nothing is written anywhere; with an output_dir, what the command line
    writes. Returns the summary (the keys of summary.json); its "status"
    says whether the run completed, diverged or was interrupted. Bad input
    or flags raise ValueError with the command line's message.
    """
    names = {action.dest for action in make_parser()._actions} - {"help"}
    unknown = sorted(set(flags) - names)
    if unknown:
        raise InputError(f"unknown flag {unknown[0]!r} (flags: {', '.join(sorted(names))})")
    x, z = checked_array(x, "x"), checked_array(z, "z")
    if len(x) != len(z):
        raise InputError(f"x has {len(x)} rows and z {len(z)}; they must be the same samples")
    flags.setdefault("output_dir", ESTIMATE_OUTPUT_DIR)
    argv = []
    for name, value in flags.items():
        if name == "jit":
            argv.append("--jit" if value else "--no-jit")
        elif isinstance(value, bool):
            argv += [f"--{name}"] if value else []
        elif value is not None and name not in ("output_dir", "input"):
            argv += [f"--{name}", str(value)]
    args = parse_args(argv)
    args.output_dir, args.input = flags["output_dir"], None
    return run(args, arrays=(x, z))


def run(args: argparse.Namespace, arrays: tuple[np.ndarray, np.ndarray] | None = None) -> dict:
    """One run of parsed flags, on --input or on arrays (x, z); returns the
    summary. Raises InputError on bad input and OutputError when the
    results cannot be written."""
    if args.evaluate_only:
        return evaluate_only(args, arrays)
    if args.plot:
        require_matplotlib()
    if args.folds > 1 and args.strategy != "default":
        fail(
            "--folds trains its critics side by side on one device; it does not combine with --strategy "
            f"{args.strategy}"
        )
    if "," in args.candidates and (args.cache_dir or args.strategy != "default"):
        fail(
            "several --candidates train side by side on one device, on rows in memory; they do not combine with "
            + ("--cache_dir" if args.cache_dir else f"--strategy {args.strategy}")
        )
    if args.cache_dir and (arrays is not None or os.path.splitext(args.input)[1].lower() not in TEXT_SUFFIXES):
        fail(f"--cache_dir streams text row files ({', '.join(TEXT_SUFFIXES)}); it does not take {input_name(args)}")
    strategy = make_strategy(args)
    if not is_chief(strategy) and args.output_dir is not None:  # the other workers' files go aside
        args.output_dir = os.path.join(args.output_dir, f"worker-{strategy.cluster_resolver.task_id}")
        args.logdir = None
    resample_latent_dim = resampled_latent_dim(args)
    if args.folds > 1 and args.cache_dir:
        fail("--folds needs the rows in memory; it does not combine with --cache_dir")
    if args.resume and args.output_dir is None:
        fail("--resume continues the checkpoint in an output directory; give output_dir")
    data = (
        streamed_data(args, resample_latent_dim, STEP_BUDGET, TRANSFORM_SAMPLE)
        if args.cache_dir
        else in_memory_data(args, resample_latent_dim, STEP_BUDGET, arrays)
    )
    lock = None
    if args.output_dir is not None:
        try:
            os.makedirs(args.output_dir, exist_ok=True)
        except OSError as error:
            fail(f"--output_dir {args.output_dir}: cannot create: {error.strerror}")
        lock = acquire_lock(args.output_dir)
    stop = StopRequest()
    try:
        return train(args, strategy, data, stop, arrays)
    finally:
        stop.restore()
        if lock:
            os.unlink(lock)


def train(args, strategy, data, stop, arrays=None):
    """Trains the run's critics, writes the outputs and returns the summary.

    One critic is the plain run; with --folds K there are K critics side by
    side, critic k trained on every fold but k and read on fold k (its
    files in OUTPUT_DIR/fold-k). On divergence or a stop request the
    outputs of the completed epochs are written, and the run ends with exit
    status 3, or 128 + the signal's number."""
    run = prepare(args, strategy, data, arrays)
    outcome = epoch_loop(args, run, data, stop)
    return write_outputs(args, run, data, outcome, stop)


def one_split_stderr(args, run, data, chosen):
    """The standard error of a one-split estimate: held_out_stderr of the
    critics chosen on the two halves (indices `chosen`), on every held-out
    row, at the last epoch's weights: the run keeps no earlier ones, and
    late epochs differ little under the cosine schedule."""
    rows = np.stack(data.held_out_rows)[:, None]  # [critics, one part, rows, columns]
    counts = tf.fill([len(rows), 1], rows.shape[2])
    joint, marginal = held_out_scores(
        run.compiled.model,
        tf.constant(rows),
        counts,
        tf.constant(args.seed, tf.int64),
        0,
        args.eval_permutations,
        resampled_latent_dim(args),
    )
    joint, marginal = joint.numpy()[:, 0], marginal.numpy()[:, :, 0]
    return float(np.mean([held_out_stderr(joint[k], marginal[k], args.estimator) for k in chosen]))


def chosen_estimate(args, run, data, history):
    """The estimate as summary.json gives it, from the history [epochs,
    critics, 6]: each fold's (candidate, epoch) chosen on the other folds,
    or with one split on the other half; with its error bar. Returns
    (summary fields, the winning candidates for the final line)."""
    names = args.candidates.split(",")
    per_fold = len(names)
    folds = run.critics // per_fold
    chosen = "candidate and epoch" if per_fold > 1 else "epoch"
    if not len(history):
        fields = {"mi_estimate": None, "mi_estimate_from": "no completed epoch"}
        if folds > 1:
            fields |= {
                "mi_stderr": None,
                "mi_ci95": [None, None],
                "mi_lower_95": None,
                "fold_estimates": [None] * folds,
            }
        return fields | ({"fold_winners": [], "fold_best_epochs": []} if per_fold > 1 else {}), []
    if folds > 1:  # fold k's critics are k * per_fold ... (k + 1) * per_fold - 1
        estimates, choices = pooled_selected_estimates(history[:, :, 3].reshape(len(history), folds, per_fold))
        mean, stderr, interval, lower = cross_fitted_interval(estimates)
        winners = [names[candidate] for _, candidate in choices]
        fields = {
            "mi_estimate": mean,
            "mi_estimate_from": f"mean of {folds} cross-fitted folds' held-out bounds, each at the {chosen} chosen "
            "on the other folds",
            "mi_stderr": stderr,
            "mi_ci95": list(interval),
            "mi_lower_95": lower,
            "fold_estimates": estimates,
        }
        best_epochs = [epoch for epoch, _ in choices]
    elif run.halves is not None:
        estimate, (epoch_a, chosen_a), (epoch_b, chosen_b) = cross_selected_estimate(history[:, :, 4], history[:, :, 5])
        stderr = one_split_stderr(args, run, data, sorted({chosen_a, chosen_b}))
        interval, lower = normal_interval(estimate, stderr)
        winners, best_epochs = [[names[chosen_a], names[chosen_b]]], [[epoch_a, epoch_b]]
        fields = {
            "mi_estimate": estimate,
            "mi_estimate_from": f"held-out bound at the {chosen} chosen on the other half (epochs {epoch_a}, "
            f"{epoch_b})",
            "mi_stderr": stderr,
            "mi_ci95": list(interval),
            "mi_lower_95": lower,
        }
    else:  # parse_args allows no choice without held-out rows: one candidate
        return {"mi_estimate": float(history[-1, 0, 0]), "mi_estimate_from": "training rows' bound, last epoch"}, []
    return fields | ({"fold_winners": winners, "fold_best_epochs": best_epochs} if per_fold > 1 else {}), winners


def save_run_files(args, run, data, outcome):
    """The per-epoch files of each critic, of each fold's mean over its
    candidates and, at the top, of the critics' mean; each critic's model
    and input map (but after a divergence)."""
    history, critics, has_held_out = outcome.history, run.critics, run.halves is not None
    per_fold = len(candidates(args))
    try:
        for k, output_dir in enumerate(run.output_dirs):
            if critics > 1:
                save_curves(output_dir, history[:, k : k + 1], has_held_out, args.plot, run.truth)
            if outcome.status != "diverged":
                critic = run.compiled.model if critics == 1 else run.compiled.model.critic(k)
                save_critic(output_dir, critic, candidates(args)[k % per_fold][0], data.transform_parameters[k])
        if critics > per_fold > 1:  # each fold's own mean over its candidates
            for fold in range(critics // per_fold):
                fold_history = history[:, fold * per_fold : (fold + 1) * per_fold]
                fold_dir = os.path.join(args.output_dir, f"fold-{fold + 1}")
                save_curves(fold_dir, fold_history, has_held_out, args.plot, run.truth)
        # the reference's files at the top whatever the folds: the critics' mean per epoch
        save_curves(args.output_dir, history, has_held_out, args.plot, run.truth)
    except OSError as error:
        raise OutputError(
            f"cannot write the results to {args.output_dir}: {error.strerror}; "
            "the files already there are the previous complete ones"
        ) from None


def run_summary(args, run, data, outcome, stop, estimate_fields):
    """summary.json's content: the run's status, the estimate, counts, speeds and flags."""
    history, per_fold = outcome.history, len(candidates(args))
    folds = run.critics // per_fold
    training_seconds, rows_per_epoch = outcome.training_seconds, outcome.rows_per_epoch
    trained_epochs = len(training_seconds)
    # speeds after the first epoch of this process, which also traces and compiles
    steady = sum(rows_per_epoch[1:]) / sum(training_seconds[1:]) if trained_epochs > 1 else None
    held_out_counts = [len(rows) for rows in data.held_out_rows]
    return {
        "status": outcome.status,
        "stopped_by": signal.Signals(stop.signal).name if stop.signal is not None else None,
        "folds": folds,
        "critics": run.critics,
        "epochs_completed": run.first_epoch + trained_epochs,
        "diverged_in_epoch": outcome.diverged_in,
        "units": args.units,
        **estimate_fields,
        "held_out_last_epoch": float(history[-1, :, 3].mean()) if len(history) else None,
        "training_rows_estimate": float(history[-1, :, 0].mean()) if len(history) else None,
        "true_mi_nats": run.truth,
        "estimator": args.estimator,
        "candidates": args.candidates.split(","),
        "n_epoch": args.n_epoch,
        "resumed_after_epoch": run.first_epoch if args.resume else None,
        "rows": data.total_rows,
        "training_rows": data.training_counts[0] if folds == 1 else data.training_counts[::per_fold],
        "held_out_rows": held_out_counts[0] if folds == 1 else held_out_counts[::per_fold],
        "batch_size": args.batch_size,
        "adapted_to_rows": data.adapted,
        "seed": args.seed,
        "train_seconds": round(outcome.train_seconds, 3),
        "samples_per_second": round(sum(rows_per_epoch) / outcome.train_seconds, 1) if trained_epochs else None,
        "first_epoch_seconds": round(training_seconds[0], 3) if trained_epochs else None,
        "training_rows_per_second": round(steady, 1) if steady else None,
        "training_gflops_per_second": round(steady * run.flops_per_row / 1e9, 2) if steady else None,
        "training_flops_per_row": run.flops_per_row,
        "hyperparameters": vars(args),
    }


def write_outputs(args, run, data, outcome, stop):
    """The estimate and its files (nothing without an output directory);
    prints the final line of a completed run and returns the summary, its
    status saying whether the run completed, diverged or was interrupted."""
    estimate_fields, winners = chosen_estimate(args, run, data, outcome.history)
    if args.output_dir is not None:
        save_run_files(args, run, data, outcome)
    summary = run_summary(args, run, data, outcome, stop, estimate_fields)
    in_units(summary, args.units)
    if args.output_dir is not None:
        try:
            save_json(os.path.join(args.output_dir, SUMMARY_FILE), summary)
        except OSError as error:
            raise OutputError(f"cannot write {SUMMARY_FILE} to {args.output_dir}: {error.strerror}") from None
    if outcome.status == "completed":
        print_final_line(args, summary, winners, outcome.train_seconds)
    return summary


def print_final_line(args, summary, winners, seconds):
    units, folds = summary["units"], summary["folds"]
    mi_estimate = summary["mi_estimate"]
    if "mi_ci95" in summary:
        low, high = summary["mi_ci95"]
        estimate_text = (
            f"{mi_estimate:.4f} ± {summary['mi_stderr']:.4f} {units} (95 % interval {low:.4f} to {high:.4f}, "
            f"at least {summary['mi_lower_95']:.4f} with 95 % confidence, "
            + (f"{folds} folds)" if folds > 1 else "one split)")
        )
    else:
        estimate_text = f"{mi_estimate:.4f} {units}"
    truth = summary["true_mi_nats"]
    if truth is not None:
        estimate_text += f" (true {truth if units == 'nats' else round(truth / NATS_PER_BIT, 4)})"
    chosen = ""
    if winners and len(summary["candidates"]) > 1 and folds > 1:
        chosen = "; chosen on the other folds: " + ", ".join(
            f"fold {fold + 1} {name}" for fold, name in enumerate(winners)
        )
    elif winners and len(summary["candidates"]) > 1:
        chosen = "; chosen on halves A/B: " + (
            "/".join(winners[0]) if winners[0][0] != winners[0][1] else winners[0][0]
        )
    where = f"; results in {args.output_dir}/" if args.output_dir is not None else ""
    print(
        f"estimated I(X; Z) = {estimate_text}"
        + (f" from the {summary['mi_estimate_from']}" if folds == 1 else "")
        + chosen
        + f", in {seconds:.1f} s{where}"
    )


if __name__ == "__main__":
    main()
