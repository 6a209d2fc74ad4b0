"""Input and output for MINE: read and check the input of every format,
split it into folds and map its columns, shuffle and batch it every epoch
(in memory or streamed from a binary cache), write the results files
atomically under a lock, check what --resume needs unchanged, and make
files whose true mutual information is known. Everything here takes plain
arguments (paths, arrays, numbers): which values a run uses is decided in
mi_main, from its settings.

A row holds 2 * (data_dim + latent_dim) numbers: the joint half (x, z) then
the marginal half (x_bar, z_bar), as the reference's files do
(whitespace-separated text, as numpy.savetxt writes it).

Run as a script it writes such a file with a chosen MI:

    python mi_data_processing.py --mi 1.0 --rows 4000 --seed 0 --output data/input_set.dat

Files may also hold the joint half alone (data_dim + latent_dim columns);
marginal pairs are then always made by pairing x with another row's z.

This module is the lowest of the four: it imports none of the others. It
loads TensorFlow behind a filter of the INFO lines TensorFlow logs as it
loads, which its log level cannot hold back, so mi_main imports it first.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import functools
import hashlib
import importlib.util
import itertools
import json
import math
import os
import re
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator
from typing import Any, NoReturn

import numpy as np

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


def startup_lines_kept(text: str, min_level: int, dropped: re.Pattern | None = None) -> str:
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
def tensorflow_log_filtered(dropped: re.Pattern | None = None) -> Iterator[None]:
    """Filters what TensorFlow writes to file descriptor 2 inside the block:
    records below TF_CPP_MIN_LOG_LEVEL (2, warnings, where it is not set;
    nothing is set) and records matching `dropped` are held back; the rest,
    and everything if the block fails, reaches stderr. TensorFlow 2.21 logs
    a few INFO lines while its libraries load (oneDNN on CPUs with AVX-512
    or AMX, CPU features), before its logging reads the level, and so
    whatever it is."""
    level = os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2")
    min_level = int(level) if level.isdigit() else 0
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


with tensorflow_log_filtered():  # TensorFlow logs INFO lines as it loads, whatever its log level
    import tensorflow as tf  # noqa: E402


TEXT_SUFFIXES = (".dat", ".txt")  # whitespace-separated rows, as the reference's
TABLE_DELIMITERS = {".csv": ",", ".tsv": "\t"}  # a header row, then one row per sample
TRANSFORMS = ("rank", "standardize", "asinh", "none")
RANK_POINTS = 65_536  # points of the rank map's empirical CDF, kept and saved with each critic
# asinh's map is linear within this many spreads of the median (tests/BENCHMARKS.md, "Choosing each fold's critic")
ASINH_LINEAR_ZONE = 3.0
# Memory bounds, whatever the rows: rows mapped or read from a cache at a time, rows per critic in one training
# call (longer epochs come in chunks), text lines parsed per TensorFlow call while building a cache.
SHARD_ROWS = 65_536
CHUNK_ROWS = 16_384
CACHE_LINES_PER_CHUNK = 65_536


class InputError(ValueError):
    """A problem with the input file; the message names the file and line."""


def load_rows(path: str, columns: int | tuple[int, ...]) -> np.ndarray:
    """Reads the row file at `path` as a float32 array [rows, width].

    `columns` is the width each row must have, or a tuple of the widths
    allowed (the first data row then fixes the width). Blank lines and text
    after '#' are skipped; CRLF line ends are fine. Raises InputError naming
    the file (and line) for anything else.
    """
    allowed = columns if isinstance(columns, tuple) else (columns,)
    try:
        with open(path, "rb") as stream:
            raw = stream.read()
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except OSError as error:
        raise InputError(f"{path}: cannot read: {error.strerror}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise InputError(f"{path}: not a text file (byte {raw[error.start]:#04x} at offset {error.start})") from None

    values: list[list[float]] = []
    line_numbers: list[int] = []
    for line_number, line in enumerate(text.splitlines(), start=1):
        tokens = line.split("#", 1)[0].split()
        if not tokens:
            continue
        if len(tokens) not in allowed or (values and len(tokens) != len(values[0])):
            expected = len(values[0]) if values else " or ".join(map(str, allowed))
            raise InputError(f"{path}, line {line_number}: {len(tokens)} columns, expected {expected}")
        try:
            values.append([float(token) for token in tokens])
        except ValueError:
            bad = next(token for token in tokens if not _is_number(token))
            raise InputError(f"{path}, line {line_number}: '{bad}' is not a number") from None
        line_numbers.append(line_number)
    if not values:
        raise InputError(f"{path}: no data rows")

    with np.errstate(over="ignore"):
        rows = np.asarray(values, dtype=np.float32)
    # Checked after the cast: 1e39 is a valid float64 but infinite in float32.
    finite = np.isfinite(rows).all(axis=1)
    if not finite.all():
        line_number = line_numbers[int(np.argmin(finite))]
        raise InputError(f"{path}, line {line_number}: NaN or infinity (or a number beyond float32 range)")
    return rows


def checked_array(values: Any, where: str, row_offset: int = 0) -> np.ndarray:
    """values as a 2-D float32 array, or InputError naming `where` and the
    first row (counted from row_offset + 1) holding NaN, infinity or a
    number beyond float32's range."""
    try:
        with np.errstate(over="ignore"):
            rows = np.asarray(values, dtype=np.float32)
    except (TypeError, ValueError):
        raise InputError(f"{where}: not an array of numbers") from None
    if rows.ndim == 1:
        rows = rows[:, None]
    if rows.ndim != 2 or not rows.size:
        raise InputError(f"{where}: expected a 2-D array of rows, got shape {tuple(rows.shape)}")
    finite = np.isfinite(rows).all(axis=1)
    if not finite.all():
        raise InputError(
            f"{where}, row {row_offset + int(np.argmin(finite)) + 1}: NaN or infinity (or a number beyond float32 "
            "range)"
        )
    return rows


def load_npy(path: str, columns: tuple[int, ...]) -> np.ndarray:
    """One array from a .npy file, [rows, width] with width in `columns`."""
    try:
        values = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except (OSError, ValueError) as error:
        raise InputError(f"{path}: not a NumPy .npy file of numbers ({error})") from None
    rows = checked_array(values, path)
    if rows.shape[1] not in columns:
        raise InputError(f"{path}: {rows.shape[1]} columns, expected {' or '.join(map(str, columns))}")
    return rows


