"""Speed benchmark: training rows per second, side by side in one run.

Not collected by pytest. Run from the repository root:

    python tests/bench_speed.py            # add --million for a 1,000,000-row run

The first table measures the training calls alone, for each batch size, on
the default network (11 -> 128 -> 128 -> 1 on both halves of each row):
  (a) the project's loop: an epoch's chunk (up to CHUNK_ROWS rows) per
      call to an XLA-compiled tf.function (CompiledCritics.compiled_steps),
      and the same without XLA;
  (b) the reference's loop: the same training step as a tf.function, called
      from Python once per batch of a tf.data dataset;
  (c) the float32 matrix-product ceiling: NumPy timing the forward and
      backward matrix products of one batch at the network's shapes.
Ratios a/b and a/c are printed with the first call's extra cost (tracing
and compiling) of (a).

The second table measures whole runs, each mi_main process run twice and
the second timed, so that XLA's persistent compile cache is warm (in a
scratch folder), as it is on a machine after its first run of a shape:
  - the default run on the shipped data, and a default estimate on 10,000
    generated rows (Gaussian, true MI 1.0), wall time against the wall time
    of importing TensorFlow and running one operation;
  - that run's own rate (samples_per_second in summary.json) against its
    training calls' rate (training_rows_per_second);
  - 100,000 rows against 10,000: wall time and the estimate's error
    (with --million, 1,000,000 rows too);
  - 15-epoch runs on 10,000 rows with --val_fraction 0, timed from the
    call of mi_main.main() in a second process, against a per-batch Python
    loop in the reference's style (SGD, no XLA), model building and tracing
    included in both.
"""

import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import tensorflow as tf  # noqa: E402
from epoch_rows import epoch_batches  # noqa: E402

import mi_main  # noqa: E402  (sets TensorFlow's log level before importing it)
from mi_data_processing import make_known_mi_rows, save_rows  # noqa: E402
from mi_layers import training_flops_per_row  # noqa: E402
from mi_model import MineModel  # noqa: E402

SAMPLE_WIDTH, HID_WIDTH = 11, 128
FLOPS_PER_ROW = training_flops_per_row(SAMPLE_WIDTH, HID_WIDTH, 1)
# Rows per timed epoch: enough for about a second of work at each batch size.
ROWS = {2: 8_192, 64: 65_536, 512: 262_144, 4096: 262_144}


def project_loop(rows, batch_size, jit=True):
    """Returns (rows/s after the first chunk, the first chunk's extra seconds): an epoch of more than
    CHUNK_ROWS rows comes in chunks, each one compiled call."""
    config = mi_main.Config(candidates="rank:tanh", lr=1e-4, jit=jit)
    compiled = mi_main.compiled_critics(config.critic_settings, 1, tf.distribute.get_strategy(), 0)
    compiled.set_learning_rate(config.lr, config.lr, 1)
    seconds, chunk_rows = [], []
    for batches, batch_rows in epoch_batches([rows], batch_size, 0, 0, 3, resample_latent_dim=1):
        start = time.perf_counter()
        compiled.compiled_steps(batches, batch_rows).numpy()
        seconds.append(time.perf_counter() - start)
        chunk_rows.append(int(np.sum(batch_rows)))
    steady = max(rows / second for rows, second in zip(chunk_rows[1:], seconds[1:], strict=True))
    return steady, seconds[0] - chunk_rows[0] / steady


