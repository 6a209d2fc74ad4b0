"""Estimate the mutual information I(X; Z) in nats with MINE.

Trains the statistics network T to maximize the Donsker-Varadhan bound
(Belghazi et al., 2018) on rows of (x, z, x_bar, z_bar) and writes the
estimate per epoch. Every critic is read on rows it never trained on: the
bound on its training rows overestimates once T fits them. Edit a default
in Config below, or override it:

    python mi_main.py --input data/input_set.dat --n_epoch 100 --lr 0.001

or, from Python, estimate(x, z, n_epoch=100).

Top to bottom: the settings and their defaults (Config); the defaults that
follow the flags and the input (every value a run takes other than the one
given); the training step; the training loop; the compiled critics and
tf.distribute; a prepared run (the fitted critics, the weights the estimate
reads, checkpoints); a run from its settings to its results (main, estimate,
run); the independence test its critics make (--permutations,
independence_test); the command line's flags, made from Config; the
process's start-up.
This module imports the other three and none imports it: reading inputs,
epochs and writing results live in mi_data_processing, the bounds, the
training record and the estimate's choice in mi_model, the network T in
mi_layers.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import ctypes
import dataclasses
import functools
import hashlib
import math
import os
import platform
import shlex
import signal
import sys
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, NamedTuple, NoReturn

import numpy as np

# First: it loads TensorFlow behind a filter of the INFO lines TensorFlow logs as it loads, whatever its log level.
from mi_data_processing import (  # isort: skip
    CACHE_LOAD_NOISE,
    CHECKPOINT_DIR,
    CRITIC_FILE,
    FLAGS_FILE,
    NATS_PER_BIT,
    RUN_IDENTITY_FILE,
    SHARD_ROWS,
    SUMMARY_FILE,
    TEXT_SUFFIXES,
    TRANSFORM_FILE,
    TRANSFORMS,
    InMemoryRows,
    InputError,
    OutputError,
    StreamedRows,
    TrainingRows,
    acquire_lock,
    build_cache,
    check_resumable,
    checked_array,
    fail,
    fold_indices,
    full_layout,
    in_units,
    input_digest,
    make_transform,
    read_arrays,
    read_row_file,
    read_sidecar,
    require_matplotlib,
    save_curves,
    save_json,
    split_indices,
    stacked_rows,
    ceil_div,
    tensorflow_log_filtered,
    write_atomically,
    write_critic_files,
)
import tensorflow as tf

from mi_layers import (
    ACTIVATIONS,
    FITTED_ACTIVATIONS,
    StatisticsNetwork,
    copula_pair_terms,
    copula_weights,
    training_flops_per_row,
)
from mi_model import (
    ESTIMATORS,
    History,
    MineModel,
    Plan,
    certified_limit,
    chosen_critics_stderr,
    chosen_estimate,
    combined_p_value,
    drawn_permutations,
    every_pair_parts,
    held_out_bounds,
    max_t,
    parts_in_pairings,
    permutation_p_value,
    permuted_sums,
    pooled_bound,
    read_by_view,
    views_at_their_best,
)


# The settings: every default of a run, and what each one belongs to
def setting(default: Any, help: str, group: str, kind: type | None = None, **traits: Any) -> Any:
    """A field of Config: its default and its flag's help and group (model, data, training, output). kind is
    how the flag is read (the default's type unless given); traits are the flag's bounds (above, at_least,
    below), choices and metavar, and the roles that keys are derived from:
      compiled: a setting the compiled critics are built from, part of their cache key (CriticSettings);
      resume:  one a resumed run must share with its checkpoint (Config.identity, run.json);
      adapts:  "unless given" or "at its default": a default the input's size or arrays may change;
      replayed=False: left out of flags.txt (--resume: replaying a run must not resume it)."""
    return dataclasses.field(
        default=default, metadata={"help": help, "group": group, "kind": kind or type(default)} | traits
    )


class Candidate(NamedTuple):
    """A kind of critic: the map of its input columns, its hidden units' activation, its decoupled weight decay."""

    name: str  # as written: TRANSFORM:ACTIVATION or TRANSFORM:ACTIVATION:wdDECAY
    transform: str
    activation: str
    weight_decay: float


@dataclasses.dataclass(frozen=True)
class Config:
    """Every setting of a run with its default: edit a default here, or give --name VALUE on the command line
    (name=VALUE to estimate()); --help lists them all. A Config never changes once made: a default adapted to
    the input's size, or dimensions taken from arrays, make a new one (dataclasses.replace)."""

    # Model: the network T, its candidates and its bound
    hid_width: int = setting(128, "units in each hidden layer of T", "model", above=0, compiled=True, resume=True)
    out_width: int = setting(1, "outputs of T (1: one score per sample)", "model", above=0, compiled=True, resume=True)
    # Candidate critics on every fold; each fold is read at the (candidate, epoch) with the highest mean held-out
    # bound over the other folds. Weight decay (wd) lifts sparse and heavy-tailed dependence; two decays, since
    # the stronger loses additive noise. rank:copula is fitted in closed form, exact on any Gaussian copula
    # (standardize:copula, exact at high MI too, read one heavy-tailed fold at 364 nats: tests/BENCHMARKS.md).
    candidates: tuple[Candidate, ...] = setting(
        "rank:tanh,asinh:relu:wd0.5,asinh:relu:wd2,rank:copula",
        "critics on every fold, each TRANSFORM:ACTIVATION, or TRANSFORM:ACTIVATION:wdDECAY for a decoupled weight "
        "decay (asinh:relu:wd2); trained side by side, but copula critics, fitted in closed form; each fold is read "
        "at the one with the highest held-out bound on the other folds; one candidate: a fixed critic (default: "
        "{default}, or {one_critic} with --cache_dir, a --strategy other than default or no held-out rows)",
        "model",
        kind=Candidate,
        compiled=True,
        resume=True,
    )
    activation: str | None = setting(
        None,
        "of T's hidden layers (relu: the reference's); with --transform, one fixed critic instead of --candidates "
        "(default: as in {one_critic})",
        "model",
        kind=str,
        choices=ACTIVATIONS,
    )
    data_dim: int = setting(10, "columns of x", "model", above=0, compiled=True, resume=True, adapts="at its default")
    latent_dim: int = setting(1, "columns of z", "model", above=0, compiled=True, resume=True, adapts="at its default")
    estimator: str = setting(
        "mine",
        "mine: bias-corrected gradient; mine_biased: the reference's; mine_f: f-divergence bound",
        "model",
        choices=ESTIMATORS,
        compiled=True,
        resume=True,
    )
    ema_rate: float = setting(
        0.01, "weight of each batch in --estimator mine's moving average", "model", at_least=0, below=1, compiled=True
    )
    # Data
    input: str | None = setting(
        "data/input_set.dat",
        "the samples: a row file (.dat, .txt: x, z, x_bar, z_bar per line, or x, z alone; .npy: one such array), a "
        ".npz with arrays x and z, or a .csv/.tsv table with a header (see --x_columns)",
        "data",
    )
    x_columns: str | None = setting(
        None,
        "with a .csv or .tsv --input: the columns of x, as header names, 0-based indices or ranges such as 0-9, "
        "comma-separated (None: the first --data_dim)",
        "data",
        kind=str,
    )
    z_columns: str | None = setting(
        None,
        "with a .csv or .tsv --input: the columns of z, as --x_columns (None: the --latent_dim after x's)",
        "data",
        kind=str,
    )
    data_size: int | None = setting(
        None, "rows expected in --input (None: take the file's count)", "data", kind=int, above=0
    )
    folds: int = setting(
        5,
        "cross-fit over this many folds, every row read once by a critic trained on the other folds: the estimate is "
        "their mean, with a standard error, a 95% interval and a 95% lower confidence bound; 1: one split by "
        "--val_fraction (default: {default}, or 1 with --val_fraction, --cache_dir or a --strategy other than default)",
        "data",
        above=0,
        resume=True,
        adapts="unless given",
    )
    val_fraction: float = setting(
        0.2,
        "with one split: share of rows held out for the estimate; 0 reports the training rows' bound, as the reference",
        "data",
        at_least=0,
        below=1,
        resume=True,
    )
    transform: str | None = setting(
        None,
        "per-column map fitted on the training rows; with --activation, one fixed critic instead of --candidates "
        "(default: as in {one_critic})",
        "data",
        kind=str,
        choices=TRANSFORMS,
    )
    marginal: str = setting(
        "resample",
        "resample: pair each x_bar with another row's z_bar, afresh every epoch; file: the file's marginal half as "
        "it is",
        "data",
        choices=("resample", "file"),
        compiled=True,
        resume=True,
    )
    cache_dir: str | None = setting(
        None,
        "stream the input in bounded memory from a binary cache built here once (None: load it into memory)",
        "data",
        kind=str,
    )
    shuffle_buffer: int = setting(
        262_144, "rows shuffled together when streaming (--cache_dir): whole shards of 65,536 rows", "data", above=0
    )
    eval_permutations: int = setting(
        4,
        "fresh marginal pairings a row of each epoch's held-out reading (the estimate's reading takes many more)",
        "data",
        above=0,
        compiled=True,
    )
    # Training
    batch_size: int = setting(
        256,
        "rows per gradient step (default: {default}, or a fold's training rows where they are fewer)",
        "training",
        above=0,
        resume=True,
        adapts="unless given",
    )
    n_epoch: int = setting(
        100,
        "passes over the training rows (default: {default}, or fewer where {step_budget:,} steps take fewer)",
        "training",
        above=0,
        adapts="unless given",
    )
    lr: float = setting(0.003, "learning rate", "training", above=0)
    lr_schedule: str = setting(
        "cosine",
        "cosine: --lr decays to 0 over the run, so the last epochs' weights settle; constant: the reference's",
        "training",
        choices=("cosine", "constant"),
    )
    optimizer: str = setting(
        "adam", "sgd is the reference's", "training", choices=("adam", "sgd"), compiled=True, resume=True
    )
    # Keras's 0.999 remembers one huge gradient (a heavy-tailed batch, weighted by exp T) for about 1,000 steps
    # and stalls the critic meanwhile.
    adam_beta_2: float = setting(
        0.99,
        "Adam's decay of its squared-gradient average (Keras's default: 0.999)",
        "training",
        at_least=0,
        below=1,
        compiled=True,
    )
    seed: int = setting(0, "seeds the split, the weights and the shuffles", "training", resume=True)
    jit: bool = setting(True, "compile each epoch with XLA", "training", compiled=True)
    strategy: str = setting(
        "default",
        "tf.distribute strategy: one device; all local GPUs (or --cpu_replicas CPU devices); the workers of the "
        "TF_CONFIG environment variable",
        "training",
        choices=("default", "mirrored", "multi_worker"),
    )
    cpu_replicas: int = setting(2, "replicas of --strategy mirrored on a machine without GPUs", "training", above=0)
    resume: bool = setting(
        False, "continue from the latest checkpoint in --output_dir to --n_epoch epochs", "training", replayed=False
    )
    # Output
    output_dir: str | None = setting(
        "results", "where results, checkpoints and flags.txt are written (created if missing)", "output"
    )
    logdir: str | None = setting(None, "TensorBoard event files (None: OUTPUT_DIR/logs)", "output", kind=str)
    checkpoint_every: int = setting(1, "epochs between checkpoints; 0: none", "output", at_least=0)
    checkpoint_seconds: float = setting(
        10,
        "at most one checkpoint per this many seconds, the last epoch's always saved; 0: no limit (a save costs about "
        "as much as a 3,000-row epoch)",
        "output",
        kind=float,
        at_least=0,
    )
    keep_checkpoints: int = setting(3, "how many of the latest checkpoints to keep", "output", above=0)
    plot: bool = setting(False, "write mi_curve.png, the estimate per epoch (needs matplotlib)", "output")
    quiet: bool = setting(False, "print only the final line", "output")
    units: str = setting(
        "nats",
        "of the final line and summary.json's estimates (the per-epoch files stay in nats)",
        "output",
        choices=("nats", "bits"),
    )
    permutations: int = setting(
        999,
        "test independence: re-pair each fold's z with its x this many times, score every pairing with the fold's "
        "critics and report an exact p-value, down to 1 / (this + 1) a fold; 0: no test (default: {default}, or 0 "
        "without held-out rows or with --evaluate_only); the rows must be exchangeable, as independent draws are: "
        "not a time series",
        "output",
        at_least=0,
        below=100_000,
        resume=True,
        adapts="at its default",
    )
    evaluate_only: str | None = setting(
        None,
        f"no training: load a saved {CRITIC_FILE} and report its bound on --input",
        "output",
        kind=str,
        metavar="CRITIC",
    )
    # Not a flag: the defaults left for the input to adapt (the traits "adapts"), worked out from the flags given.
    adaptable: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if isinstance(self.candidates, str):  # as a default or Python code writes them: parsed once, here
            object.__setattr__(self, "candidates", parse_candidates(self.candidates))

    @property
    def critic_settings(self) -> CriticSettings:
        return CriticSettings(**{name: getattr(self, name) for name in CRITIC_SETTINGS})

    @property
    def resampled_latent_dim(self) -> int:
        return self.critic_settings.resampled_latent_dim

    @property
    def input_name(self) -> str:
        """How messages name the input: the file, or the arrays given to estimate()."""
        return self.input if self.input is not None else "the arrays x and z"

    def identity(self) -> dict[str, Any]:
        """The settings a resumed run must share with its checkpoint, as flags give them."""
        return {name: value for name, value in self.as_flags().items() if FLAG_FIELDS[name].metadata.get("resume")}

    def as_flags(self) -> dict[str, Any]:
        """Every flag's value, JSON-ready: the candidates as their text."""
        return {
            name: flag_text(getattr(self, name)) if name == "candidates" else getattr(self, name)
            for name in FLAG_FIELDS
        }


FLAG_FIELDS = {field.name: field for field in dataclasses.fields(Config) if "help" in field.metadata}


CRITIC_SETTINGS = [name for name, field in FLAG_FIELDS.items() if field.metadata.get("compiled")]


class CriticSettings(collections.namedtuple("CriticSettingsFields", CRITIC_SETTINGS)):  # type: ignore[misc]
    """The settings the compiled critics are built from: Config's fields with the trait compiled. make_model,
    make_optimizer and CompiledCritics see nothing else, so no setting reaches a compiled program outside the
    key that caches it (COMPILED_CRITICS)."""

    if TYPE_CHECKING:  # its fields, made at run time from Config's

        def __getattr__(self, name: str) -> Any: ...

    @property
    def resampled_latent_dim(self) -> int:
        """How many trailing columns (z_bar) get fresh pairings; 0 keeps the file's."""
        return self.latent_dim if self.marginal == "resample" else 0

    @property
    def eval_passes(self) -> int:
        """Marginal pairings per held-out evaluation: the file's own marginal half is one."""
        return self.eval_permutations if self.resampled_latent_dim else 1


# Defaults that follow the flags and the input: every value a run takes other than the one given or the default is
# decided here, each adaptation returning a new Config and the start line's notes on it.
ONE_CRITIC = "rank:tanh"  # the critic trained alone where candidates cannot train side by side
# Default runs stop at this many steps per critic, whatever the rows: 100 epochs of a 10,000-row input's 8,000
# training rows. More rows buy fewer epochs, not more time.
STEP_BUDGET = 3200
MIN_HELD_OUT = 4  # held-out rows per fold: two on each half, whose best epochs choose each other's estimate
# Held-out rows each critic is read on, at most: one shard, as streamed runs read them; it reads the bound to about
# 0.005 nats at MI 1 (tests/BENCHMARKS.md).
HELD_OUT_CAP = SHARD_ROWS
TRANSFORM_SAMPLE = 100_000  # training rows the input map is fitted on when streaming
# A candidate stops training, from epoch DROP_FROM_EPOCH on and once each critic has taken DROP_AFTER_STEPS
# steps, when it is behind the leader on every other fold by more than DROP_MARGIN nats (mi_model.Plan; the
# measurements behind the three: tests/BENCHMARKS.md, "Losing candidates stop early").
DROP_MARGIN = 0.05
DROP_FROM_EPOCH = 10
DROP_AFTER_STEPS = 160
ESTIMATE_OUTPUT_DIR = None  # estimate()'s output_dir: None writes nothing anywhere


def resolved(given: dict[str, Any]) -> Config:
    """The Config of the flags given (name -> value; the others take their
    defaults), with the defaults that follow other flags worked out: one
    split where one was asked for (--val_fraction) or where the critics
    cannot share a device; one fixed critic for --transform or --activation,
    or where candidates cannot be chosen or trained side by side; no fitted
    candidate by default with --estimator mine_f (its weights fit the DV
    bound's optimum, not mine_f's); no independence test by default where
    no rows are held out or no critic is trained (--evaluate_only)."""
    config = Config(**given)
    fixed = config.transform is not None or config.activation is not None
    if fixed and "candidates" in given:
        raise InputError(
            "argument --candidates: not together with --transform or --activation (they name one candidate)"
        )
    one_device = config.cache_dir is None and config.strategy == "default"
    folds = given.get("folds", config.folds if one_device and "val_fraction" not in given else 1)
    candidates = config.candidates
    if fixed:
        one_transform, one_activation = ONE_CRITIC.split(":")
        candidates = parse_candidates(f"{config.transform or one_transform}:{config.activation or one_activation}")
    elif "candidates" not in given and (not one_device or (folds == 1 and config.val_fraction == 0)):
        candidates = parse_candidates(ONE_CRITIC)
    elif "candidates" not in given and config.estimator == "mine_f":  # the copula critic fits the DV bound's optimum
        candidates = tuple(candidate for candidate in candidates if candidate.activation not in FITTED_ACTIVATIONS)
    adaptable = {
        name
        for name, field in FLAG_FIELDS.items()
        if (field.metadata.get("adapts") == "unless given" and name not in given)
        or (field.metadata.get("adapts") == "at its default" and getattr(config, name) == field.default)
    }
    no_held_out = folds == 1 and config.val_fraction == 0
    untested = "permutations" in adaptable and (no_held_out or config.evaluate_only is not None)
    config = dataclasses.replace(
        config,
        folds=folds,
        candidates=candidates,
        transform=None,
        activation=None,
        permutations=0 if untested else config.permutations,
        adaptable=frozenset(adaptable),
    )
    if config.folds == 1 and config.val_fraction == 0 and len(config.candidates) > 1:
        raise InputError(
            "argument --candidates: choosing among candidates needs held-out rows (--val_fraction above 0, or --folds)"
        )
    return config


def widths_of_arrays(config: Config, x_width: int, z_width: int) -> Config:
    """data_dim and latent_dim taken from an input that gives x and z apart (arrays, .npz, a table); a width
    given other than at its default must agree with the data's."""
    for flag, variable, width in (("data_dim", "x", x_width), ("latent_dim", "z", z_width)):
        if flag not in config.adaptable and getattr(config, flag) != width:
            fail(
                f"--{flag} {getattr(config, flag)} disagrees with {config.input_name}, whose {variable} has "
                f"{width} columns"
            )
    return dataclasses.replace(config, data_dim=x_width, latent_dim=z_width)


def folds_for_rows(config: Config, rows: int) -> tuple[Config, list[str]]:
    """Fewer folds than the default where the rows cannot give each fold
    MIN_HELD_OUT held-out rows. Refuses an input too small for any
    estimate, saying what it needs."""
    if config.folds == 1 or rows >= MIN_HELD_OUT * config.folds:
        return config, []
    if "folds" not in config.adaptable:
        fail(
            f"{config.input_name} has {rows} rows: too few for --folds {config.folds}, which needs {MIN_HELD_OUT} "
            f"held-out rows per fold ({MIN_HELD_OUT * config.folds} rows)"
        )
    if rows < 2 * MIN_HELD_OUT:
        fail(
            f"{config.input_name} has {rows} rows: an estimate needs at least {2 * MIN_HELD_OUT}, {MIN_HELD_OUT} held "
            "out by each of two folds"
        )
    folds = rows // MIN_HELD_OUT
    note = f"{folds} folds, not {config.folds}: {rows} rows hold out {MIN_HELD_OUT} per fold at most"
    return dataclasses.replace(config, folds=folds), [note]


def batch_and_epochs_for_rows(config: Config, training_rows: int) -> tuple[Config, list[str]]:
    """A default batch cut to a critic's training rows where they are fewer
    (all of them: smaller batches read lower on 300 rows), and fewer default
    epochs where STEP_BUDGET steps take fewer, or one where every candidate
    is fitted, not trained (its reading is the same every epoch)."""
    batch_size, n_epoch, notes = config.batch_size, config.n_epoch, []
    if "batch_size" in config.adaptable and training_rows < batch_size:
        batch_size = training_rows
        notes.append(f"batch {batch_size}, not {config.batch_size}: a critic trains on {training_rows} rows")
    steps = ceil_div(training_rows, batch_size)
    fitted = all(candidate.activation in FITTED_ACTIVATIONS for candidate in config.candidates)
    if "n_epoch" in config.adaptable and fitted and n_epoch > 1:
        n_epoch = 1
        notes.append(f"1 epoch, not {config.n_epoch}: fitted critics do not train")
    elif "n_epoch" in config.adaptable and steps * n_epoch > STEP_BUDGET:
        n_epoch = max(1, ceil_div(STEP_BUDGET, steps))
        notes.append(
            f"{n_epoch} epoch{'s' if n_epoch > 1 else ''}, not {config.n_epoch}: {STEP_BUDGET:,} steps of {steps:,} "
            "an epoch"
        )
    return dataclasses.replace(config, batch_size=batch_size, n_epoch=n_epoch), notes


def held_out_capped(
    splits: list[tuple[np.ndarray, np.ndarray]],
) -> tuple[list[tuple[np.ndarray, np.ndarray]], list[str]]:
    """The splits with each critic's held-out rows cut to HELD_OUT_CAP, and the note saying so."""
    if max(len(held_out) for _, held_out in splits) <= HELD_OUT_CAP:
        return splits, []
    note = f"read on {HELD_OUT_CAP:,} of each critic's {len(splits[0][1]):,} held-out rows"
    return [(training, held_out[:HELD_OUT_CAP]) for training, held_out in splits], [note]


def first_judged_epoch(steps_per_epoch: int) -> int:
    """The first epoch after which the plan may drop a candidate: DROP_FROM_EPOCH, or later where an epoch has
    too few steps for the slower candidates to have caught up."""
    return max(DROP_FROM_EPOCH, ceil_div(DROP_AFTER_STEPS, steps_per_epoch))


def check_input_against_flags(config: Config, total_rows: int, file_width: int) -> None:
    """Ends the run if the input's row count or layout contradicts the flags."""
    if config.data_size is not None and config.data_size != total_rows:
        fail(f"--data_size {config.data_size} disagrees with {config.input_name}, which has {total_rows} rows")
    if file_width == config.data_dim + config.latent_dim and config.marginal == "file":
        fail(
            f"--marginal file needs the marginal half in {config.input_name}, which has the joint half alone "
            f"({file_width} columns)"
        )


def check_split(config: Config, rows: int, training_rows: int, held_out_rows: int) -> None:
    """Ends the run if one split's rows are too few for a batch or an evaluation."""
    if training_rows < config.batch_size:
        fail(
            f"{config.input_name} has {rows} rows, {training_rows} of them for training after --val_fraction "
            f"{config.val_fraction}: fewer than one batch (--batch_size {config.batch_size})"
        )
    if config.val_fraction > 0 and held_out_rows < MIN_HELD_OUT:
        fail(
            f"--val_fraction {config.val_fraction} holds out {held_out_rows} of {rows} rows; at least {MIN_HELD_OUT} "
            "are needed"
        )


# The training step
def make_train_step(
    model: MineModel, optimizer: tf.keras.optimizers.Optimizer, trained: np.ndarray | None = None
) -> Callable[..., tf.Tensor]:
    """The training step of the reference: one gradient step on a batch,
    [critics, rows, columns], for every critic at once; real_rows
    [critics, rows] marks padding rows with 0 (None: every row is real).
    trained [critics] marks with 0 the critics whose weights are fitted,
    not trained: their gradient is 0, and Adam leaves them as they are.

    Returns [critics, 3]: (bound, joint_part, marginal_part) of each
    critic's batch.
    """

    def train_step(batch: tf.Tensor, real_rows: tf.Tensor | None = None) -> tf.Tensor:
        with tf.GradientTape() as tape:
            cost, joint_part, marginal_part = model(batch, real_rows, training=True)
            trained_cost = cost if trained is None else cost * trained
            total_cost = tf.reduce_sum(trained_cost)  # critics share no weight: each gets its own gradient
        gradients = tape.gradient(total_cost, model.trainable_variables)
        optimizer.apply_gradients(zip(gradients, model.trainable_variables, strict=True))
        return tf.stack([-cost, joint_part, marginal_part], axis=1)

    return train_step


# The training loop
def train(config: Config, data: TrainingRows, prepared: PreparedRun, stop: StopRequest) -> Outcome:
    """Epoch after epoch until --n_epoch, a non-finite loss or a stop
    request: each epoch trains every critic still
    training on its rows, reads its bound (and the fitted critics') on its
    held-out rows, logs a line (or a progress bar
    step) and TensorBoard scalars; then the plan reads the held-out bounds
    (mi_model.Plan: the candidates that stop, in a smaller stack from the
    next epoch), and a checkpoint is saved when one is due."""
    history, plan, compiled = prepared.history, prepared.plan, prepared.compiled
    epoch_seconds: list[float] = []
    rows_per_epoch: list[int] = []
    diverged_in = None
    progress = None
    if sys.stdout.isatty() and not config.quiet:
        progress = tf.keras.utils.Progbar(plan.n_epoch, stateful_metrics=["train", "held-out", "rows/s"])
    epochs, halves = data.epochs(plan.epochs, plan.critic_ids), halves_of(prepared.halves, plan.critic_ids)
    compiling = True  # the stack's first epoch: its functions compile, or load from XLA's cache
    train_start = last_save = time.perf_counter()
    while not plan.finished():
        epoch, ids, epoch_start = plan.epochs + 1, plan.critic_ids, time.perf_counter()
        start, end = plan.learning_rate_shares()
        compiled.set_learning_rate(config.lr * start, config.lr * end, data.steps_per_epoch)
        # The epoch's steps, then each critic's bound on its held-out rows, in one compiled call (two would compile
        # and dispatch twice). Loading from XLA's cache logs noise on stderr.
        with tensorflow_log_filtered(CACHE_LOAD_NOISE) if compiling else contextlib.nullcontext():
            training, held_out, rows_trained = compiled.train_epoch(next(epochs), halves, config.seed, epoch, ids)
        if not np.isfinite(training).all():
            # A non-finite loss or gradient poisons every later step of the epoch: nothing of it is kept, and the
            # last checkpoint stays.
            diverged_in = epoch
            break
        fitted_training, fitted_held_out, fitted_ids = prepared.fitted.epoch(plan, config.seed, epoch)
        epoch_seconds.append(time.perf_counter() - epoch_start)
        rows_per_epoch.append(rows_trained)
        history = history.appended(
            np.concatenate([training, fitted_training]), np.concatenate([held_out, fitted_held_out]), ids + fitted_ids
        )
        best = [
            (view, candidate)
            for view, candidate in views_at_their_best(history, plan)
            if not is_fitted(config, candidate)
        ]
        prepared.best_weights.record(compiled.model.statistics_network, ids, plan, best)
        prepared.best_weights.keep_for_test(compiled.model.statistics_network, ids, epoch)
        report_epoch(config, prepared, compiled, plan, progress, history, rows_trained / epoch_seconds[-1], epoch_start)
        plan, compiling = plan.after(history), False
        if plan.critic_ids != ids:  # candidates dropped: their critics are done, the others go on in a smaller stack
            compiled = smaller_stack(config, prepared, data, compiled, ids, plan)
            epochs, halves = data.epochs(epoch, plan.critic_ids), halves_of(prepared.halves, plan.critic_ids)
            compiling = True
        if prepared.checkpoint and checkpoint_due(config, epoch, stop.signal is not None, last_save, plan):
            prepared.checkpoint.save(epoch, history, compiled)
            last_save = time.perf_counter()
        if stop.signal is not None:
            break
    prepared.summaries.close()
    status = "diverged" if diverged_in else "interrupted" if stop.signal is not None else "completed"
    train_seconds = time.perf_counter() - train_start
    return Outcome(history, plan, compiled, epoch_seconds, rows_per_epoch, diverged_in, train_seconds, status)


def smaller_stack(
    config: Config, prepared: PreparedRun, data: TrainingRows, compiled: CompiledCritics, ids: list[int], plan: Plan
) -> CompiledCritics:
    """The critics plan.critic_ids in a stack of their own, continuing from
    `compiled` (whose critics are ids): the critics the plan dropped are
    done, and their models are saved now (they train no more)."""
    kept = plan.critic_ids
    smaller = compiled_critics(
        critic_settings_of(config, plan.trained_candidates), len(kept), compiled.strategy, config.seed
    )
    smaller.take_over(compiled, [ids.index(critic) for critic in kept])
    if prepared.output_dirs:
        save_stopped_critics(config, prepared, data, compiled, ids, [critic for critic in ids if critic not in kept])
    return smaller


def save_stopped_critics(
    config: Config, prepared: PreparedRun, data: TrainingRows, stack: CompiledCritics, ids: list[int], saved: list[int]
) -> None:
    """The model and input map of each critic `saved` of a stack whose critics are ids, in the critic's folder."""
    for position, critic in enumerate(ids):
        if critic in saved:
            model = stack.model if stack.critics == 1 else stack.model.critic(position)
            transform = config.candidates[critic % len(config.candidates)].transform
            write_critic_files(prepared.output_dirs[critic], model, transform, data.transform_parameters[critic])


def halves_of(halves: tuple[tf.Tensor, tf.Tensor] | None, critic_ids: list[int]) -> tuple[tf.Tensor, tf.Tensor] | None:
    """The held-out halves (stacked_halves) of the critics critic_ids."""
    return None if halves is None else (tf.gather(halves[0], critic_ids), tf.gather(halves[1], critic_ids))


def critic_settings_of(config: Config, candidates: list[int]) -> CriticSettings:
    """The settings of a stack of these candidates' critics. Fitted critics alone take no more hidden units than
    their log ratio needs (a quadratic form of rank 2 min(data_dim, latent_dim) at most: copula_weights), which
    makes reading them cheaper (2 units, not 128, at 10 x 1)."""
    chosen = tuple(config.candidates[candidate] for candidate in candidates)
    hid_width = config.hid_width
    if all(candidate.activation in FITTED_ACTIVATIONS for candidate in chosen):
        hid_width = min(hid_width, 2 * min(config.data_dim, config.latent_dim))
    # CriticSettings's fields are made at run time, out of mypy's sight
    return config.critic_settings._replace(candidates=chosen, hid_width=hid_width)  # type: ignore[call-arg]


def checkpoint_due(config: Config, epoch: int, stopping: bool, last_save: float, plan: Plan) -> bool:
    """Whether an epoch ends with a checkpoint: every checkpoint_every epochs,
    at most one per checkpoint_seconds, and always after the last epoch or a
    stop request; never with checkpoint_every 0."""
    if not config.checkpoint_every:
        return False
    if plan.finished() or stopping:
        return True
    return epoch % config.checkpoint_every == 0 and time.perf_counter() - last_save >= config.checkpoint_seconds


def report_epoch(
    config: Config,
    prepared: PreparedRun,
    compiled: CompiledCritics,
    plan: Plan,
    progress: tf.keras.utils.Progbar | None,
    history: History,
    rows_per_second: float,
    epoch_start: float,
) -> None:
    """An epoch's TensorBoard scalars, and its progress bar step or line,
    from the means of the critics that trained."""
    epoch = len(history)
    bound, joint_part, marginal_part, held_out_bound = (
        trained_mean(figures[-1]) for figures in (history.training, history.joint, history.marginal, history.held_out)
    )
    scalars = {"estimate/training_rows": bound, "parts/joint": joint_part, "parts/marginal": marginal_part}
    if prepared.halves is not None:
        scalars["estimate/held_out"] = held_out_bound
    if history.held_out.shape[1] > 1:
        scalars |= {f"folds/held_out_{k + 1}": value for k, value in enumerate(history.held_out[-1]) if value == value}
        scalars |= {f"candidates/{name.name}": float(c in plan.candidates) for c, name in enumerate(config.candidates)}
    scalars |= {"speed/rows_per_second": rows_per_second, "learning_rate": float(compiled.optimizer.learning_rate)}
    prepared.summaries.write(epoch, scalars)
    if progress:
        progress.update(epoch, [("train", bound), ("held-out", held_out_bound), ("rows/s", rows_per_second)])
    elif not config.quiet:
        print(
            f"epoch {epoch:4d}/{plan.n_epoch}  train {bound:8.4f}  held-out {held_out_bound:8.4f}  "
            f"joint {joint_part:8.4f}  marginal {marginal_part:8.4f}  {time.perf_counter() - epoch_start:6.2f} s  "
            f"{rows_per_second:9.0f} rows/s  {rows_per_second * prepared.flops_per_row / 1e9:5.1f} GFLOP/s",
            flush=True,
        )


def trained_mean(values: np.ndarray) -> float:
    """The mean over the critics that trained (the others are NaN); NaN if none did."""
    trained = values[~np.isnan(values)]
    return float(trained.mean()) if trained.size else float("nan")


# The compiled critics: the model, its optimizer and the TensorFlow functions that train and read them
def make_model(settings: CriticSettings, critics: int, seed: int | None = None) -> MineModel:
    """The run's model, critic f * candidates + c being fold f's candidate
    c; with a seed, its initial weights are those of the seed."""
    activations = [candidate.activation for candidate in settings.candidates] * (critics // len(settings.candidates))
    return MineModel(
        settings.data_dim,
        settings.latent_dim,
        settings.hid_width,
        settings.out_width,
        settings.estimator,
        settings.ema_rate,
        activations[0] if len(set(activations)) == 1 else activations,
        critics,
        seed,
    )


class EpochSchedule(tf.keras.optimizers.schedules.LearningRateSchedule):
    """Each step's learning rate, computed in the graph from variables that
    the host sets before every epoch (set): linear from `start` at step
    first_step to `end` `steps` steps later. Every schedule (a cosine over
    any number of epochs, a constant) and rate then runs in one compiled
    program, and XLA's disk cache holds one program, not one per run
    length (the Keras cosine made the length a constant of the program)."""

    def __init__(self) -> None:
        self.first_step = tf.Variable(0, dtype=tf.int64, trainable=False)
        self.steps = tf.Variable(1.0, trainable=False)
        self.start = tf.Variable(0.0, trainable=False)
        self.end = tf.Variable(0.0, trainable=False)

    def __call__(self, step: Any) -> tf.Tensor:
        progress = tf.cast(tf.cast(step, tf.int64) - self.first_step, tf.float32) / self.steps
        return self.start + (self.end - self.start) * tf.clip_by_value(progress, 0.0, 1.0)

    def set(self, first_step: int, steps: int, start: float, end: float) -> None:
        for variable, value in (
            (self.first_step, first_step),
            (self.steps, steps),
            (self.start, start),
            (self.end, end),
        ):
            variable.assign(value)

    def get_config(self) -> dict:
        return {}


def make_optimizer(
    settings: CriticSettings, schedule: EpochSchedule, critics: int = 1
) -> tf.keras.optimizers.Optimizer:
    """The optimizer of `critics` critics, critic k being candidate k % candidates, its learning rate the
    schedule's. Each candidate's weight decay is decoupled, as in AdamW: Keras multiplies every weight by
    1 - decay * learning rate each step, and a [critics, 1, 1] array of decays broadcasts over the stacked
    kernels and biases, one per critic."""
    decays = [candidate.weight_decay for candidate in settings.candidates]
    weight_decay = None
    if any(decays):
        per_critic = [decays[k % len(decays)] for k in range(critics)]
        weight_decay = per_critic[0] if critics == 1 else np.array(per_critic, np.float32).reshape(-1, 1, 1)
    if settings.optimizer == "sgd":
        return tf.keras.optimizers.SGD(schedule, weight_decay=weight_decay)
    return tf.keras.optimizers.Adam(schedule, beta_2=settings.adam_beta_2, weight_decay=weight_decay)


class CompiledCritics:
    """The critics' model and optimizer, built from CriticSettings on a strategy,
    and the TensorFlow functions that train and read them, each traced (and
    compiled with XLA when settings.jit) on first use: one or two calls an
    epoch, whatever the number of critics. The functions take the ids of
    the critics in the stack: a critic's random draws follow from its id
    (mi_data_processing.critic_draws), whichever others share its stack."""

    def __init__(self, settings: CriticSettings, critics: int, strategy: tf.distribute.Strategy, seed: int | None):
        self.settings, self.critics, self.strategy = settings, critics, strategy
        self.replicated = strategy.num_replicas_in_sync > 1
        with strategy.scope():
            self.model = make_model(settings, critics, seed)
            self.schedule = EpochSchedule()
            self.optimizer = make_optimizer(settings, self.schedule, critics)
            self.optimizer.build(self.model.trainable_variables)
        self.initial_optimizer_state = [variable.numpy() for variable in self.optimizer.variables]
        fitted = [candidate.activation in FITTED_ACTIVATIONS for candidate in settings.candidates]
        trained = np.array([not fitted[k % len(fitted)] for k in range(critics)], np.float32) if any(fitted) else None
        self.train_step = make_train_step(self.model, self.optimizer, trained)
        # Each function of these critics is a partial of its method, not the bound method: TensorFlow counts
        # traces per code object, unless the function has none, and warned of retracing on stderr after a few
        # configurations of a sweep had each traced once.
        self.compiled_steps = tf.function(
            functools.partial(CompiledCritics.steps, self), jit_compile=settings.jit, autograph=False
        )
        # replicated: the collective operations of the replicas cannot be compiled with XLA in this loop
        self.replicated_steps = tf.function(functools.partial(CompiledCritics.steps_on_replicas, self), autograph=False)
        self.read_held_out = tf.function(functools.partial(CompiledCritics.held_out_bounds, self), autograph=False)

    def set_learning_rate(self, start: float, end: float, steps: int) -> None:
        """The learning rate of the next `steps` steps: from start to end, linearly."""
        self.schedule.set(int(self.optimizer.iterations.numpy()), steps, start, end)

    def train_epoch(
        self,
        chunks: Iterable[tuple[tf.Tensor, tf.Tensor]],
        halves: tuple[tf.Tensor, tf.Tensor] | None,
        seed: int,
        epoch: int,
        critic_ids: list[int],
    ) -> tuple[np.ndarray, np.ndarray, int]:
        """One epoch of the critics critic_ids: the steps of every chunk (one
        in memory, or one per CHUNK_ROWS rows; one per window when
        streamed), the call of the last chunk also reading each critic's
        bound on its held-out halves. Returns the row-weighted means
        [critics, 3] of (bound, joint_part, marginal_part) over the epoch's
        steps, the held-out bounds [critics, 2] (NaN without held-out rows)
        and the rows trained, all critics together."""
        seed, epoch, ids = tf.constant(seed, tf.int64), tf.constant(epoch, tf.int64), tf.constant(critic_ids, tf.int32)
        totals, rows_trained, held_out = np.zeros((self.critics, 3)), 0, None
        chunks = iter(chunks)
        upcoming: tuple[tf.Tensor, tf.Tensor] | None = next(chunks)
        while upcoming is not None:
            (batches, batch_rows), upcoming = upcoming, next(chunks, None)
            if self.replicated:
                means = self.replicated_steps(split_for_replicas(self.strategy, batches), batch_rows, batches.shape[2])
            elif upcoming is None and halves is not None:  # the epoch's last chunk: read in the same call
                means, held_out = self.compiled_steps(batches, batch_rows, halves, seed, epoch, ids)
            else:
                means = self.compiled_steps(batches, batch_rows)
            rows = int(np.sum(batch_rows))
            totals += rows * means.numpy()
            rows_trained += rows
        if held_out is None:
            held_out = (
                self.read_held_out(halves, seed, epoch, ids)
                if halves is not None
                else np.full((self.critics, 2), np.nan)
            )
        return totals / rows_trained, np.asarray(held_out, dtype=np.float64), rows_trained * self.critics

    def steps(
        self,
        batches: tf.Tensor,
        batch_rows: tf.Tensor,
        halves: tuple | None = None,
        seed: Any = None,
        epoch: Any = None,
        critic_ids: Any = None,
    ) -> tf.Tensor | tuple[tf.Tensor, tf.Tensor]:
        """Every step of a chunk, batches [critics, steps, batch_size,
        columns] of which the first batch_rows[step] rows of each step are
        real, in one graph loop: a plain tf.while_loop, so that no AutoGraph
        conversion costs the first epoch about 0.5 s. Returns the row-weighted
        means [critics, 3] of (bound, joint_part, marginal_part); given the
        held-out halves (and the critics' ids), also the bounds on them
        [critics, 2]."""
        critics, steps, batch_size = batches.shape[:3]

        def one_step(step, totals):
            real_rows = tf.tile(tf.cast(tf.range(batch_size) < batch_rows[step], tf.float32)[None], [critics, 1])
            figures = self.train_step(batches[:, step], real_rows)
            return step + 1, totals + tf.cast(batch_rows[step], tf.float32) * figures

        _, totals = tf.while_loop(lambda step, _: step < steps, one_step, (tf.constant(0), tf.zeros([critics, 3])))
        means = totals / tf.cast(tf.reduce_sum(batch_rows), tf.float32)
        return means if halves is None else (means, self.held_out_bounds(halves, seed, epoch, critic_ids))

    def steps_on_replicas(self, shares: Any, batch_rows: tf.Tensor, batch_size: int) -> tf.Tensor:
        """steps for several replicas (one critic): each step runs on every
        replica (strategy.run) on its share of the global batch
        (split_for_replicas), padding rows masked as in steps. The bound is
        that of the whole global batch (MineModel.cross_replica_cost), so the
        result is the same as on one device."""
        steps = self.strategy.experimental_local_results(shares)[0].shape[1]

        def one_step(step, totals):
            def replica_step(replica_batches):
                context = tf.distribute.get_replica_context()
                first_row = context.replica_id_in_sync_group * batch_size // context.num_replicas_in_sync
                real_rows = tf.cast(first_row + tf.range(replica_batches.shape[2]) < batch_rows[step], tf.float32)[None]
                return self.train_step(replica_batches[:, step], real_rows)

            figures = self.strategy.experimental_local_results(self.strategy.run(replica_step, args=(shares,)))[0]
            return step + 1, totals + tf.cast(batch_rows[step], tf.float32) * figures

        _, totals = tf.while_loop(lambda step, _: step < steps, one_step, (tf.constant(0), tf.zeros([1, 3])))
        return totals / tf.cast(tf.reduce_sum(batch_rows), tf.float32)

    def held_out_bounds(self, halves: tuple[tf.Tensor, tf.Tensor], seed: Any, epoch: Any, critic_ids: Any) -> tf.Tensor:
        """Each critic's bound on each of its held-out halves, [critics, 2]."""
        settings = self.settings
        return held_out_bounds(
            self.model,
            halves,
            seed,
            epoch,
            settings.eval_passes,
            settings.resampled_latent_dim,
            critic_ids,
        )

    def reset(self, initial_weights: list[np.ndarray]) -> None:
        """Back to the start of a run: the given weights, a fresh optimizer."""
        self.model.set_weights(initial_weights)
        for variable, value in zip(self.optimizer.variables, self.initial_optimizer_state, strict=True):
            variable.assign(value)

    def take_over(self, previous: CompiledCritics, kept: list[int]) -> None:
        """Continue the critics at positions `kept` of a larger stack: their
        weights, moving averages and optimizer state, as they stand (the
        variables of both come in the same order, each critic's on the
        first axis; a one-critic stack drops that axis)."""
        pairs = [
            *zip(previous.model.weights, self.model.weights, strict=True),
            *zip(previous.optimizer.variables, self.optimizer.variables, strict=True),
        ]
        for old, new in pairs:
            value = old.numpy()
            new.assign(value if value.shape == tuple(new.shape) else value[kept].reshape(new.shape))


# Every run in a process (notebooks, sweeps, the benchmarks) reuses the CompiledCritics of the settings it has
# seen: a new model would trace and compile its functions anew, and TensorFlow keeps every compiled function for
# the life of the process (about 80 MB a run; tests/BENCHMARKS.md, "Many runs in one process").
COMPILED_CRITICS: dict[tuple[CriticSettings, int], CompiledCritics] = {}


def compiled_critics(
    settings: CriticSettings, critics: int, strategy: tf.distribute.Strategy, seed: int
) -> CompiledCritics:
    """The CompiledCritics of (settings, critics), with this seed's initial
    weights, made or taken from COMPILED_CRITICS."""
    if strategy.num_replicas_in_sync > 1:  # a replicated model's variables belong to its strategy: not kept
        return CompiledCritics(settings, critics, strategy, seed)
    key = (settings, critics)
    if key not in COMPILED_CRITICS:
        COMPILED_CRITICS[key] = CompiledCritics(settings, critics, strategy, seed)
    else:  # made for another seed: this seed's initial weights, a fresh optimizer
        COMPILED_CRITICS[key].reset(make_model(settings, critics, seed).get_weights())
    return COMPILED_CRITICS[key]


def make_strategy(config: Config) -> tf.distribute.Strategy:
    """The tf.distribute strategy of --strategy. Called before TensorFlow
    runs anything, since the CPU can only be split into logical devices
    before its runtime starts."""
    if config.strategy == "default":
        return tf.distribute.get_strategy()
    if config.strategy == "multi_worker":
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
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * config.cpu_replicas)
    except RuntimeError:
        pass  # the runtime has started already; fine if it was split so before
    devices = tf.config.list_logical_devices("CPU")
    if len(devices) < config.cpu_replicas:
        fail(
            f"--cpu_replicas {config.cpu_replicas}: TensorFlow started with {len(devices)} CPU device(s) and cannot "
            "split it now"
        )
    return tf.distribute.MirroredStrategy([device.name for device in devices[: config.cpu_replicas]])


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes the run's results: always, but for the
    workers other than the first of a multi-worker cluster."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    return resolver.task_type == "chief" or (resolver.task_type == "worker" and resolver.task_id == 0)


def split_for_replicas(strategy: tf.distribute.Strategy, batches: tf.Tensor) -> Any:
    """Each replica's share of every global batch of an epoch (one critic):
    rows [r * B / R, (r + 1) * B / R) of each batch for replica r of R.
    Every worker builds the same epoch from (seed, epoch) and keeps its own
    replicas' shares, so no rows travel between workers."""

    def share(context):
        replica, replicas, size = context.replica_id_in_sync_group, context.num_replicas_in_sync, batches.shape[2]
        return batches[:, :, replica * size // replicas : (replica + 1) * size // replicas]

    return strategy.experimental_distribute_values_from_function(share)


# A prepared run: its compiled critics, the weights its estimate reads, checkpoint and TensorBoard events
REREAD_PAIRS = 2**14  # marginal pairs of a held-out half on which the estimate reads a chosen trained critic


def reread_shifts(half_rows: list[int]) -> int:
    """How many pairings (cyclic shifts 1, 2, ...) of held-out halves of these sizes the estimate reads the
    chosen trained critics on, all at once: every pair where REREAD_PAIRS allows (up to 128 rows a half)."""
    return max(1, min(min(half_rows) - 1, REREAD_PAIRS // max(half_rows)))


class BestWeights:
    """Each trained critic's weights at the epoch its view would choose it (mi_model.views_at_their_best), a
    slot per (view, candidate): the estimate reads the critic each view chose again there, on up to
    REREAD_PAIRS pairs of each half instead of the per-epoch 4 pairings a row, whose log mean exp misses the
    rare large terms at high MI and overshoots (tests/BENCHMARKS.md, "Measured on 2026-12-06: one direction").
    With --permutations, a slot more per critic holds its weights at the epoch the independence test reads
    (test_epoch). Checkpoints hold them all (variables, updated as a checkpoint is saved)."""

    def __init__(self, one_critic: list[np.ndarray], slots: int, test_critics: int = 0, test_epoch: int = 0):
        self.values = [np.zeros((slots + test_critics, *weight.shape), np.float32) for weight in one_critic]
        self.epochs = np.zeros(slots + test_critics, np.int64)  # the epoch of each slot's weights; 0: none yet
        self.variables = [tf.Variable(value) for value in [*self.values, self.epochs]]
        self.first_test_slot, self.test_epoch = slots, test_epoch

    def keep(self, slot: int, weights: list[np.ndarray], epoch: int) -> None:
        for value, weight in zip(self.values, weights, strict=True):
            value[slot] = weight
        self.epochs[slot] = epoch

    def keep_for_test(self, network: StatisticsNetwork, critic_ids: list[int], epoch: int) -> None:
        """The weights of every critic of `network` (ids critic_ids) if the test reads this epoch."""
        if epoch == self.test_epoch and self.first_test_slot < len(self.epochs):
            stack_values = network.get_weights()
            for position, critic in enumerate(critic_ids):
                self.keep(self.first_test_slot + critic, network.critic_weights(position, stack_values), epoch)

    def test_weights(self, critic: int) -> list[np.ndarray]:
        """The critic's weights at the test's epoch (keep_for_test kept them)."""
        slot = self.first_test_slot + critic
        assert self.epochs[slot] == self.test_epoch, "the test reads critics at the epoch they were kept"
        return [value[slot] for value in self.values]

    def record(self, network: StatisticsNetwork, critic_ids: list[int], plan: Plan, best: list[tuple[int, int]]):
        """The weights of the critics of `network` (ids critic_ids) that views have at their best this epoch
        (best: their (view, candidate) pairs), in their slots."""
        stack_values = network.get_weights() if best else []
        for view, candidate in best:
            critic, _ = read_by_view(plan, view, candidate)
            if critic in critic_ids:
                weights = network.critic_weights(critic_ids.index(critic), stack_values)
                self.keep(view * plan.per_fold + candidate, weights, plan.epochs + 1)

    def keep_in_variables(self) -> None:
        for variable, value in zip(self.variables, [*self.values, self.epochs], strict=True):
            variable.assign(value)

    def take_from_variables(self) -> None:
        *self.values, self.epochs = [variable.numpy() for variable in self.variables]

    def bounds(
        self, config: Config, plan: Plan, chosen: list[tuple[int, int]], held_out_rows: list[np.ndarray]
    ) -> dict[int, float]:
        """view -> the bound of the critic the view chose (chosen: (view, candidate) pairs of trained
        candidates), at its slot's weights, on its held-out rows (both halves' mean with folds; one split: the
        half the view reads) over the same reread_shifts pairings of every half read, pooled. The critics of
        one candidate are read at once, side by side in one stack. None of a view whose slot is empty, and
        none at all where the marginal half is the file's own (one pairing)."""
        chosen = [(view, candidate) for view, candidate in chosen if self.epochs[view * plan.per_fold + candidate]]
        if not chosen or not config.resampled_latent_dim:
            return {}
        critics = {view: read_by_view(plan, view, candidate) for view, candidate in chosen}
        half_rows = [len(half) for critic, _ in critics.values() for half in held_out_halves(held_out_rows[critic])]
        pairings = [tf.fill([2 * len(chosen)], shift) for shift in range(1, reread_shifts(half_rows) + 1)]
        readings = {}
        for candidate in sorted({candidate for _, candidate in chosen}):
            views = [view for view, chosen_candidate in chosen if chosen_candidate == candidate]
            model = make_model(critic_settings_of(config, [candidate]), len(views))
            for position, view in enumerate(views):
                weights = [value[view * plan.per_fold + candidate] for value in self.values]
                model.statistics_network.set_critic_weights(position, weights)
            halves = stacked_halves([held_out_rows[critics[view][0]] for view in views])
            assert halves is not None  # the estimate reads held-out rows
            shifts = [pairing[: 2 * len(views)] for pairing in pairings]
            parts = parts_in_pairings(model, halves, shifts, config.resampled_latent_dim)
            for view, bound in zip(views, pooled_bound(*parts, config.estimator).numpy(), strict=True):
                readings[view] = float(bound.mean() if critics[view][1] is None else bound[critics[view][1]])
        return readings


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """A run's checkpoints: the weights and optimizer of the critics still
    training, the epochs completed, the history so far and the BestWeights
    the estimate will read, all a resumed run
    needs to continue as if never stopped: the shuffles are fixed by (seed,
    epoch), so the epoch stands for the random state, and the plan's
    decisions follow from the history (Plan.after, replayed)."""

    manager: tf.train.CheckpointManager
    checkpoint: tf.train.Checkpoint
    epoch: tf.Variable
    history: tf.Variable  # History.figures, [epochs, critics * fields]
    best_weights: BestWeights

    def save(self, epoch: int, history: History, compiled: CompiledCritics) -> None:
        self.checkpoint.critics = tf.train.Checkpoint(model=compiled.model, optimizer=compiled.optimizer)
        self.best_weights.keep_in_variables()
        self.epoch.assign(epoch)
        self.history.assign(history.figures().reshape(len(history), -1))
        self.manager.save(checkpoint_number=epoch)


class EpochSummaries:
    """A run's TensorBoard event file, none without a log directory: the
    flags once, then each epoch's scalars as one serialized Summary written
    eagerly, a fraction of a millisecond, and no tf.function to retrace in
    the next run of the process."""

    def __init__(self, logdir: str | None, flags_text: str, first_epoch: int):
        self.writer = tf.summary.create_file_writer(logdir) if logdir else None
        if self.writer:
            with self.writer.as_default():
                tf.summary.text("hyperparameters", "```\n" + flags_text + "```", step=first_epoch)

    def write(self, epoch: int, scalars: dict[str, float]) -> None:
        if self.writer:
            values = [tf.compat.v1.Summary.Value(tag=tag, simple_value=value) for tag, value in scalars.items()]
            with self.writer.as_default(step=epoch):
                tf.summary.experimental.write_raw_pb(tf.compat.v1.Summary(value=values).SerializeToString())

    def close(self) -> None:
        if self.writer:
            self.writer.close()


@dataclasses.dataclass(frozen=True)
class PreparedRun:
    """What the training loop and the outputs need of a prepared run."""

    compiled: CompiledCritics  # the critics the plan trains at first
    plan: Plan
    output_dirs: list[str]  # each critic's, fold-major (critic f * candidates + c); none without --output_dir
    truth: float | None  # the input's true MI, where its description gives one
    halves: tuple[tf.Tensor, tf.Tensor] | None  # stacked_halves of every critic's held-out rows
    first_epoch: int  # epochs completed before this process: those of a resumed checkpoint
    history: History
    checkpoint: Checkpoint | None
    summaries: EpochSummaries
    flops_per_row: int
    adapted: list[str]  # the start line's notes on the defaults adapted to the input
    fitted: FittedCritics
    best_weights: BestWeights


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What the training loop did: the history, the plan and the critics at
    its end, the seconds and rows of each epoch this process trained, and how
    it ended."""

    history: History
    plan: Plan
    compiled: CompiledCritics
    epoch_seconds: list[float]
    rows_per_epoch: list[int]
    diverged_in: int | None
    train_seconds: float
    status: str  # completed, interrupted or diverged


def prepare(
    config: Config, strategy: tf.distribute.Strategy, data: TrainingRows, adapted: list[str], arrays: Any = None
) -> PreparedRun:
    """Everything before the first epoch: directories, the plan, the
    compiled critics, the checkpoint (restored with --resume), TensorBoard
    and the start line, with the notes on the defaults adapted to the
    input. Without an output directory (estimate()'s default) nothing is
    written: no checkpoint, and TensorBoard only to an explicit --logdir."""
    output_dirs, identity = output_folders(config, data.critics, arrays)
    drop = DROP_MARGIN, first_judged_epoch(data.steps_per_epoch)
    plan = Plan.start(config.folds, len(config.candidates), config.n_epoch, config.lr_schedule, *drop, apart(config))
    history = History.empty(data.critics)
    if config.resume:  # the plan's decisions replayed on the saved history: the critics that were still training
        history = saved_history(config, data.critics)
        for epochs in range(1, len(history) + 1):
            plan = plan.after(history.first(epochs))
    settings = critic_settings_of(config, plan.trained_candidates)
    compiled = compiled_critics(settings, len(plan.critic_ids), strategy, config.seed)
    halves = stacked_halves(data.held_out_rows)
    fitted = fit_critics(config, data, compiled, plan, halves)
    views = config.folds if config.folds > 1 else 2
    best_weights = BestWeights(
        compiled.model.statistics_network.critic_weights(0),
        views * len(config.candidates),
        data.critics if config.permutations else 0,
        test_epoch(config, plan),
    )
    checkpoint = open_checkpoint(config, compiled, best_weights, identity, data.critics)
    logdir = config.logdir or (os.path.join(config.output_dir, "logs") if config.output_dir is not None else None)
    prepared = PreparedRun(
        compiled=compiled,
        plan=plan,
        output_dirs=output_dirs,
        truth=(read_sidecar(config.input) or {}).get("true_mi_nats") if config.input is not None else None,
        halves=halves,
        first_epoch=len(history),
        history=history,
        checkpoint=checkpoint,
        summaries=EpochSummaries(logdir, flags_file_text(config), len(history)),
        flops_per_row=training_flops_per_row(config.data_dim + config.latent_dim, config.hid_width, config.out_width),
        adapted=adapted,
        fitted=fitted,
        best_weights=best_weights,
    )
    if not config.quiet:
        print(start_line(config, prepared, data))
    return prepared


FITTED_TRAINING_ROWS = 1024  # training rows on whose every pair a fitted critic's training figures are read


def apart(config: Config) -> frozenset[int]:
    """The candidates read apart from the trained stack: the fitted ones, where some candidate trains (in the
    trained stack they would cost their share of every step; tests/BENCHMARKS.md, "Why the code is as it is").
    A run of fitted candidates alone has them in its one stack, their gradient masked (make_train_step)."""
    fitted = frozenset(c for c, candidate in enumerate(config.candidates) if candidate.activation in FITTED_ACTIVATIONS)
    return fitted if len(fitted) < len(config.candidates) else frozenset()


@dataclasses.dataclass(frozen=True)
class FittedCritics:
    """The critics of the fitted candidates (copula): weights in closed form from each one's training rows, the
    same every epoch, and so their figures on the training rows and their every-pair readings, made once."""

    stack: CompiledCritics  # the stack that holds them: their own (read, never trained), or the trained one
    critic_ids: list[int]  # the critics of that stack
    training: dict[int, np.ndarray]  # (bound, joint part, marginal part) on FITTED_TRAINING_ROWS, every pair
    every_pair: dict[int, np.ndarray]  # the bounds on the held-out halves A and B, every pair
    halves: tuple[tf.Tensor, tf.Tensor] | None  # the stack's critics' held-out halves, gathered once

    def epoch(self, plan: Plan, seed: int, epoch: int) -> tuple[np.ndarray, np.ndarray, list[int]]:
        """(training [critics, 3], held_out [critics, 2], their ids) of the critics plan.apart_ids this epoch: on
        the held-out halves, as many pairings a row as a trained critic's reading draws, so that the choice
        compares readings alike (tests/BENCHMARKS.md, "Why the code is as it is"); this stack's critics are read
        all at once, those the plan dropped left out."""
        ids = plan.apart_ids
        if not ids or self.halves is None:
            return np.zeros((0, 3)), np.zeros((0, 2)), []
        at = (tf.constant(seed, tf.int64), tf.constant(epoch, tf.int64), tf.constant(self.critic_ids, tf.int32))
        held_out = self.stack.read_held_out(self.halves, *at).numpy()
        positions = [self.critic_ids.index(critic) for critic in ids]
        return np.array([self.training[critic] for critic in ids]), held_out[positions], ids


def fit_critics(
    config: Config,
    data: TrainingRows,
    compiled: CompiledCritics,
    plan: Plan,
    halves: tuple[tf.Tensor, tf.Tensor] | None,
) -> FittedCritics:
    """The weights of each critic of a fitted candidate from its training rows (a resumed run makes the same
    again), in a stack of their own where plan.apart has them, else in the trained stack `compiled`; and their
    figures on training rows and bounds on held-out halves, on every pair, once: their weights never change.
    halves: every critic's held-out halves (stacked_halves), of which the stack's are kept for its readings."""
    stack, critic_ids = compiled, plan.critic_ids
    if plan.apart:
        critic_ids = plan.critics_of(sorted(plan.apart))
        settings = critic_settings_of(config, sorted(plan.apart))
        stack = compiled_critics(settings, len(critic_ids), compiled.strategy, config.seed)
        stack.model(tf.zeros([len(critic_ids), 1, 2 * stack.model.sample_width]))  # built, as saving expects
    x_columns, z_columns = slice(0, config.data_dim), slice(config.data_dim, config.data_dim + config.latent_dim)

    def parts(weights: list[np.ndarray], rows: np.ndarray) -> np.ndarray:  # (bound, joint part, marginal part)
        joint_part, marginal_part = every_pair_parts(
            *copula_pair_terms(weights, rows[:, x_columns], rows[:, z_columns])
        )
        return np.array([joint_part - marginal_part, joint_part, marginal_part])

    training, every_pair = {}, {}
    for position, critic in enumerate(critic_ids):
        if not is_fitted(config, critic):
            continue
        sample = data.training_sample(critic)
        weights = copula_weights(sample, config.data_dim, stack.settings.hid_width, config.out_width)
        stack.model.statistics_network.set_critic_weights(position, weights)
        training[critic] = parts(weights, sample[:FITTED_TRAINING_ROWS])
        if len(data.held_out_rows[critic]) >= 2:
            every_pair[critic] = np.array(
                [parts(weights, half)[0] for half in held_out_halves(data.held_out_rows[critic])]
            )
    return FittedCritics(stack, critic_ids, training, every_pair, halves_of(halves, critic_ids))


def is_fitted(config: Config, critic: int) -> bool:
    """Whether the critic's candidate is fitted, not trained (mi_layers.FITTED_ACTIVATIONS)."""
    return config.candidates[critic % len(config.candidates)].activation in FITTED_ACTIVATIONS


def output_folders(config: Config, critics: int, arrays: Any) -> tuple[list[str], dict[str, Any] | None]:
    """(each critic's output folder, made, the run's identity): flags.txt
    written, and with --resume the identity checked against the
    checkpoint's. Without an output directory nothing is: ([], None)."""
    output_dir = config.output_dir
    if output_dir is None:
        return [], None
    identity = {"input_sha256": input_digest(config.input, arrays), **config.identity()}
    if config.resume:
        check_resumable(os.path.join(output_dir, CHECKPOINT_DIR), identity, config.input_name, config.input is not None)
    folders = [""] if critics == 1 else critic_folders(config.candidates, critics // len(config.candidates))
    output_dirs = [os.path.join(output_dir, folder) if folder else output_dir for folder in folders]
    for folder in output_dirs:
        os.makedirs(folder, exist_ok=True)
    write_atomically(os.path.join(output_dir, FLAGS_FILE), lambda stream: stream.write(flags_file_text(config)))
    return output_dirs, identity


def critic_folders(candidates: tuple[Candidate, ...], folds: int) -> list[str]:
    """Each critic's folder under --output_dir, fold-major (critic f *
    candidates + c): fold-F/, TRANSFORM-ACTIVATION/, or both nested."""
    folders = []
    for fold in range(folds):
        for candidate in candidates:
            parts = [f"fold-{fold + 1}"] if folds > 1 else []
            parts += [candidate.name.replace(":", "-")] if len(candidates) > 1 else []
            folders.append(os.path.join(*parts))
    return folders


def checkpoint_variables(critics: int) -> tuple[tf.Variable, tf.Variable]:
    """The variables of the epochs completed and of the history of `critics` critics, as checkpoints hold them."""
    width = critics * History.WIDTH
    return (
        tf.Variable(0, dtype=tf.int64),
        tf.Variable(np.zeros((0, width)), shape=tf.TensorShape([None, width]), dtype=tf.float64),
    )


def saved_history(config: Config, critics: int) -> History:
    """The history in the latest checkpoint of --output_dir (check_resumable saw that there is one)."""
    assert config.output_dir is not None
    epoch, history = checkpoint_variables(critics)
    latest = tf.train.latest_checkpoint(os.path.join(config.output_dir, CHECKPOINT_DIR))
    tf.train.Checkpoint(epoch=epoch, history=history).read(latest).expect_partial()
    return History.of_figures(history.numpy().reshape(-1, critics, History.WIDTH))


def open_checkpoint(
    config: Config, compiled: CompiledCritics, best_weights: BestWeights, identity: dict | None, critics: int
) -> Checkpoint | None:
    """The run's Checkpoint, the critics' weights and optimizer restored with
    --resume, else the run's identity recorded beside the first. identity
    None: no checkpoint at all."""
    if identity is None or config.output_dir is None:
        return None
    checkpoint_dir = os.path.join(config.output_dir, CHECKPOINT_DIR)
    epoch, history = checkpoint_variables(critics)
    stack = tf.train.Checkpoint(model=compiled.model, optimizer=compiled.optimizer)
    best = tf.train.Checkpoint(weights=best_weights.variables)
    checkpoint = tf.train.Checkpoint(critics=stack, epoch=epoch, history=history, best=best)
    manager = tf.train.CheckpointManager(checkpoint, checkpoint_dir, max_to_keep=config.keep_checkpoints)
    if config.resume:
        checkpoint.restore(manager.latest_checkpoint).assert_existing_objects_matched()
        best_weights.take_from_variables()
    else:
        os.makedirs(checkpoint_dir, exist_ok=True)
        save_json(os.path.join(checkpoint_dir, RUN_IDENTITY_FILE), identity)
    return Checkpoint(manager, checkpoint, epoch, history, best_weights)


def stacked_halves(held_out_rows: list[np.ndarray]) -> tuple[tf.Tensor, tf.Tensor] | None:
    """Each critic's held-out rows cut into the two halves whose best epochs
    select each other's estimate (cross_selected_estimate), as (rows
    [critics, 2, most rows, columns], counts [critics, 2]); None without
    held-out rows."""
    if min(len(rows) for rows in held_out_rows) < 2:
        return None
    rows, counts = stacked_rows([half for rows in held_out_rows for half in held_out_halves(rows)])
    return tf.constant(rows.reshape(len(held_out_rows), 2, *rows.shape[1:])), tf.constant(counts.reshape(-1, 2))


def held_out_halves(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A critic's held-out rows cut into halves A and B."""
    return rows[: len(rows) // 2], rows[len(rows) // 2 :]


def start_line(config: Config, prepared: PreparedRun, data: TrainingRows) -> str:
    held_out_counts = [len(rows) for rows in data.held_out_rows]

    def span(counts):
        return f"{min(counts)}" if min(counts) == max(counts) else f"{min(counts)} to {max(counts)}"

    critics, candidates = data.critics, config.candidates
    folds = critics // len(candidates)
    rows_text = (
        f"{data.training_counts[0]} training rows, {held_out_counts[0]} held out"
        if folds == 1
        else f"{folds} cross-fitted folds, each critic trained on {span(data.training_counts)} rows and read on "
        f"the other {span(held_out_counts)}"
    )
    if len(candidates) > 1:
        names = ", ".join(candidate.name for candidate in candidates)
        fitted = len(prepared.plan.apart) * folds
        side_by_side = f"{critics - fitted} critics side by side" + (f", {fitted} fitted" if fitted else "")
        rows_text += f"; candidates {names} on each ({side_by_side})"
    replicas = prepared.compiled.strategy.num_replicas_in_sync
    return (
        f"MINE ({config.estimator}) on {config.input_name}: {rows_text}, "
        f"batch {config.batch_size}, {config.n_epoch} epoch{'s' if config.n_epoch > 1 else ''}, "
        f"{config.optimizer} lr {config.lr}, seed {config.seed}"
        + (f", {replicas} replicas ({config.strategy})" if prepared.compiled.replicated else "")
        + (f", true MI {prepared.truth} nats" if prepared.truth is not None else "")
        + (f"; resumed after epoch {prepared.first_epoch}" if config.resume else "")
        + "".join(f"; {note}" for note in prepared.adapted)
    )


# A run, from its settings to its results
def main(argv: list[str] | None = None) -> dict:
    """The command line: runs with the flags of argv (sys.argv by default)
    and ends with the exit status of the README: 0 done, 1 results not
    written, 2 bad input or flag (one line on stderr), 3 diverged,
    128 + N stopped by signal N. Returns the summary when done."""
    try:
        summary = run(parse_flags(argv))
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


def estimate(x: np.ndarray, z: np.ndarray, **flags: Any) -> dict:
    """Estimates I(X; Z) from arrays: x [rows, data_dim] and z [rows,
    latent_dim] (1-D: one column), the same rows in the same order.

    Every flag of mi_main.py is a keyword with the same name and default
    (n_epoch=..., folds=..., seed=...); data_dim and latent_dim come from
    the arrays. With output_dir=None (the default here:
    ESTIMATE_OUTPUT_DIR) nothing is written anywhere; with an
    output_dir, what the command line writes. Returns the summary (the keys
    of summary.json); its "status" says whether the run completed, diverged
    or was interrupted. Bad input or flags raise ValueError with the command
    line's message.
    """
    unknown = sorted(set(flags) - set(FLAG_FIELDS))
    if unknown:
        raise InputError(f"unknown flag {unknown[0]!r} (flags: {', '.join(sorted(FLAG_FIELDS))})")
    x, z = checked_array(x, "x"), checked_array(z, "z")
    if len(x) != len(z):
        raise InputError(f"x has {len(x)} rows and z {len(z)}; they must be the same samples")
    flags.setdefault("output_dir", ESTIMATE_OUTPUT_DIR)
    argv = [
        word for name, value in flags.items() if name not in ("output_dir", "input") for word in flag_words(name, value)
    ]
    config = dataclasses.replace(parse_flags(argv), output_dir=flags["output_dir"], input=None)
    return run(config, arrays=(x, z))


def read_rows(config: Config, arrays: tuple[np.ndarray, np.ndarray] | None) -> tuple[Config, np.ndarray]:
    """(config with the input's widths, its checked rows in the full layout): from the arrays (x, z) when given
    (estimate()), else from --input by its extension."""
    if arrays is None:
        assert config.input is not None
        arrays = read_arrays(config.input, config.x_columns, config.z_columns, config.data_dim, config.latent_dim)
    if arrays is not None:
        config = widths_of_arrays(config, arrays[0].shape[1], arrays[1].shape[1])
        rows = np.concatenate(arrays, axis=1).astype(np.float32)
    else:
        assert config.input is not None
        rows = read_row_file(config.input, config.data_dim, config.latent_dim)
    check_input_against_flags(config, *rows.shape)
    return config, full_layout(rows, config.data_dim + config.latent_dim)


def in_memory_rows(
    config: Config, arrays: tuple[np.ndarray, np.ndarray] | None
) -> tuple[Config, InMemoryRows, list[str]]:
    """(config adapted to the rows, the rows in memory, the notes on what was adapted): per fold (one split by
    --val_fraction, or --folds), one critic per candidate, critic f * candidates + c being fold f's candidate c."""
    config, rows = read_rows(config, arrays)
    config, notes = folds_for_rows(config, len(rows))
    if config.folds == 1:
        splits = [split_indices(len(rows), config.val_fraction, config.seed)]
    else:
        splits = [fold_indices(len(rows), config.folds, fold, config.seed) for fold in range(config.folds)]
    config, batch_notes = batch_and_epochs_for_rows(config, min(len(training) for training, _ in splits))
    if config.folds == 1:
        check_split(config, len(rows), *map(len, splits[0]))
    elif min(len(training) for training, _ in splits) < config.batch_size:
        fail(
            f"{config.input_name} has {len(rows)} rows: too few for --folds {config.folds} with --batch_size "
            f"{config.batch_size}"
        )
    splits, cap_notes = held_out_capped(splits)
    data = InMemoryRows.of_rows(
        rows,
        splits,
        [candidate.transform for candidate in config.candidates],
        config.data_dim + config.latent_dim,
        config.batch_size,
        config.seed,
        config.n_epoch,
        config.resampled_latent_dim,
    )
    return config, data, notes + batch_notes + cap_notes


def streamed_rows(config: Config) -> tuple[Config, StreamedRows, list[str]]:
    """(config adapted to the rows, the input streamed through a binary cache in bounded memory, the notes) for
    one critic (streaming does not cross-fit): the held-out rows a block at the end of the file."""
    width = config.data_dim + config.latent_dim
    assert config.input is not None and config.cache_dir is not None  # run() streams files alone
    try:
        cache_path, total_rows, file_width = build_cache(config.input, (2 * width, width), config.cache_dir)
    except OSError as error:
        fail(f"--cache_dir {config.cache_dir}: {error.strerror}")
    check_input_against_flags(config, total_rows, file_width)
    held_out = min(int(round(config.val_fraction * total_rows)), HELD_OUT_CAP)
    config, notes = batch_and_epochs_for_rows(config, total_rows - held_out)
    check_split(config, total_rows, total_rows - held_out, held_out)
    (candidate,) = config.candidates  # run() refuses several with --cache_dir
    data = StreamedRows.of_cache(
        cache_path,
        total_rows,
        file_width,
        width,
        held_out,
        candidate.transform,
        TRANSFORM_SAMPLE,
        config.batch_size,
        config.seed,
        config.n_epoch,
        config.shuffle_buffer,
        config.resampled_latent_dim,
    )
    return config, data, notes


def run(config: Config, arrays: tuple[np.ndarray, np.ndarray] | None = None) -> dict:
    """One run of a Config, on --input or on arrays (x, z); returns the
    summary. Raises InputError on bad input and OutputError when the
    results cannot be written."""
    start_process()
    if config.evaluate_only:
        if config.permutations:
            fail("--permutations tests the critics a run trains; --evaluate_only reads a saved one, its rows unknown")
        return evaluate_only(config, config.evaluate_only, arrays)
    check_combination(config)
    strategy = make_strategy(config)
    if not is_chief(strategy) and config.output_dir is not None:  # the other workers' files go aside
        worker_dir = os.path.join(config.output_dir, f"worker-{strategy.cluster_resolver.task_id}")
        config = dataclasses.replace(config, output_dir=worker_dir, logdir=None)
    if config.folds > 1 and config.cache_dir:
        fail("--folds needs the rows in memory; it does not combine with --cache_dir")
    if config.resume and config.output_dir is None:
        fail("--resume continues the checkpoint in an output directory; give output_dir")
    config, data, adapted = streamed_rows(config) if config.cache_dir else in_memory_rows(config, arrays)
    lock = None
    if config.output_dir is not None:
        try:
            os.makedirs(config.output_dir, exist_ok=True)
        except OSError as error:
            fail(f"--output_dir {config.output_dir}: cannot create: {error.strerror}")
        lock = acquire_lock(config.output_dir)
    stop = StopRequest()
    try:
        prepared = prepare(config, strategy, data, adapted, arrays)
        outcome = train(config, data, prepared, stop)
        return write_outputs(config, prepared, data, outcome, stop)
    finally:
        stop.restore()
        if lock:
            os.unlink(lock)


def check_combination(config: Config) -> None:
    """Refuses the flags that do not combine, before anything runs."""
    if config.plot:
        require_matplotlib()
    if config.folds > 1 and config.strategy != "default":
        fail(
            "--folds trains its critics side by side on one device; it does not combine with --strategy "
            f"{config.strategy}"
        )
    if len(config.candidates) > 1 and (config.cache_dir or config.strategy != "default"):
        fail(
            "several --candidates train side by side on one device, on rows in memory; they do not combine with "
            + ("--cache_dir" if config.cache_dir else f"--strategy {config.strategy}")
        )
    if config.permutations and config.folds == 1 and config.val_fraction == 0:
        fail("--permutations tests on held-out rows; there are none with --folds 1 and --val_fraction 0")
    if config.estimator == "mine_f" and any(c.activation in FITTED_ACTIVATIONS for c in config.candidates):
        fail("--estimator mine_f bounds another function than the copula critic fits; use mine or mine_biased")
    if config.cache_dir and (config.input is None or os.path.splitext(config.input)[1].lower() not in TEXT_SUFFIXES):
        fail(f"--cache_dir streams text row files ({', '.join(TEXT_SUFFIXES)}); it does not take {config.input_name}")


def evaluate_only(config: Config, critic_path: str, arrays: Any = None) -> dict:
    """Reports the bound of the critic saved at critic_path on --input, without training."""
    try:
        model = tf.keras.models.load_model(critic_path)
        with np.load(os.path.join(os.path.dirname(critic_path), TRANSFORM_FILE)) as saved:
            kind = str(saved["kind"])
            parameters = {name: saved[name] for name in saved.files if name != "kind"}
    except (OSError, ValueError) as error:
        fail(f"--evaluate_only {critic_path}: cannot load the critic and its {TRANSFORM_FILE}: {error}")
    config = dataclasses.replace(config, data_dim=model.data_dim, latent_dim=model.latent_dim)
    config, rows = read_rows(config, arrays)
    rows = make_transform(kind, parameters, model.sample_width)(rows)
    settings = config.critic_settings
    every_row = tf.constant(rows[None, None]), tf.constant([[len(rows)]])  # one critic, one part
    passes, resample = settings.eval_passes, settings.resampled_latent_dim
    bound = float(held_out_bounds(model, every_row, config.seed, 0, passes, resample, tf.constant([0]))[0, 0])
    print(
        f"bound of {critic_path} on {config.input_name}: {bound:.4f} nats ({len(rows)} rows, "
        f"{settings.eval_passes} marginal pairings)"
    )
    return {"mi_estimate": bound, "rows": len(rows)}


def write_outputs(
    config: Config, prepared: PreparedRun, data: TrainingRows, outcome: Outcome, stop: StopRequest
) -> dict:
    """The estimate and its files (nothing without an output directory);
    prints the final line of a completed run and returns the summary, its
    status saying whether the run completed, diverged or was interrupted."""
    settings, plan = config.critic_settings, outcome.plan

    def stderr_of(chosen: list[int]) -> float:  # of one split's chosen candidates (a critic each), as the stacks end
        stacks = [(outcome.compiled, plan.critic_ids)]
        if plan.apart:
            stacks.append((prepared.fitted.stack, prepared.fitted.critic_ids))
        passes, resample, stderrs = settings.eval_passes, settings.resampled_latent_dim, []
        for stack, ids in stacks:
            if held := [ids.index(candidate) for candidate in chosen if candidate in ids]:
                rows = [data.held_out_rows[critic] for critic in ids]
                stderr = chosen_critics_stderr(
                    stack.model, rows, held, config.seed, passes, resample, config.estimator, ids
                )
                stderrs += [stderr] * len(held)
        return float(np.mean(stderrs))

    def reread(chosen: list[tuple[int, int]]) -> list[float | None]:  # every pair (fitted), or many (trained)
        readings: dict[int, float] = {}
        for view, candidate in chosen:
            critic, half = read_by_view(plan, view, candidate)
            if (halves := prepared.fitted.every_pair.get(critic)) is not None:
                readings[view] = float(halves.mean() if half is None else halves[half])
        trained = [(view, candidate) for view, candidate in chosen if view not in readings]
        readings |= prepared.best_weights.bounds(config, plan, trained, data.held_out_rows)
        return [readings.get(view) for view in range(len(chosen))]

    names = [candidate.name for candidate in config.candidates]
    estimate_fields, winners = chosen_estimate(
        outcome.history, names, plan, stderr_of if prepared.halves is not None else None, reread
    )
    if prepared.halves is not None and estimate_fields["mi_estimate"] is not None:
        estimate_fields |= certified_limit(estimate_fields, reading_pairs(config, data, winners))
    estimate_fields |= independence_fields(config, data, prepared, outcome)
    if config.output_dir is not None:
        save_run_files(config.output_dir, config, prepared, data, outcome)
    summary = run_summary(config, prepared, data, outcome, stop, estimate_fields)
    in_units(summary, config.units)
    if config.output_dir is not None:
        try:
            save_json(os.path.join(config.output_dir, SUMMARY_FILE), summary)
        except OSError as error:
            raise OutputError(f"cannot write {SUMMARY_FILE} to {config.output_dir}: {error.strerror}") from None
    if outcome.status == "completed":
        print(final_line(config, summary, winners, outcome.train_seconds))
    return summary


def reading_pairs(config: Config, data: TrainingRows, winners: list) -> list[int]:
    """The marginal pairs of each view's reading, from its chosen candidates (winners as chosen_estimate gives
    them): with folds, fold k's critic on both its held-out halves (the fewer of the two); with one split, each
    half read by the other's choice. A fitted critic reads every pair of a half, n (n - 1); a trained one
    reread_shifts pairings a row (one, the file's own, with --marginal file)."""
    names, per_fold = [candidate.name for candidate in config.candidates], len(config.candidates)
    if config.folds > 1:
        reads = [[(fold * per_fold + names.index(name), half) for half in (0, 1)] for fold, name in enumerate(winners)]
    else:
        chosen_a, chosen_b = (names.index(name) for name in winners[0])
        reads = [[(chosen_a, 1)], [(chosen_b, 0)]]
    counts = {
        critic: [len(rows) for rows in held_out_halves(data.held_out_rows[critic])]
        for view in reads
        for critic, _ in view
    }
    trained = [size for critic, sizes in counts.items() if not is_fitted(config, critic) for size in sizes]
    shifts = reread_shifts(trained) if trained and config.resampled_latent_dim else 1

    def pairs(critic: int, half: int) -> int:
        rows = counts[critic][half]
        return rows * (rows - 1) if is_fitted(config, critic) else rows * shifts

    return [min(pairs(critic, half) for critic, half in view) for view in reads]


def save_run_files(top: str, config: Config, prepared: PreparedRun, data: TrainingRows, outcome: Outcome) -> None:
    """The per-epoch files of each critic, of each fold's mean over its
    candidates and, at the top, of the critics' mean; each critic's model
    and input map (but after a divergence)."""
    history, critics, per_fold = outcome.history, data.critics, len(config.candidates)

    def curves(folder: str, first: int, stop: int) -> None:  # the mean of critics first, ..., stop - 1
        figures = history.of_critics(first, stop)
        held_out = figures.held_out if prepared.halves is not None else None
        save_curves(folder, figures.training, figures.joint, figures.marginal, held_out, config.plot, prepared.truth)

    try:
        for k, output_dir in enumerate(prepared.output_dirs):
            if critics > 1:
                curves(output_dir, k, k + 1)
        if outcome.status != "diverged":  # those dropped from the trained stack were saved as they stopped
            trained_to_the_end = outcome.plan.critic_ids
            save_stopped_critics(config, prepared, data, outcome.compiled, trained_to_the_end, trained_to_the_end)
            if outcome.plan.apart:
                fitted = prepared.fitted
                save_stopped_critics(config, prepared, data, fitted.stack, fitted.critic_ids, fitted.critic_ids)
        if critics > per_fold > 1:  # each fold's own mean over its candidates
            for fold in range(critics // per_fold):
                curves(os.path.join(top, f"fold-{fold + 1}"), fold * per_fold, (fold + 1) * per_fold)
        curves(top, 0, critics)  # the reference's files at the top whatever the folds: the critics' mean per epoch
    except OSError as error:
        raise OutputError(
            f"cannot write the results to {top}: {error.strerror}; "
            "the files already there are the previous complete ones"
        ) from None


def run_summary(
    config: Config,
    prepared: PreparedRun,
    data: TrainingRows,
    outcome: Outcome,
    stop: StopRequest,
    estimate_fields: dict,
) -> dict:
    """summary.json's content: the run's status, the estimate, counts, speeds and flags."""
    history, per_fold, folds = outcome.history, len(config.candidates), config.folds
    epoch_seconds, rows_per_epoch = outcome.epoch_seconds, outcome.rows_per_epoch
    trained_epochs = len(epoch_seconds)
    # speeds after the first epoch of this process, which also traces and compiles
    steady = sum(rows_per_epoch[1:]) / sum(epoch_seconds[1:]) if trained_epochs > 1 else None
    held_out_counts = [len(rows) for rows in data.held_out_rows]
    return {
        "status": outcome.status,
        "stopped_by": signal.Signals(stop.signal).name if stop.signal is not None else None,
        "folds": folds,
        "critics": data.critics,
        "epochs_completed": prepared.first_epoch + trained_epochs,
        "diverged_in_epoch": outcome.diverged_in,
        "units": config.units,
        **estimate_fields,
        **plan_fields(config, outcome, estimate_fields),
        "held_out_last_epoch": trained_mean(history.held_out[-1]) if len(history) else None,
        "training_rows_estimate": trained_mean(history.training[-1]) if len(history) else None,
        "true_mi_nats": prepared.truth,
        "estimator": config.estimator,
        "candidates": [candidate.name for candidate in config.candidates],
        "n_epoch": config.n_epoch,
        "resumed_after_epoch": prepared.first_epoch if config.resume else None,
        "rows": data.total_rows,
        "training_rows": data.training_counts[0] if folds == 1 else data.training_counts[::per_fold],
        "held_out_rows": held_out_counts[0] if folds == 1 else held_out_counts[::per_fold],
        "batch_size": config.batch_size,
        "adapted_to_rows": prepared.adapted,
        "seed": config.seed,
        "train_seconds": round(outcome.train_seconds, 3),
        "samples_per_second": round(sum(rows_per_epoch) / outcome.train_seconds, 1) if trained_epochs else None,
        "first_epoch_seconds": round(epoch_seconds[0], 3) if trained_epochs else None,
        "training_rows_per_second": round(steady, 1) if steady else None,
        "training_gflops_per_second": round(steady * prepared.flops_per_row / 1e9, 2) if steady else None,
        "training_flops_per_row": prepared.flops_per_row,
        "hyperparameters": config.as_flags(),
    }


def plan_fields(config: Config, outcome: Outcome, estimate_fields: dict) -> dict:
    """What the plan did, for summary.json: the candidates dropped and after
    which epoch, and the critic-epochs trained, in all and by the candidates
    each fold chose (the rest is the arithmetic that went to losers)."""
    plan, names = outcome.plan, [candidate.name for candidate in config.candidates]
    trained = ~np.isnan(outcome.history.training)  # [epochs, critics]
    chosen_by_fold = [[each] if isinstance(each, str) else each for each in estimate_fields.get("fold_winners") or []]
    chosen_by_fold = chosen_by_fold or [names] * config.folds
    chosen = [names[k % len(names)] in chosen_by_fold[k // len(names)] for k in range(trained.shape[1])]
    return {
        "candidates_dropped": {names[candidate]: epoch for candidate, epoch in plan.dropped},
        "critic_epochs": int(trained.sum()),
        "critic_epochs_of_chosen_candidates": int(trained[:, chosen].sum()),
    }


def final_line(config: Config, summary: dict, winners: list, seconds: float) -> str:
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
    where = f"; results in {config.output_dir}/" if config.output_dir is not None else ""
    limit = ""
    if summary.get("mi_limit_binds"):
        limit = (
            f"; its interval reaches {summary['mi_certifiable']:.2f} {units}, log of the fewest pairs a reading "
            "took, the most they can certify: the MI may be higher"
        )
    dropped = "; dropped " + ", ".join(
        f"{name} after epoch {epoch}" for name, epoch in summary["candidates_dropped"].items()
    )
    test = ""
    if summary.get("p_value") is not None:
        test = f"; independence p = {summary['p_value']:.3g} (exact: {config.permutations} permutations" + (
            f" a fold, Bonferroni over {folds} folds)" if folds > 1 else ")"
        )
    return (
        f"estimated I(X; Z) = {estimate_text}"
        + (f" from the {summary['mi_estimate_from']}" if folds == 1 else "")
        + chosen
        + (dropped if summary["candidates_dropped"] else "")
        + limit
        + test
        + f", in {seconds:.1f} s{where}"
    )


# The independence test: is the dependence real?
PERMUTATION_STREAM = 2**40  # the test's permutations draw from (seed, fold, this): a stream of their own
TEST_PAIRS = 2**16  # distinct (x, z) pairs a critic scores for the test at most (about 30 ms), whatever the rows


def test_epoch(config: Config, plan: Plan) -> int:
    """The epoch whose weights the test reads trained critics at: the last before the plan may drop a candidate
    (Plan.from_epoch), where two trained candidates share folds; the last otherwise. Up to it a fold's critics
    train alike whatever the rows of that fold, which they never train on: after it, when a candidate stops
    depends on every fold's held-out readings, that fold's among them."""
    trained = [candidate for candidate in config.candidates if candidate.activation not in FITTED_ACTIVATIONS]
    return min(plan.n_epoch, plan.from_epoch) if plan.folds > 1 and len(trained) > 1 else plan.n_epoch


def test_rows(fold_rows: int, permutations: int) -> int:
    """The held-out rows of a fold the test reads (the first, drawn at random by the split): all, or as many as
    TEST_PAIRS pairs allow, the whole x-z matrix of sqrt(TEST_PAIRS) rows or, with fewer permutations than that,
    one pair a row in each."""
    return min(fold_rows, max(math.isqrt(TEST_PAIRS), TEST_PAIRS // (permutations + 1)))


# The test's one-critic networks by (hid_width, out_width, activation, inputs), kept for the process's next runs:
# building one (its variables) costs more than a fold's scoring at 500 rows
TEST_NETWORKS: dict[tuple[int, int, str, int], StatisticsNetwork] = {}


def critic_at_test(config: Config, prepared: PreparedRun, critic: int) -> StatisticsNetwork:
    """A one-critic network with the critic's weights at the test's epoch: those of the fitted stack (fitted
    critics read apart never change), else those kept for the test (a network of TEST_NETWORKS, its weights set
    anew)."""
    candidate, fitted = critic % len(config.candidates), prepared.fitted
    if prepared.plan.apart and critic in fitted.critic_ids:
        weights = fitted.stack.model.statistics_network.critic_weights(fitted.critic_ids.index(critic))
    else:
        weights = prepared.best_weights.test_weights(critic)
    settings = critic_settings_of(config, [candidate])
    activation = config.candidates[candidate].activation
    key = (settings.hid_width, settings.out_width, activation, config.data_dim + config.latent_dim)
    if key not in TEST_NETWORKS:
        TEST_NETWORKS[key] = StatisticsNetwork(*key[:3])
        TEST_NETWORKS[key].build((1, None, key[3]))
    TEST_NETWORKS[key].set_weights(weights)
    return TEST_NETWORKS[key]


def pair_scores(network: StatisticsNetwork, x: np.ndarray, z: np.ndarray) -> np.ndarray:
    """T of a one-critic network on each pair (x_i, z_i), the mean of its outputs."""
    samples = tf.constant(np.concatenate([x, z], axis=1)[None], tf.float32)
    return network(samples).numpy()[0].mean(axis=-1)


def fold_test(config: Config, data: TrainingRows, prepared: PreparedRun, fold: int) -> tuple[float, float, int]:
    """(p-value, statistic, rows read) of one fold (one split: its held-out rows): each of its candidates'
    critics scores the same permutations of z against x (the identity first), and the p-value is that of the
    largest standardized score (max_t) among them. The critics never trained on these rows, and their input
    maps see each column alone: under independence, the pairing of the fold's rows is one permutation of
    them among all, alike."""
    per_fold = len(config.candidates)
    critics = range(fold * per_fold, (fold + 1) * per_fold)
    rows = test_rows(len(data.held_out_rows[critics[0]]), config.permutations)
    permutations = drawn_permutations(rows, config.permutations, (config.seed, fold, PERMUTATION_STREAM))
    x_columns, z_columns = slice(0, config.data_dim), slice(config.data_dim, config.data_dim + config.latent_dim)
    sums = []
    for critic in critics:
        score = functools.partial(pair_scores, critic_at_test(config, prepared, critic))
        held_out = data.held_out_rows[critic][:rows]
        sums.append(permuted_sums(score, held_out[:, x_columns], held_out[:, z_columns], permutations))
    statistics = max_t(np.array(sums))
    return permutation_p_value(statistics), float(statistics[0]), rows


def independence_fields(config: Config, data: TrainingRows, prepared: PreparedRun, outcome: Outcome) -> dict:
    """summary.json's fields of the independence test, none with --permutations 0: the p-value of the folds
    together (combined_p_value), each fold's, and the statistics (each fold's identity pairing in standard
    deviations of its permutations, the highest over its candidates). No p-value of a run that did not
    complete."""
    if not config.permutations:
        return {}
    if outcome.status != "completed":
        return {"p_value": None, "p_value_from": f"no test: the run {outcome.status}"}
    start = time.perf_counter()
    folds = len(data.held_out_rows) // len(config.candidates)
    fold_p_values, fold_statistics, rows_read = zip(
        *(fold_test(config, data, prepared, fold) for fold in range(folds)), strict=True
    )
    epoch = prepared.best_weights.test_epoch
    source = (
        f"exact permutation test: {config.permutations} permutations of z against x on each fold's held-out rows, "
        f"scored by the fold's critics at epoch {epoch}; {folds} folds' smallest p-value times {folds} (Bonferroni)"
        if folds > 1
        else f"exact permutation test: {config.permutations} permutations of z against x on the held-out rows, "
        f"scored by the critics at epoch {epoch}"
    )
    return {
        "p_value": combined_p_value(list(fold_p_values)),
        "p_value_from": source,
        "test_statistic": max(fold_statistics),
        "fold_p_values": list(fold_p_values),
        "fold_test_statistics": list(fold_statistics),
        "test_epoch": epoch,
        "test_rows": list(rows_read),
        "test_seconds": round(time.perf_counter() - start, 3),
    }


class IndependenceTest(NamedTuple):
    """independence_test()'s result, in hyppo's shape: (stat, pvalue), then the run's whole summary (as hyppo's
    MGC adds its dict)."""

    stat: float | None
    pvalue: float | None
    summary: dict


def independence_test(x: np.ndarray, z: np.ndarray, permutations: int = 999, **flags: Any) -> IndependenceTest:
    """Tests whether X and Z are independent, from arrays as estimate() takes them (every flag a keyword): the
    estimate's run, and its critics score `permutations` re-pairings of each fold's rows. pvalue is exact (valid
    at every level, for any sample size) when the rows are exchangeable: not for a time series. stat is the
    test_statistic of the summary; both None where the run did not complete."""
    summary = estimate(x, z, permutations=permutations, **flags)
    return IndependenceTest(summary.get("test_statistic"), summary.get("p_value"), summary)


# The command line: its flags, made from Config
class OneLineParser(argparse.ArgumentParser):
    """Reports a bad flag in one line on stderr with exit status 2, and
    reads @FILE arguments as one flag (and its value) per line."""

    def error(self, message: str) -> NoReturn:
        raise InputError(message)  # main prints it as one line, with exit status 2

    def convert_arg_line_to_args(self, line: str) -> list[str]:
        return shlex.split(line, comments=True)


def checked(
    kind: type, above: float | None = None, at_least: float | None = None, below: float | None = None
) -> Callable[[str], Any]:
    """A flag's type: its text read as kind, refused outside the bounds."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not a {'whole ' if kind is int else ''}number") from None
        if above is not None and not value > above:
            raise argparse.ArgumentTypeError(f"must be greater than {above}, got {text}")
        if below is not None and not at_least <= value < below:
            raise argparse.ArgumentTypeError(f"must be at least {at_least} and below {below}, got {text}")
        if at_least is not None and not value >= at_least:
            raise argparse.ArgumentTypeError(f"must be {at_least} or more, got {text}")
        return value

    return parse


def flag_options(field: dataclasses.Field) -> dict[str, Any]:
    """argparse's options of one of Config's fields. Every default is
    SUPPRESS, so that the parsed flags are those given: resolved() works out
    the rest."""
    traits = field.metadata
    default_text = flag_text(field.default)
    text = traits["help"].format(default=default_text, one_critic=ONE_CRITIC, step_budget=STEP_BUDGET)
    if "(default:" not in text:
        text += f" (default: {default_text})"
    options = {"default": argparse.SUPPRESS, "help": text.replace("%", "%%")}
    if traits["kind"] is bool:
        return options | {"action": argparse.BooleanOptionalAction if field.default else "store_true"}
    if traits["kind"] is Candidate:
        return options | {"type": candidates_flag}
    if "choices" in traits:
        return options | {"choices": traits["choices"]}
    if traits["kind"] in (int, float):
        bounds = {name: traits[name] for name in ("above", "at_least", "below") if name in traits}
        options["type"] = checked(traits["kind"], **bounds)
    return options | ({"metavar": traits["metavar"]} if "metavar" in traits else {})


def make_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="mi_main.py",
        description="Estimate I(X; Z) in nats with MINE (Donsker-Varadhan bound). "
        "Flags may also come from a file: mi_main.py @run.args (one flag per line).",
        fromfile_prefix_chars="@",
    )
    groups = {}
    for field in FLAG_FIELDS.values():
        group = field.metadata["group"]
        if group not in groups:
            groups[group] = parser.add_argument_group(group)
        groups[group].add_argument(f"--{field.name}", **flag_options(field))
    return parser


def parse_flags(argv: list[str] | None = None) -> Config:
    """The Config of argv's flags; a bad one raises InputError."""
    return resolved(vars(make_parser().parse_args(argv)))


def is_weight_decay(text: str) -> bool:
    """'wd2', 'wd0.5': a candidate's weight decay, wd and a number >= 0."""
    try:
        return text.startswith("wd") and 0 <= float(text[2:]) < float("inf")
    except ValueError:
        return False


def parse_candidates(text: str) -> tuple[Candidate, ...]:
    """'rank:tanh,asinh:relu:wd2' -> its Candidates, checked (argparse.ArgumentTypeError)."""
    parsed = []
    for name in text.split(","):
        fields = name.split(":")
        if not (
            len(fields) in (2, 3)
            and fields[0] in TRANSFORMS
            and fields[1] in ACTIVATIONS
            and all(map(is_weight_decay, fields[2:]))
        ):
            raise argparse.ArgumentTypeError(
                f"'{name}' is not TRANSFORM:ACTIVATION or TRANSFORM:ACTIVATION:wdDECAY with TRANSFORM in "
                f"{', '.join(TRANSFORMS)}, ACTIVATION in {', '.join(ACTIVATIONS)} and DECAY a number >= 0"
            )
        if fields[1] in FITTED_ACTIVATIONS and len(fields) == 3:
            raise argparse.ArgumentTypeError(f"'{name}': a {fields[1]} critic is fitted, not trained: no weight decay")
        parsed.append(Candidate(name, fields[0], fields[1], float(fields[2][2:]) if len(fields) == 3 else 0.0))
    if len({candidate.name for candidate in parsed}) != len(parsed):
        raise argparse.ArgumentTypeError(f"'{text}' names a candidate twice")
    return tuple(parsed)


def candidates_flag(text: str) -> str:
    """--candidates' type: the text, checked; Config parses it."""
    parse_candidates(text)
    return text


def flag_text(value: Any) -> str:
    """A flag's value as written: candidates as their names, comma-separated."""
    if isinstance(value, tuple):
        return ",".join(candidate.name for candidate in value)
    return str(value)


def flag_words(name: str, value: Any) -> list[str]:
    """The command-line words that give flag `name` its value: none for None or a switch that is off."""
    if isinstance(value, bool):
        if FLAG_FIELDS[name].default is True:  # --jit / --no-jit
            return [f"--{name}" if value else f"--no-{name}"]
        return [f"--{name}"] if value else []
    return [] if value is None else [f"--{name}", flag_text(value)]


def flags_file_text(config: Config) -> str:
    """The flags of a run, one per line, as @FILE reads them back."""
    lines = []
    for name, field in FLAG_FIELDS.items():
        words = flag_words(name, getattr(config, name)) if field.metadata.get("replayed", True) else []
        if words:
            lines.append(" ".join([words[0], *map(shlex.quote, words[1:])]))
    return "\n".join(lines) + "\n"


# The process: its start-up settings, made when a run starts, and its signals
def start_process() -> None:
    """Process-wide settings a run needs before TensorFlow runs anything of
    its own: made when a run starts, never by importing mi_main."""
    limit_malloc_arenas()
    use_persistent_xla_cache()


def limit_malloc_arenas(arenas: int = 2) -> None:
    """Caps glibc's malloc arenas before TensorFlow starts its threads (at
    its first operation): with an arena per thread, memory freed in one
    arena does not serve the next run's allocations in another, and the
    peak grew with each run in one process (tests/BENCHMARKS.md, "Why the
    code is as it is"). Not glibc (macOS, musl): nothing to do."""
    try:
        ctypes.CDLL(None).mallopt(-8, arenas)  # M_ARENA_MAX
    except (OSError, AttributeError):
        pass


def cpu_identity() -> str:
    """A short digest of this machine's CPU model and features (Linux's
    /proc/cpuinfo; elsewhere the platform's processor name)."""
    try:
        with open("/proc/cpuinfo") as stream:
            text = "".join(sorted({line for line in stream if line.startswith(("model name", "flags"))}))
    except OSError:
        text = platform.processor() + platform.machine()
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def use_persistent_xla_cache() -> None:
    """Keeps XLA's compiled programs on disk: a later run of the same shapes
    on this machine loads them instead of compiling again (tests/BENCHMARKS.md,
    "Why the code is as it is"). TensorFlow reads its XLA flags at its first
    compilation, so this holds if no XLA program has run in the process yet.
    The directory is $MINE_XLA_CACHE, by default ~/.cache/mi_mine/xla, in a
    folder per CPU model and feature set, since a program compiled for one
    CPU may not run on another that shares the home directory;
    MINE_XLA_CACHE= (empty) turns it off, and a cache directory already in
    TF_XLA_FLAGS is left as it is."""
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


class StopRequest:
    """Turns the first SIGINT or SIGTERM into a request to stop after the
    epoch in progress (its TensorFlow call cannot be cut short); a second
    one exits at once. Every output file is replaced atomically, so
    exiting at any moment leaves each one whole."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signal: int | None = None
        self.previous = {number: signal.signal(number, self.handle) for number in self.SIGNALS}

    def handle(self, number: int, frame: Any) -> None:
        if self.signal is not None:
            os._exit(128 + number)
        self.signal = number
        print(
            f"\n{signal.Signals(number).name}: stopping after this epoch (again to stop at once)",
            file=sys.stderr,
            flush=True,
        )

    def restore(self) -> None:
        for number, handler in self.previous.items():
            signal.signal(number, handler)


if __name__ == "__main__":
    main()