def load_npz(path: str) -> tuple[np.ndarray, np.ndarray]:
    """(x, z) from the arrays named x and z of a .npz file."""
    try:
        with np.load(path, allow_pickle=False) as arrays:
            missing = [name for name in ("x", "z") if name not in arrays.files]
            if missing:
                raise InputError(
                    f"{path}: no array named '{missing[0]}' (it holds: {', '.join(arrays.files) or 'nothing'})"
                )
            x, z = checked_array(arrays["x"], f"{path}, array x"), checked_array(arrays["z"], f"{path}, array z")
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except (OSError, ValueError) as error:
        if isinstance(error, InputError):
            raise
        raise InputError(f"{path}: not a NumPy .npz file of numbers ({error})") from None
    if len(x) != len(z):
        raise InputError(f"{path}: x has {len(x)} rows and z {len(z)}; they must be the same samples")
    return x, z


def parse_columns(spec: str, header: list[str], path: str, flag: str) -> list[int]:
    """Column indices of `spec`: comma-separated header names, 0-based
    indices or ranges of them ('0-9')."""
    indices = []
    for part in spec.split(","):
        part = part.strip()
        if part in header:
            indices.append(header.index(part))
            continue
        first, dash, last = part.partition("-")
        if first.isdigit() and (not dash or last.isdigit()):
            span = range(int(first), int(last if dash else first) + 1)
            if span and span[-1] < len(header):
                indices.extend(span)
                continue
        raise InputError(
            f"{path}: {flag} names no column '{part}' (columns: {', '.join(header)}; or 0-based indices and ranges "
            f"such as 0-{len(header) - 1})"
        )
    return indices


def load_table(
    path: str, x_columns: str | None, z_columns: str | None, data_dim: int, latent_dim: int
) -> tuple[np.ndarray, np.ndarray]:
    """(x, z) from a .csv or .tsv file with a header row: the columns of
    x_columns and z_columns, or, when both are None, the table's first
    data_dim columns as x and the next latent_dim as z (it must have
    exactly that many). Raises InputError naming the line and column of
    a cell that is missing or not a number."""
    delimiter = TABLE_DELIMITERS[os.path.splitext(path)[1].lower()]
    try:
        with open(path, newline="", encoding="utf-8-sig") as stream:
            lines = list(csv.reader(stream, delimiter=delimiter))
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise InputError(f"{path}: cannot read it as a table: {error}") from None
    if not lines or not any(cell.strip() for cell in lines[0]):
        raise InputError(f"{path}: no header row")
    header = [name.strip() for name in lines[0]]
    if x_columns is None and z_columns is None:
        if len(header) != data_dim + latent_dim:
            raise InputError(
                f"{path}: {len(header)} columns; name the columns of x and z with --x_columns and --z_columns "
                f"(or give a table of exactly --data_dim + --latent_dim = {data_dim + latent_dim} columns)"
            )
        chosen_x, chosen_z = list(range(data_dim)), list(range(data_dim, len(header)))
    elif x_columns is None or z_columns is None:
        raise InputError(f"{path}: give both --x_columns and --z_columns")
    else:
        chosen_x = parse_columns(x_columns, header, path, "--x_columns")
        chosen_z = parse_columns(z_columns, header, path, "--z_columns")
    values = []
    for line_number, cells in enumerate(lines[1:], start=2):
        if not any(cell.strip() for cell in cells):
            continue
        row = []
        for column in chosen_x + chosen_z:
            cell = cells[column].strip() if column < len(cells) else ""
            if not cell:
                raise InputError(f"{path}, line {line_number}, column '{header[column]}': missing value")
            try:
                row.append(float(cell))
            except ValueError:
                raise InputError(
                    f"{path}, line {line_number}, column '{header[column]}': '{cell}' is not a number"
                ) from None
        values.append(row)
    if not values:
        raise InputError(f"{path}: no data rows")
    rows = checked_array(values, path, row_offset=1)  # row 1 is the header
    return rows[:, : len(chosen_x)], rows[:, len(chosen_x) :]


def _is_number(token):
    try:
        float(token)
    except ValueError:
        return False
    return True


def fail(message: str) -> NoReturn:
    """Ends the run on bad input: main() prints the message as one line on
    stderr with exit status 2; estimate() raises it (a ValueError)."""
    raise InputError(message)


def read_arrays(
    path: str, x_columns: str | None, z_columns: str | None, data_dim: int, latent_dim: int
) -> tuple[np.ndarray, np.ndarray] | None:
    """(x, z) of an input file that holds them apart, a .npz (arrays x and z) or a .csv/.tsv table (load_table);
    None for a row file."""
    suffix = os.path.splitext(path)[1].lower()
    if suffix == ".npz":
        return load_npz(path)
    if suffix in TABLE_DELIMITERS:
        return load_table(path, x_columns, z_columns, data_dim, latent_dim)
    return None


def read_row_file(path: str, data_dim: int, latent_dim: int) -> np.ndarray:
    """The rows of a row file (.dat, .txt or .npy): 2 * (data_dim + latent_dim) columns, or the joint half alone."""
    width = data_dim + latent_dim
    try:
        if os.path.splitext(path)[1].lower() == ".npy":
            return load_npy(path, (2 * width, width))
        return load_rows(path, (2 * width, width))
    except InputError as error:
        if "columns, expected" not in str(error):
            raise
        fail(
            f"{error} (--data_dim {data_dim} and --latent_dim {latent_dim} make {2 * width} columns, or {width} for "
            "the joint half alone)"
        )


def full_layout(rows: np.ndarray, sample_width: int) -> np.ndarray:
    """Rows in the full layout (joint half, marginal half): a joint half alone gets a copy of itself as marginal
    half, whose z the resampling then pairs anew."""
    return np.concatenate([rows, rows], axis=1) if rows.shape[1] == sample_width else rows