def per_batch_python_loop(rows, batch_size, epochs=None, optimizer=None):
    """The reference's way: Python calls the tf.function once per batch.
    Without `epochs`: rows/s of one epoch after tracing. With `epochs`:
    rows/s of that many epochs, building the model and tracing included."""
    start = time.perf_counter()
    tf.keras.utils.set_random_seed(0)
    model = MineModel(10, 1, HID_WIDTH, 1, "mine", activation="tanh")
    optimizer = optimizer or tf.keras.optimizers.Adam(1e-4)
    optimizer.build(model.trainable_variables)
    train_step = tf.function(mi_main.make_train_step(model, optimizer))
    dataset = tf.data.Dataset.from_tensor_slices(rows).shuffle(len(rows), seed=0).batch(batch_size).prefetch(2)
    if epochs:
        for _ in range(epochs):
            for batch in dataset:
                result = train_step(batch[None])
        result.numpy()
        return epochs * len(rows) / (time.perf_counter() - start)
    for batch in dataset.take(3):  # trace first
        train_step(batch[None]).numpy()
    start = time.perf_counter()
    for batch in dataset:
        result = train_step(batch[None])
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


def run_seconds(command, environment=None):
    start = time.perf_counter()
    subprocess.run(command, check=True, cwd=REPO, stdout=subprocess.DEVNULL, env=environment)
    return time.perf_counter() - start


def timed_main(argv, environment=None):
    """Seconds of mi_main.main(argv) in a fresh process, TensorFlow's import
    excluded, and the run's summary (argv must name an --output_dir)."""
    code = (
        "import sys, time, mi_main; start = time.perf_counter(); mi_main.main(sys.argv[1:]); "
        "print(time.perf_counter() - start)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, *argv], check=True, cwd=REPO, capture_output=True, text=True, env=environment
    )
    with open(os.path.join(argv[argv.index("--output_dir") + 1], mi_main.SUMMARY_FILE)) as stream:
        return float(result.stdout.split()[-1]), json.load(stream)


def known_rows_file(scratch, n_rows):
    path = os.path.join(scratch, f"gauss-{n_rows}.dat")
    save_rows(path, make_known_mi_rows(n_rows, 1.0, seed=0)[0])
    return path


def whole_runs(scratch, million=False):
    """Rows of the whole-run table: (measure, project, reference point, ratio, target). Every mi_main
    process runs twice, the second timed: XLA's persistent cache (here in the scratch folder) is warm,
    as on any machine after its first run of a shape."""
    environment = {**os.environ, "MINE_XLA_CACHE": os.path.join(scratch, "xla")}

    def warm_seconds(command):
        run_seconds(command, environment)
        return run_seconds(command, environment)

    import_seconds = min(
        run_seconds([sys.executable, "-c", "import tensorflow as tf; tf.constant(1.0) + 1"]) for _ in range(2)
    )
    default = os.path.join(scratch, "default")
    default_seconds = warm_seconds([sys.executable, "mi_main.py", "--quiet", "--output_dir", default])
    with open(os.path.join(default, mi_main.SUMMARY_FILE)) as stream:
        summary = json.load(stream)
    table = [
        (
            "default run on the shipped data: wall s / TensorFlow import and one op s",
            f"{default_seconds:.1f}",
            f"{import_seconds:.1f}",
            default_seconds / import_seconds,
            "<= 2.0",
        ),
        (
            "default run: whole-run rows/s / training-call rows/s",
            f"{summary['samples_per_second']:,.0f}",
            f"{summary['training_rows_per_second']:,.0f}",
            summary["samples_per_second"] / summary["training_rows_per_second"],
            ">= 0.6",
        ),
    ]
    sizes = (10_000, 100_000, 1_000_000) if million else (10_000, 100_000)
    seconds, estimates = {}, {}
    for n_rows in sizes:
        command = [sys.executable, "mi_main.py", "--quiet", "--input", known_rows_file(scratch, n_rows)]
        seconds[n_rows] = warm_seconds([*command, "--output_dir", os.path.join(scratch, f"rows-{n_rows}")])
        with open(os.path.join(scratch, f"rows-{n_rows}", mi_main.SUMMARY_FILE)) as stream:
            estimates[n_rows] = json.load(stream)["mi_estimate"]
    table += [
        (
            "10,000-row default estimate: wall s / TensorFlow import and one op s",
            f"{seconds[10_000]:.1f}",
            f"{import_seconds:.1f}",
            seconds[10_000] / import_seconds,
            "<= 3",
        ),
        (
            "100,000 rows / 10,000 rows: wall s",
            f"{seconds[100_000]:.1f}",
            f"{seconds[10_000]:.1f}",
            seconds[100_000] / seconds[10_000],
            "<= 1.5",
        ),
        (
            "100,000 rows / 10,000 rows: error of the estimate (true MI 1.0)",
            f"{estimates[100_000] - 1:+.3f}",
            f"{estimates[10_000] - 1:+.3f}",
            abs(estimates[100_000] - 1) / abs(estimates[10_000] - 1),
            "<= 1",
        ),
    ]
    if million:
        table.append(
            (
                "1,000,000 rows / 10,000 rows: wall s",
                f"{seconds[1_000_000]:.1f}",
                f"{seconds[10_000]:.1f}",
                seconds[1_000_000] / seconds[10_000],
                "(stated)",
            )
        )
    rows, _ = make_known_mi_rows(10_000, 1.0, seed=0)
    path = os.path.join(scratch, "rows.dat")
    save_rows(path, rows)
    for batch_size, target in ((64, ">= 2"), (512, ">= 1.5")):
        argv = [
            "--input",
            path,
            "--val_fraction",
            "0",
            "--n_epoch",
            "15",
            "--batch_size",
            str(batch_size),
            "--quiet",
            "--output_dir",
            os.path.join(scratch, f"short-{batch_size}"),
        ]
        timed_main(argv, environment)
        project = 15 * len(rows) / timed_main(argv, environment)[0]
        plain = per_batch_python_loop(
            rows[:, :22].astype(np.float32), batch_size, epochs=15, optimizer=tf.keras.optimizers.SGD(0.001)
        )
        table.append(
            (
                f"15 epochs of 10,000 rows, batch {batch_size}, second process: rows/s / per-batch Python loop",
                f"{project:,.0f}",
                f"{plain:,.0f}",
                project / plain,
                target,
            )
        )
    return table


