"""Input for MINE: read and check the row file, shuffle and batch it every
epoch, and make files whose true mutual information is known.

A row holds 2 * (data_dim + latent_dim) numbers: the joint half (x, z) then
the marginal half (x_bar, z_bar), as the reference's files do
(whitespace-separated text, as numpy.savetxt writes it).

Run as a script it writes such a file with a chosen MI:

    python mi_data_processing.py --mi 1.0 --rows 4000 --seed 0 --output data/input_set.dat
"""

import argparse
import json
import math
import os
import tempfile

import numpy as np
import tensorflow as tf


class InputError(ValueError):
    """A problem with the input file; the message names the file and line."""


def load_rows(path, columns):
    """Reads the row file at `path` as a float32 array of shape [rows, columns].

    Blank lines and text after '#' are skipped; CRLF line ends are fine.
    Raises InputError naming the file (and line) for anything else.
    """
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

    values, line_numbers = [], []
    for line_number, line in enumerate(text.splitlines(), start=1):
        tokens = line.split("#", 1)[0].split()
        if not tokens:
            continue
        if len(tokens) != columns:
            raise InputError(f"{path}, line {line_number}: {len(tokens)} columns, expected {columns}")
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


def _is_number(token):
    try:
        float(token)
    except ValueError:
        return False
    return True


def epoch_order(n_rows, seed, epoch):
    """A permutation of range(n_rows) fixed by (seed, epoch) alone.

    Stateless, so a run resumed at any epoch sees the same orders as an
    uninterrupted one.
    """
    seed_pair = tf.stack([tf.cast(seed, tf.int64), tf.cast(epoch, tf.int64)])
    keys = tf.random.stateless_uniform([n_rows], seed=seed_pair)
    return tf.argsort(keys)


def epoch_batches(rows, batch_size, seed, first_epoch, n_epoch):
    """A tf.data pipeline with one element per epoch, freshly shuffled.

    Each element is (full_batches, last_batch): the epoch's rows in a new
    order, cut into [steps, batch_size, columns] plus the [remainder, columns]
    rows left over, so that every row is used exactly once per epoch. A whole
    epoch per element lets the training loop run in one TensorFlow call;
    prefetch shuffles the next epoch while this one trains.
    """
    rows = tf.convert_to_tensor(rows)
    n_rows, columns = rows.shape
    steps = n_rows // batch_size

    def one_epoch(epoch):
        shuffled = tf.gather(rows, epoch_order(n_rows, seed, epoch))
        full = tf.reshape(shuffled[: steps * batch_size], [steps, batch_size, columns])
        return full, shuffled[steps * batch_size :]

    return tf.data.Dataset.range(first_epoch, n_epoch).map(one_epoch).prefetch(1)


def make_known_mi_rows(n_rows, mi_nats, seed=0, data_dim=10):
    """Rows in the 22-column layout whose true I(X; Z) is `mi_nats`.

    x ~ N(0, I), z = a.x + e with e ~ N(0, 1), so I(X; Z) = 0.5 ln(1 + |a|^2);
    |a|^2 = exp(2 I) - 1 spread evenly over the coordinates. As in the
    reference's sample, the marginal half repeats x and draws z_bar
    independently from z's marginal N(0, 1 + |a|^2).
    Returns (rows, description) where description holds true_mi_nats.
    """
    rng = np.random.default_rng(seed)
    signal = math.expm1(2.0 * mi_nats)
    weights = np.full(data_dim, math.sqrt(signal / data_dim))
    x = rng.standard_normal((n_rows, data_dim))
    z = x @ weights + rng.standard_normal(n_rows)
    z_bar = rng.standard_normal(n_rows) * math.sqrt(1.0 + signal)
    rows = np.column_stack([x, z, x, z_bar])
    description = {
        "true_mi_nats": mi_nats,
        "rows": n_rows,
        "seed": seed,
        "distribution": (
            f"x ~ N(0, I_{data_dim}); z = a.x + e, e ~ N(0, 1), a_i = {weights[0]:.6g}; "
            "marginal half: x repeated, z_bar drawn independently from N(0, 1 + |a|^2)"
        ),
        "true_mi_formula": "0.5 * ln(1 + |a|^2)",
    }
    return rows, description


def sidecar_path(path):
    """The JSON description beside a row file: data/x.dat -> data/x.json."""
    return os.path.splitext(path)[0] + ".json"


def read_sidecar(path):
    """The row file's JSON description, or None when it has none."""
    try:
        with open(sidecar_path(path)) as stream:
            return json.load(stream)
    except (OSError, ValueError):
        return None


def write_atomically(path, write):
    """Calls write(stream) on a temporary file, then renames it to `path`.

    Readers see either the previous complete file or the new one, never a
    half-written one, even if the process dies mid-write.
    """
    directory = os.path.dirname(os.path.abspath(path))
    descriptor, temporary = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=os.path.basename(path))
    try:
        with os.fdopen(descriptor, "w") as stream:
            write(stream)
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


def save_rows(path, rows):
    """Writes rows as numpy.savetxt does by default (%.18e), atomically."""
    write_atomically(path, lambda stream: np.savetxt(stream, rows))


def save_json(path, content):
    write_atomically(path, lambda stream: stream.write(json.dumps(content, indent=2) + "\n"))


def main(argv=None):
    parser = argparse.ArgumentParser(description="Write a MINE input file whose true mutual information is known.")
    parser.add_argument("--mi", type=float, default=1.0, help="true I(X; Z) in nats (default: %(default)s)")
    parser.add_argument("--rows", type=int, default=4000, help="number of rows (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    parser.add_argument("--output", default="data/input_set.dat", help="row file to write; a .json description goes beside it (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.mi < 0:
        parser.error("argument --mi: must be zero or more")
    if args.rows < 1:
        parser.error("argument --rows: must be a positive integer")
    rows, description = make_known_mi_rows(args.rows, args.mi, args.seed)
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    save_rows(args.output, rows)
    save_json(sidecar_path(args.output), description)
    print(f"wrote {args.rows} rows with true MI {args.mi} nats to {args.output} and {sidecar_path(args.output)}")


if __name__ == "__main__":
    main()