def split_indices(rows: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(training, held_out) indices of `rows` rows, split at random, fixed by `seed`.

    round(val_fraction * rows) rows are held out, in random order (so that
    any slice of them is a random sample too); 0 holds out none.
    """
    order = np.random.default_rng(seed).permutation(rows)
    n_held_out = int(round(val_fraction * rows))
    return order[n_held_out:], order[:n_held_out]


def fold_indices(rows: int, folds: int, fold: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(training, held_out) indices for cross-fitting: `rows` rows cut at
    random (fixed by `seed`) into `folds` near-equal folds; fold number
    `fold` is held out, in random order, and the others train."""
    parts = np.array_split(np.random.default_rng(seed).permutation(rows), folds)
    return np.concatenate(parts[:fold] + parts[fold + 1 :]), parts[fold]


def fit_transform_parameters(kind: str, training_rows: np.ndarray, sample_width: int) -> dict[str, Any]:
    """What a per-column map learns from the training rows' joint half.

    Any invertible map of each coordinate leaves the mutual information
    unchanged, but the network trains far better on well-scaled,
    light-tailed inputs.

      none:        nothing: the values as they are (the reference);
      standardize: each column's mean and spread, for zero mean, unit variance;
      rank:        each column's sorted values: the empirical CDF,
                   interpolated, then the standard normal quantile. This
                   undoes monotone distortions such as cubes and tames
                   heavy tails.
      asinh:       each column's median and interquartile spread; then
                   c asinh(u / c) of the centred, scaled value u, with c =
                   ASINH_LINEAR_ZONE: linear within c spreads of the
                   median, where the relations in light-tailed data live,
                   logarithmic beyond, so that no extreme row can
                   dominate; smooth, unlike rank's piecewise-linear CDF.
    """
    joint = training_rows[:, :sample_width].astype(np.float64)
    if kind == "none":
        return {}
    if kind == "standardize":
        spread = joint.std(axis=0)
        spread[spread == 0] = 1.0
        return {"mean": joint.mean(axis=0), "spread": spread}
    if kind == "rank":  # at most RANK_POINTS quantiles of each column: the empirical CDF, in bounded memory
        sorted_columns = np.sort(joint, axis=0)
        if len(sorted_columns) > RANK_POINTS:
            levels = (np.arange(RANK_POINTS) + 0.5) / RANK_POINTS
            sorted_columns = sorted_columns[np.round(levels * len(sorted_columns) - 0.5).astype(int)]
        return {"sorted_columns": sorted_columns}
    if kind == "asinh":
        low, median, high = np.percentile(joint, [25, 50, 75], axis=0)
        spread = (high - low) / 1.349  # a normal's standard deviation from its quartiles
        spread[spread == 0] = 1.0
        return {"median": median, "spread": spread, "linear_zone": ASINH_LINEAR_ZONE}
    raise ValueError(f"unknown transform {kind!r}")


def make_transform(kind: str, parameters: dict[str, Any], sample_width: int) -> Callable[[np.ndarray], np.ndarray]:
    """rows -> rows: the map of column j applied to column j of both halves,
    since x and x_bar (z and z_bar) are the same variable."""
    if kind == "none":
        return lambda rows: rows
    if kind == "standardize":

        def column_map(columns):
            return (columns - parameters["mean"]) / parameters["spread"]

    elif kind == "asinh":

        def column_map(columns):
            zone = parameters.get("linear_zone", 1.0)  # 1: as saved before the zone was a parameter
            return zone * np.arcsinh((columns - parameters["median"]) / (zone * parameters["spread"]))

    else:
        sorted_columns = parameters["sorted_columns"]
        levels = (np.arange(len(sorted_columns)) + 0.5) / len(sorted_columns)

        def column_map(columns):
            cdf = np.column_stack([np.interp(columns[:, j], sorted_columns[:, j], levels) for j in range(sample_width)])
            return tf.math.ndtri(cdf).numpy()

    def transform(rows):  # block by block: float64 copies of a block only, whatever the rows
        mapped = np.empty(rows.shape, np.float32)
        for first in range(0, len(rows), SHARD_ROWS):
            block = rows[first : first + SHARD_ROWS].astype(np.float64)
            mapped[first : first + SHARD_ROWS] = np.column_stack(
                [column_map(block[:, :sample_width]), column_map(block[:, sample_width:])]
            )
        return mapped

    return transform


def stacked_rows(rows_per_critic: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """One array for several critics' rows (or row indices): [critics, most
    rows, ...], each critic's rows first and zeros after, and each critic's
    row count. (Folds differ in size by a row.)"""
    counts = np.array([len(rows) for rows in rows_per_critic], dtype=np.int32)
    first = rows_per_critic[0]
    stacked = np.zeros((len(rows_per_critic), counts.max(), *first.shape[1:]), dtype=first.dtype)
    for k, rows in enumerate(rows_per_critic):
        stacked[k, : len(rows)] = rows
    return stacked, counts


def epoch_key(seed: tf.Tensor | int, epoch: tf.Tensor | int, stream: int) -> tf.Tensor:
    """The stateless random key of (seed, epoch, stream)."""
    return tf.random.experimental.stateless_fold_in(
        tf.stack([tf.cast(seed, tf.int64), tf.cast(epoch, tf.int64)]), tf.cast(stream, tf.int64)
    )


def critic_draws(key: tf.Tensor, critic: tf.Tensor, width: Any) -> tf.Tensor:
    """Uniform random numbers [width] of one critic (or group) under an epoch's key (epoch_key): a critic's
    draws depend on the key and its identity alone, not on which others share its stack, and, stateless, a run
    resumed at any epoch sees those of an uninterrupted one."""
    seed = tf.random.experimental.stateless_fold_in(key, tf.cast(critic, tf.int64))
    return tf.random.stateless_uniform([width], seed=seed)


def critic_orders(seed: Any, epoch: Any, ids: tf.Tensor, counts: tf.Tensor, most: int) -> tf.Tensor:
    """Each critic's positions [len(ids), most] in a random order: its counts[k] real rows first, then its
    padding; critic by critic, so that no more than one critic's draws and sort are held at once."""
    key = epoch_key(seed, epoch, 0)

    def order(critic_and_count):
        critic, count = critic_and_count
        draws = tf.where(tf.range(most) < count, critic_draws(key, critic, most), 2.0)
        return tf.cast(tf.argsort(draws), tf.int32)

    return tf.map_fn(order, (ids, counts), fn_output_signature=tf.int32, parallel_iterations=1)


def ceil_div(numerator: int, denominator: int) -> int:
    """numerator / denominator rounded up: the steps of an epoch of `numerator` rows in batches of `denominator`,
    the last batch holding the rows left over."""
    return -(-numerator // denominator)


@dataclasses.dataclass(frozen=True, eq=False)
class CriticRows:
    """Every critic's training rows, each row held once: maps [maps, rows,
    columns] holds the input through each input map, and critic k trains on
    rows indices[k, :counts[k]] of maps[map_of[k]] (indices padded to the
    longest). Critics of one fold share its indices, those of one input map
    its rows."""

    maps: tf.Tensor
    map_of: np.ndarray
    indices: tf.Tensor
    counts: np.ndarray


def without_autotune(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """The dataset with tf.data's autotuning off: these pipelines have a fixed prefetch and nothing to tune, and
    the autotuning thread's wake-ups delayed the end of an epoch (tests/BENCHMARKS.md, "Why the code is as it is")."""
    options = tf.data.Options()
    options.autotune.enabled = False
    options.experimental_optimization.apply_default_optimizations = False  # none applies; they cost 20 ms a pipeline
    return dataset.with_options(options)


# One epoch's chunks: (batches [critics, steps, batch_size, columns], batch_rows [steps]), see InMemoryRows.chunks
Chunks = Iterable[tuple[tf.Tensor, tf.Tensor]]


@dataclasses.dataclass(frozen=True, eq=False)
class TrainingRows:
    """Where each epoch's rows come from, for all the critics: InMemoryRows
    or StreamedRows, each with its own epochs(). held_out_rows and
    transform_parameters hold one entry per critic; training_counts each
    critic's training rows (each epoch every critic trains on as many as the
    smallest has)."""

    total_rows: int
    training_counts: list[int]
    held_out_rows: list[np.ndarray]
    transform_parameters: list[dict[str, Any]]
    batch_size: int
    seed: int
    n_epoch: int
    resampled_latent_dim: int  # columns of z_bar paired anew every epoch; 0 keeps the file's marginal half

    @property
    def critics(self) -> int:
        return len(self.training_counts)

    @property
    def rows_per_epoch(self) -> int:
        return min(self.training_counts)

    @property
    def steps_per_epoch(self) -> int:
        return ceil_div(self.rows_per_epoch, self.batch_size)

    def epochs(self, first_epoch: int, critic_ids: list[int]) -> Iterator[Chunks]:
        """For each epoch from first_epoch to n_epoch - 1, the chunks of the critics critic_ids, with a leading
        critic axis."""
        raise NotImplementedError

    def training_sample(self, critic: int) -> np.ndarray:
        """Samples (x, z) [rows, sample_width] of the critic's training rows, through its input map."""
        raise NotImplementedError


@dataclasses.dataclass(frozen=True, eq=False)
class InMemoryRows(TrainingRows):
    """The rows in memory, each input map's copy once (CriticRows). Its
    tf.data pipeline is made of two functions traced once per run
    (epoch_functions); a smaller stack of critics only assembles them anew."""

    critic_rows: CriticRows

    @classmethod
    def of_rows(
        cls,
        rows: np.ndarray,
        splits: list[tuple[np.ndarray, np.ndarray]],
        transforms: list[str],
        sample_width: int,
        batch_size: int,
        seed: int,
        n_epoch: int,
        resampled_latent_dim: int,
    ) -> InMemoryRows:
        """Per split (training, held_out) one critic per transform, critic s * transforms + t. Each input map is
        fitted on every row (a map of each column alone, it sees no pairing of x with z) and applied once."""
        kinds = list(dict.fromkeys(transforms))
        parameters = {kind: fit_transform_parameters(kind, rows, sample_width) for kind in kinds}
        maps = np.empty((len(kinds), *rows.shape), np.float32)
        for k, kind in enumerate(kinds):
            maps[k] = make_transform(kind, parameters[kind], sample_width)(rows)
        critics = [(split, kinds.index(transform)) for split in splits for transform in transforms]
        indices, counts = stacked_rows([training for (training, _), _ in critics])
        kind_of = np.array([kind for _, kind in critics])
        return cls(
            total_rows=len(rows),
            training_counts=[int(count) for count in counts],
            held_out_rows=[maps[kind, held_out] for (_, held_out), kind in critics],
            transform_parameters=[parameters[kinds[kind]] for _, kind in critics],
            batch_size=batch_size,
            seed=seed,
            n_epoch=n_epoch,
            resampled_latent_dim=resampled_latent_dim,
            critic_rows=CriticRows(tf.constant(maps), kind_of, tf.constant(indices.astype(np.int32)), counts),
        )

    def epochs(self, first_epoch: int, critic_ids: list[int]) -> Iterator[Chunks]:
        """Each epoch's chunks: one, or one per CHUNK_ROWS rows per critic of a longer epoch."""
        chunks = iter(self.chunks(first_epoch, critic_ids))
        per_epoch = self.chunk_layout(critic_ids)[2]
        for _ in range(first_epoch, self.n_epoch):
            yield itertools.islice(chunks, per_epoch)

    def training_sample(self, critic: int) -> np.ndarray:
        """Every training row of the critic, its joint half through its input map."""
        rows = self.critic_rows
        indices = rows.indices[critic, : rows.counts[critic]]
        return tf.gather(rows.maps[int(rows.map_of[critic])], indices).numpy()[:, : rows.maps.shape[-1] // 2]

    def chunk_layout(self, critic_ids: list[int]) -> tuple[int, int, int]:
        """(rows each critic trains on an epoch, steps a chunk, chunks an epoch) of the critics critic_ids: all
        train on as many rows as the smallest has, to step together (one with a row more leaves out another
        each epoch), in chunks of about CHUNK_ROWS rows per critic."""
        used = int(self.critic_rows.counts[critic_ids].min())
        steps = ceil_div(used, self.batch_size)
        chunk_steps = ceil_div(steps, ceil_div(steps * self.batch_size, CHUNK_ROWS))
        return used, chunk_steps, ceil_div(steps, chunk_steps)

    def chunks(self, first_epoch: int, critic_ids: list[int]) -> tf.data.Dataset:
        """A tf.data pipeline of every chunk of epochs first_epoch, ...,
        n_epoch - 1 for the critics critic_ids, side by side, each epoch
        freshly shuffled: (batches [critics, steps, batch_size, columns],
        the real rows of each step [steps]). The rows left after the full
        batches make one last batch, padded with rows the bound masks out,
        so every step has one shape. Chunks are gathered as they train: no
        epoch is held whole in memory."""
        used, chunk_steps, per_epoch = self.chunk_layout(critic_ids)
        ids = tf.constant(critic_ids, tf.int32)
        padding = max(0, ceil_div(used, self.batch_size) * self.batch_size - self.critic_rows.indices.shape[1])
        order_of, chunk = self.epoch_functions

        @tf.autograph.experimental.do_not_convert  # converting the pipeline's functions cost 0.24 s a pipeline
        def epoch_chunks(epoch):
            order = order_of(epoch, ids, padding)
            return tf.data.Dataset.range(per_epoch).map(
                tf.autograph.experimental.do_not_convert(lambda index: chunk(order, index, ids, used, chunk_steps))
            )

        return without_autotune(tf.data.Dataset.range(first_epoch, self.n_epoch).flat_map(epoch_chunks).prefetch(1))

    @functools.cached_property
    def epoch_functions(self) -> tuple[Any, Any]:
        """(order_of, chunk), traced once: an epoch's order of each critic's rows (its real rows first, in random
        order, then its padding), and a chunk of an epoch's batches in that order. With resampled_latent_dim, each
        row's z_bar is that of the row before it in the epoch's order (cyclically, among the critic's rows): fresh
        draws from the product of the marginals, every epoch."""
        critic_rows, batch_size, resampled = self.critic_rows, self.batch_size, self.resampled_latent_dim
        most, width = critic_rows.indices.shape[1], critic_rows.maps.shape[-1]
        counts_of, map_of = tf.constant(critic_rows.counts), tf.constant(critic_rows.map_of, tf.int32)
        scalar = tf.TensorSpec([], tf.int32)

        @tf.function(
            input_signature=[tf.TensorSpec([], tf.int64), tf.TensorSpec([None], tf.int32), scalar], autograph=False
        )
        def order_of(epoch, ids, padding):
            orders = critic_orders(self.seed, epoch, ids, tf.gather(counts_of, ids), most)
            return tf.pad(orders, [[0, 0], [0, padding]])

        @tf.function(
            input_signature=[tf.TensorSpec([None, None], tf.int32), tf.TensorSpec([], tf.int64)]
            + [tf.TensorSpec([None], tf.int32), scalar, scalar],
            autograph=False,
        )
        def chunk(order, index, ids, used, chunk_steps):
            indices, maps_of = tf.gather(critic_rows.indices, ids), tf.gather(map_of, ids)[:, None]

            def rows_at(positions):  # positions [critics, n] in each critic's list -> its rows, through its map
                row_ids = tf.gather(indices, positions, batch_dims=1)
                return tf.gather_nd(
                    critic_rows.maps, tf.stack([tf.broadcast_to(maps_of, tf.shape(row_ids)), row_ids], -1)
                )

            steps = (used + batch_size - 1) // batch_size
            first = tf.cast(index, tf.int32) * chunk_steps
            positions = first * batch_size + tf.range(tf.minimum(chunk_steps, steps - first) * batch_size)
            rows = rows_at(tf.gather(order, positions, axis=1))
            if resampled:
                counts = tf.gather(counts_of, ids)
                partners = tf.gather(order, tf.math.floormod(positions[None] - 1, counts[:, None]), batch_dims=1)
                rows = tf.concat([rows[..., :-resampled], rows_at(partners)[..., -resampled:]], -1)
            batch_rows = tf.minimum(batch_size, used - batch_size * tf.range(steps))
            return tf.reshape(rows, [tf.size(ids), -1, batch_size, width]), batch_rows[first : first + chunk_steps]

        return order_of, chunk


@dataclasses.dataclass(frozen=True, eq=False)
class StreamedRows(TrainingRows):
    """One critic's rows streamed from a binary cache (build_cache) in
    bounded memory: its training rows are the first training_counts[0] rows
    of the cache, its held-out rows a fixed block after them (so the file
    should be in random order), and its input map was fitted on a random
    sample of the training rows (of_cache)."""

    cache_path: str
    file_width: int
    shuffle_buffer: int
    transform: Callable[[np.ndarray], np.ndarray]  # cached rows -> mapped rows in the full layout

    @classmethod
    def of_cache(
        cls,
        cache_path: str,
        total_rows: int,
        file_width: int,
        sample_width: int,
        held_out: int,
        transform_kind: str,
        transform_sample: int,
        batch_size: int,
        seed: int,
        n_epoch: int,
        shuffle_buffer: int,
        resampled_latent_dim: int,
    ) -> StreamedRows:
        """The last `held_out` rows of the cache held out; the map fitted on about transform_sample rows."""
        training_rows = total_rows - held_out
        rng = np.random.default_rng(seed)
        keep = min(1.0, transform_sample / training_rows)
        sample = []
        for start in range(0, training_rows, SHARD_ROWS):
            shard = read_cached_rows(cache_path, file_width, start, min(SHARD_ROWS, training_rows - start))
            sample.append(shard[rng.random(len(shard)) < keep])
        parameters = fit_transform_parameters(
            transform_kind, full_layout(np.concatenate(sample), sample_width), sample_width
        )
        column_map = make_transform(transform_kind, parameters, sample_width)

        def transform(raw):
            return column_map(full_layout(raw, sample_width))

        held_out_rows = transform(read_cached_rows(cache_path, file_width, training_rows, held_out))
        return cls(
            total_rows=total_rows,
            training_counts=[training_rows],
            held_out_rows=[held_out_rows],
            transform_parameters=[parameters],
            batch_size=batch_size,
            seed=seed,
            n_epoch=n_epoch,
            resampled_latent_dim=resampled_latent_dim,
            cache_path=cache_path,
            file_width=file_width,
            shuffle_buffer=shuffle_buffer,
            transform=transform,
        )

    def training_sample(self, critic: int) -> np.ndarray:
        """The first shard of the training rows (the file should be in random order), through the input map."""
        first = read_cached_rows(self.cache_path, self.file_width, 0, min(SHARD_ROWS, self.training_counts[0]))
        mapped = self.transform(first)
        return mapped[:, : mapped.shape[1] // 2]

    def epochs(self, first_epoch: int, critic_ids: list[int]) -> Iterator[Chunks]:
        """Each epoch's chunks, one per window of shuffle_buffer rows (streamed_epoch); one critic: ids is [0]."""
        for epoch in range(first_epoch, self.n_epoch):
            yield streamed_epoch(
                self.cache_path,
                self.file_width,
                self.training_counts[0],
                self.batch_size,
                self.seed,
                epoch,
                self.shuffle_buffer,
                self.transform,
                self.resampled_latent_dim,
            )


def _parse_lines(lines, width):
    """Text lines of `width` numbers, one space apart (as numpy.savetxt
    writes them), -> [lines, width] float32. Anything else raises."""
    fields = tf.io.decode_csv(tf.strings.strip(lines), [tf.constant([], tf.float64)] * width, field_delim=" ")
    return tf.cast(tf.stack(fields, axis=1), tf.float32)


def build_cache(path: str, columns: int | tuple[int, ...], cache_dir: str) -> tuple[str, int, int]:
    """Converts the row file once into raw float32 rows in cache_dir, with a
    JSON description; reused while the source's size and mtime are those
    recorded. Returns (cache path, rows, width).

    Text as numpy.savetxt writes it (one space between numbers) is parsed
    by tf.io.decode_csv, many lines per call on every core, with no Python
    loop per line. Anything it refuses (other spacing, comments, blank
    lines, a bad token, NaN) is handed to load_rows, which either names the
    file and line at fault or reads what only it accepts, more slowly.
    """
    allowed = columns if isinstance(columns, tuple) else (columns,)
    os.makedirs(cache_dir, exist_ok=True)
    cache_path = os.path.join(cache_dir, os.path.basename(path) + ".f32")
    description_path = cache_path + ".json"
    try:
        source = os.stat(path)
    except OSError:
        load_rows(path, columns)  # raises the loader's message
    identity = {"source": os.path.abspath(path), "size": source.st_size, "mtime_ns": source.st_mtime_ns}
    try:
        with open(description_path) as stream:
            description = json.load(stream)
    except FileNotFoundError:
        description = None
    except (OSError, ValueError):
        raise InputError(f"{description_path}: cache description is corrupt; delete it to rebuild the cache") from None
    if description is not None and all(description.get(key) == value for key, value in identity.items()):
        expected = description["rows"] * description["width"] * 4
        size = os.path.getsize(cache_path) if os.path.exists(cache_path) else None
        if size != expected:
            raise InputError(
                f"{cache_path}: cache is corrupt ({size} bytes, expected {expected}); delete it to rebuild the cache"
            )
        return cache_path, description["rows"], description["width"]
    rows, width = _write_cache(path, columns, allowed, cache_path + ".partial")
    os.replace(cache_path + ".partial", cache_path)
    save_json(description_path, {**identity, "rows": rows, "width": width})
    return cache_path, rows, width


def _write_cache(path, columns, allowed, temporary):
    """Parses the row file into raw float32 rows in `temporary`; returns (rows, width)."""
    width, rows = _first_row_width(path), 0
    with open(temporary, "wb") as stream:
        try:
            if width not in allowed:
                raise ValueError
            chunks = without_autotune(
                tf.data.TextLineDataset(path)
                .batch(CACHE_LINES_PER_CHUNK)
                .map(
                    lambda lines: _parse_lines(lines, width), num_parallel_calls=os.cpu_count() or 1, deterministic=True
                )
            )
            for values in chunks:
                values = values.numpy()
                if not np.isfinite(values).all():
                    raise ValueError
                stream.write(values.tobytes())
                rows += len(values)
        except (ValueError, tf.errors.InvalidArgumentError):
            values = load_rows(path, columns)  # names the line at fault, or reads what only it accepts
            stream.seek(0)
            stream.truncate()
            stream.write(values.tobytes())
            rows, width = values.shape
    if rows == 0:
        os.unlink(temporary)
        raise InputError(f"{path}: no data rows")
    return rows, width


def _first_row_width(path):
    """How many numbers the first data line holds (None if there is none)."""
    with open(path, "rb") as stream:
        for line in stream:
            tokens = line.split(b"#", 1)[0].split()
            if tokens:
                return len(tokens)
    return None


def read_cached_rows(cache_path: str, width: int, first_row: int, count: int) -> np.ndarray:
    """Rows [first_row, first_row + count) of a cache, read from the file
    (not memory-mapped, so that they do not stay resident)."""
    return np.fromfile(cache_path, dtype=np.float32, count=count * width, offset=first_row * width * 4).reshape(
        count, width
    )


def streamed_epoch(
    cache_path: str,
    width: int,
    training_rows: int,
    batch_size: int,
    seed: int,
    epoch: int,
    shuffle_buffer: int,
    transform: Callable[[np.ndarray], np.ndarray],
    resample_latent_dim: int = 0,
) -> tf.data.Dataset:
    """One epoch of the training rows [0, training_rows) of a cache, as a
    tf.data pipeline of (batches, batch_rows) chunks for one critic, as
    InMemoryRows.chunks makes them (every batch full), in bounded memory.

    The shards of SHARD_ROWS rows are taken in an order fixed by (seed,
    epoch) and grouped into windows of about shuffle_buffer rows; each
    window is read, mapped by `transform`, shuffled as a whole and cut into
    batches in NumPy (one tf.data element per window, prepared while the
    previous one trains). This approximates a full shuffle: a batch draws
    from the few shards of its window rather than from the whole file. The
    rows left over when a window is not a multiple of batch_size are
    dropped, different ones each epoch. With resample_latent_dim, each
    batch's z_bar is moved one row along, pairing every x_bar with the z_bar
    of another row of its batch.
    """
    shard_starts = np.arange(0, training_rows, SHARD_ROWS)
    shards_per_window = max(1, shuffle_buffer // SHARD_ROWS)
    order = np.random.default_rng([seed, epoch]).permutation(len(shard_starts))
    windows = [
        shard_starts[order[first : first + shards_per_window]] for first in range(0, len(order), shards_per_window)
    ]

    def window_batches(index):
        starts = windows[int(index)]
        rows = np.concatenate(
            [read_cached_rows(cache_path, width, start, min(SHARD_ROWS, training_rows - start)) for start in starts]
        )
        rows = transform(rows)[np.random.default_rng([seed, epoch, int(index)]).permutation(len(rows))]
        steps = len(rows) // batch_size
        return rows[: steps * batch_size].reshape(steps, batch_size, rows.shape[1])

    @tf.autograph.experimental.do_not_convert
    def element(index):
        full = tf.numpy_function(window_batches, [index], tf.float32, stateful=False)
        full = tf.ensure_shape(full, [None, batch_size, None])
        if resample_latent_dim:
            full = tf.concat(
                [full[:, :, :-resample_latent_dim], tf.roll(full[:, :, -resample_latent_dim:], 1, axis=1)], axis=2
            )
        return full[None], tf.fill(tf.shape(full)[:1], batch_size)  # one critic, every batch full

    return without_autotune(tf.data.Dataset.range(len(windows)).map(element).prefetch(1))


# Invertible maps of one coordinate: applied to x or z, they leave I(X; Z) as it was.
DISTORTIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "identity": lambda values: values,
    "cube": lambda values: values**3,
    "half_cube": lambda values: values * np.sqrt(np.abs(values)),
    "asinh": np.arcsinh,
}


def make_known_mi_rows(
    n_rows: int,
    mi_nats: float,
    seed: int = 0,
    data_dim: int = 10,
    correlation: float = 0.0,
    x_distortion: str = "identity",
    z_distortion: str = "identity",
) -> tuple[np.ndarray, dict]:
    """Rows in the 22-column layout whose true I(X; Z) is `mi_nats`.

    x ~ N(0, S) with S = (1 - correlation) I + correlation (all ones), and
    z = a.x + e with e ~ N(0, 1), so I(X; Z) = 0.5 ln(1 + a'Sa); a is along
    (1, ..., 1), scaled so that a'Sa = exp(2 I) - 1 (a = 0 for I = 0: z
    independent of x). Each coordinate of x, and z, may then be bent by one
    of DISTORTIONS, which leaves the MI unchanged. As in the reference's
    sample, the marginal half repeats x and draws z_bar independently from
    z's marginal. Returns (rows, description) with description["true_mi_nats"].
    """
    rng = np.random.default_rng(seed)
    covariance = (1.0 - correlation) * np.eye(data_dim) + correlation * np.ones((data_dim, data_dim))
    x = rng.standard_normal((n_rows, data_dim)) @ np.linalg.cholesky(covariance).T
    direction = np.ones(data_dim)
    signal = math.expm1(2.0 * mi_nats)
    weights = direction * math.sqrt(signal / (direction @ covariance @ direction))
    z = x @ weights + rng.standard_normal(n_rows)
    z_bar = rng.standard_normal(n_rows) * math.sqrt(1.0 + signal)
    bend_x, bend_z = DISTORTIONS[x_distortion], DISTORTIONS[z_distortion]
    rows = np.column_stack([bend_x(x), bend_z(z), bend_x(x), bend_z(z_bar)])
    description = {
        "true_mi_nats": mi_nats,
        "rows": n_rows,
        "seed": seed,
        "correlation": correlation,
        "x_distortion": x_distortion,
        "z_distortion": z_distortion,
        "distribution": (
            f"x ~ N(0, S_{data_dim}), S = {1 - correlation:g} I + {correlation:g} ones; z = a.x + e, e ~ N(0, 1), "
            f"a_i = {weights[0]:.6g}; x bent by {x_distortion}, z by {z_distortion}; "
            "marginal half: x repeated, z_bar drawn independently from z's marginal"
        ),
        "true_mi_formula": "0.5 * ln(1 + a'Sa)",
    }
    return rows, description


def sidecar_path(path: str) -> str:
    """The JSON description beside a row file: data/x.dat -> data/x.json."""
    return os.path.splitext(path)[0] + ".json"


def read_sidecar(path: str) -> dict[str, Any] | None:
    """The row file's JSON description, or None when it has none."""
    try:
        with open(sidecar_path(path)) as stream:
            return json.load(stream)
    except (OSError, ValueError):
        return None


def write_atomically(path: str, write: Callable[[Any], object], binary: bool = False) -> None:
    """Calls write(stream) on a temporary file, then renames it to `path`.

    Readers see either the previous complete file or the new one, never a
    half-written one, even if the process dies mid-write.
    """
    directory = os.path.dirname(os.path.abspath(path))
    descriptor, temporary = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=os.path.basename(path))
    try:
        with os.fdopen(descriptor, "wb" if binary else "w") as stream:
            write(stream)
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


def save_rows(path: str, rows: np.ndarray) -> None:
    """Writes rows as numpy.savetxt does by default (%.18e), atomically."""
    write_atomically(path, lambda stream: np.savetxt(stream, rows))


def save_json(path: str, content: Any) -> None:
    write_atomically(path, lambda stream: stream.write(json.dumps(content, indent=2) + "\n"))


# Run outputs: the results files, the lock that keeps runs apart, and what --resume checks
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


class OutputError(OSError):
    """The results could not be written; the files already there are the
    previous complete ones."""


def require_matplotlib() -> None:
    if importlib.util.find_spec("matplotlib") is None:
        fail("--plot needs matplotlib, which is not installed: pip install matplotlib")


def save_curves(
    output_dir: str,
    training: np.ndarray,
    joint: np.ndarray,
    marginal: np.ndarray,
    held_out: np.ndarray | None,
    plot: bool,
    truth: float | None,
) -> None:
    """The per-epoch files of one or more critics into output_dir, from
    their figures [epochs, critics] (NaN where a critic did not train;
    held_out None without held-out rows): a row per epoch that one of them
    trained, each the mean of those that trained."""
    epochs = int(np.sum(~np.isnan(training).all(axis=1)))  # a dropped critic's epochs
    training, joint, marginal = training[:epochs], joint[:epochs], marginal[:epochs]
    save_rows(os.path.join(output_dir, ESTIMATE_FILE), np.nanmean(training, axis=1))
    parts = np.column_stack([np.nanmean(joint, axis=1), np.nanmean(marginal, axis=1)])
    save_rows(os.path.join(output_dir, PARTS_FILE), parts)
    if held_out is not None:
        held_out = held_out[:epochs]
        save_rows(os.path.join(output_dir, HELD_OUT_FILE), np.nanmean(held_out, axis=1))
    if plot and epochs:
        save_plot(os.path.join(output_dir, PLOT_FILE), training, held_out, truth)


def save_plot(path: str, training: np.ndarray, held_out: np.ndarray | None, truth: float | None) -> None:
    """The bound per epoch, from figures [epochs, critics]: with one critic
    on its training and held-out rows; with several, each critic's held-out
    curve and their means."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = np.arange(1, len(training) + 1)
    critics = training.shape[1]
    held_out = np.full_like(training, np.nan) if held_out is None else held_out
    has_held_out = not np.isnan(held_out).all()
    figure, axes = plt.subplots(figsize=(7, 4))
    if critics > 1 and has_held_out:
        for k in range(critics):
            axes.plot(
                epochs,
                held_out[:, k],
                color="tab:orange",
                alpha=0.3,
                linewidth=0.8,
                label=f"held-out rows, each of {critics} critics" if k == 0 else None,
            )
    mean_of = f"mean of {critics} critics, " if critics > 1 else ""
    axes.plot(epochs, np.nanmean(training, axis=1), color="tab:blue", label=f"{mean_of}training rows")
    if has_held_out:
        axes.plot(epochs, np.nanmean(held_out, axis=1), color="tab:orange", label=f"{mean_of}held-out rows")
    if truth is not None:
        axes.axhline(truth, color="black", linestyle="--", label=f"true MI {truth:g}")
    axes.set(xlabel="epoch", ylabel="bound on I(X; Z), nats", title="MINE estimate per epoch")
    axes.legend()
    figure.tight_layout()
    write_atomically(path, lambda stream: figure.savefig(stream, format="png", dpi=100), binary=True)
    plt.close(figure)


def write_critic_files(
    output_dir: str, model: tf.keras.Model, transform_kind: str, transform_parameters: dict[str, Any]
) -> None:
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


LOCK_FILE = ".lock"


def acquire_lock(output_dir: str) -> str:
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
                fail(
                    f"--output_dir {output_dir}: another run (process {holder}) is writing there; wait for it or "
                    "choose another --output_dir"
                )
            try:
                os.unlink(path)  # stale: its process is gone
            except FileNotFoundError:
                pass
            continue
        with os.fdopen(descriptor, "w") as stream:
            stream.write(f"{os.getpid()}\n")
        return path
    fail(f"--output_dir {output_dir}: cannot take its lock file {path}")


def process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def input_digest(path: str | None, arrays: tuple[np.ndarray, np.ndarray] | None = None) -> str:
    """The SHA-256 of the input, the arrays x and z (given) or the file at path, which --resume must find
    unchanged."""
    if arrays is not None:
        return hashlib.sha256(b"".join(np.ascontiguousarray(array).tobytes() for array in arrays)).hexdigest()
    assert path is not None
    with open(path, "rb") as stream:
        return hashlib.file_digest(stream, "sha256").hexdigest()  # in blocks: the file may exceed memory


def check_resumable(checkpoint_dir: str, identity: dict[str, Any], input_name: str, from_file: bool) -> None:
    """Ends the run unless checkpoint_dir holds a checkpoint of the same identity (input_sha256 and the
    settings, as flags name them); input_name names the input, a file or (from_file False) the arrays."""
    try:
        with open(os.path.join(checkpoint_dir, RUN_IDENTITY_FILE)) as stream:
            saved = json.load(stream)
    except (OSError, ValueError):
        fail(f"--resume: no checkpoint to resume in {checkpoint_dir}")
    if tf.train.latest_checkpoint(checkpoint_dir) is None:
        fail(f"--resume: no checkpoint to resume in {checkpoint_dir}")
    if saved["input_sha256"] != identity["input_sha256"]:
        fail(
            f"--resume: {input_name} {'is' if from_file else 'are'} not the input file the checkpoint in "
            f"{checkpoint_dir} was trained on"
        )
    for name, value in identity.items():
        if saved.get(name) != value:
            fail(f"--resume: the checkpoint in {checkpoint_dir} was made with --{name} {saved.get(name)}, not {value}")


NATS_PER_BIT = math.log(2.0)

ESTIMATE_KEYS = (
    "mi_estimate",
    "mi_certifiable",
    "mi_stderr",
    "mi_ci95",
    "mi_lower_95",
    "fold_estimates",
    "held_out_last_epoch",
    "training_rows_estimate",
)


def in_units(summary: dict[str, Any], units: str) -> None:
    """summary's estimates, computed in nats, in `units` (true_mi_nats stays in nats)."""
    if units == "nats":
        return
    for key in ESTIMATE_KEYS:
        value = summary.get(key)
        if isinstance(value, list):
            summary[key] = [None if each is None else each / NATS_PER_BIT for each in value]
        elif value is not None:
            summary[key] = value / NATS_PER_BIT


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write a MINE input file whose true mutual information is known.")
    parser.add_argument("--mi", type=float, default=1.0, help="true I(X; Z) in nats (default: %(default)s)")
    parser.add_argument("--rows", type=int, default=4000, help="number of rows (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    parser.add_argument(
        "--correlation",
        type=float,
        default=0.0,
        help="correlation between any two coordinates of x, in [0, 1) (default: %(default)s)",
    )
    parser.add_argument(
        "--x_distortion",
        choices=sorted(DISTORTIONS),
        default="identity",
        help="invertible map applied to each coordinate of x (default: %(default)s)",
    )
    parser.add_argument(
        "--z_distortion",
        choices=sorted(DISTORTIONS),
        default="identity",
        help="invertible map applied to z (default: %(default)s)",
    )
    parser.add_argument(
        "--output",
        default="data/input_set.dat",
        help="row file to write; a .json description goes beside it (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    if args.mi < 0:
        parser.error("argument --mi: must be zero or more")
    if args.rows < 1:
        parser.error("argument --rows: must be a positive integer")
    if not 0 <= args.correlation < 1:
        parser.error("argument --correlation: must be in [0, 1)")
    rows, description = make_known_mi_rows(
        args.rows, args.mi, args.seed, 10, args.correlation, args.x_distortion, args.z_distortion
    )
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    save_rows(args.output, rows)
    save_json(sidecar_path(args.output), description)
    print(f"wrote {args.rows} rows with true MI {args.mi} nats to {args.output} and {sidecar_path(args.output)}")


if __name__ == "__main__":
    main()