def main():
    print(
        f"TensorFlow {tf.__version__}, NumPy {np.__version__}, {os.cpu_count()} CPUs; "
        f"{FLOPS_PER_ROW / 1e3:.0f} kFLOP per training row"
    )
    print(
        "| batch | (a) project rows/s | (a) without XLA | (b) per-batch Python rows/s | (c) matmul ceiling rows/s "
        "| a/b | a/c | (a) GFLOP/s | (a) first-call extra s |"
    )
    print("|" + " --- |" * 9, flush=True)
    for batch_size, n_rows in ROWS.items():
        rows = np.random.default_rng(batch_size).standard_normal((n_rows, 2 * SAMPLE_WIDTH)).astype(np.float32)
        project, first_epoch_extra = project_loop(rows, batch_size)
        without_xla, _ = project_loop(rows, batch_size, jit=False)
        plain = per_batch_python_loop(rows, batch_size)
        ceiling = matmul_ceiling(batch_size, max(1, n_rows // batch_size // 4))
        print(
            f"| {batch_size} | {project:,.0f} | {without_xla:,.0f} | {plain:,.0f} | {ceiling:,.0f} | "
            f"{project / plain:.2f} | "
            f"{project / ceiling:.2f} | {project * FLOPS_PER_ROW / 1e9:.1f} | {first_epoch_extra:.2f} |",
            flush=True,
        )
    print("\n| whole run | project | reference point | ratio | target |")
    print("|" + " --- |" * 5, flush=True)
    with tempfile.TemporaryDirectory() as scratch:
        for measure, project, reference, ratio, target in whole_runs(scratch, "--million" in sys.argv):
            print(f"| {measure} | {project} | {reference} | {ratio:.2f} | {target} |", flush=True)


if __name__ == "__main__":
    main()
