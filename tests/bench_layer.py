"""The Keras layer mi_model.MutualInformation: what a training step costs with it, and how stable minimize is.

Not collected by pytest. Run from the repository root:

    python tests/bench_layer.py cost                  # a Dense 64 encoder, batch 256: seconds a step, without and with
    python tests/bench_layer.py stability --seeds 3   # the nuisance task (tests/encoders.py) under each option

cost: the model is x [32] -> Dense(64, relu) -> Dense(1), trained on mean squared error; with the layer,
MutualInformation(maximize) sits on (the 64 encoded units, the target). Both are trained in the same process,
interleaved, `--repeats` times, each time for one warm-up epoch and then `--epochs` timed ones; the table gives
the medians and their ratio, with XLA (Keras's default here) and without.

stability: minimize on the nuisance task with each option (critic_steps 1 is gradient reversal, 5 alternates)
and learning rate; the exact I(z; s) after every epoch, summarized over epochs 10 to the last: its largest
value, its mean, how many epochs were above 0.05 nats, and the last epoch's I(z; s) and corr(z, u)^2.
"""

import argparse
import os
import statistics
import sys
import time

import keras
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from encoders import BATCH_ROWS, nuisance_mi, nuisance_model, nuisance_rows  # noqa: E402

from mi_model import MutualInformation  # noqa: E402

COST_ROWS = 25_600  # 100 steps an epoch


def cost_model(layer, jit_compile, hid_width):
    x, y = keras.Input((32,)), keras.Input((1,))
    encoded = keras.layers.Dense(64, activation="relu")(x)
    if layer:
        encoded = MutualInformation("maximize", hid_width=hid_width, seed=1)([encoded, y])
    model = keras.Model([x, y], keras.layers.Dense(1)(encoded))
    model.compile(optimizer="adam", loss="mse", jit_compile=jit_compile)
    return model


def seconds_a_step(model, x, y, epochs):
    model.fit([x, y], y, epochs=1, batch_size=BATCH_ROWS, verbose=0)  # traced and compiled
    start = time.perf_counter()
    model.fit([x, y], y, epochs=epochs, batch_size=BATCH_ROWS, verbose=0)
    return (time.perf_counter() - start) / (epochs * len(x) // BATCH_ROWS)


def cost(args):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((COST_ROWS, 32)).astype(np.float32)
    y = (x[:, :1] * x[:, 1:2] + 0.1 * rng.standard_normal((COST_ROWS, 1))).astype(np.float32)
    print(f"{'XLA':>5} {'without (ms a step)':>20} {'with (ms a step)':>17} {'ratio':>6}")
    for jit_compile in (True, False):
        times = {False: [], True: []}
        for _ in range(args.repeats):
            for layer in (False, True):
                times[layer].append(seconds_a_step(cost_model(layer, jit_compile, args.hid_width), x, y, args.epochs))
        without, with_layer = statistics.median(times[False]), statistics.median(times[True])
        print(f"{str(jit_compile):>5} {1e3 * without:20.3f} {1e3 * with_layer:17.3f} {with_layer / without:6.2f}")


def nuisance_trace(seed, learning_rate, epochs, **layer_args):
    """The exact (I(z; s), corr(z, u)^2) after each epoch of minimize on 10,000 rows."""
    keras.utils.set_random_seed(seed)
    x, s, _ = nuisance_rows(10_000, seed)
    model, encoder = nuisance_model(seed=1, **layer_args)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss="mse")
    trace = []
    for _ in range(epochs):
        model.fit([x, s], x, epochs=1, batch_size=BATCH_ROWS, verbose=0)
        trace.append(nuisance_mi(encoder.get_weights()[0]))
    return trace


def stability(args):
    columns = ("max I", "mean I", "> 0.05", "last I", "corr^2")
    print(f"{'critic_steps':>12} {'lr':>6} {'seed':>4} " + " ".join(f"{name:>7}" for name in columns))
    for learning_rate in (0.01, 0.003):
        for critic_steps in (1, 5):
            for seed in range(args.seeds):
                trace = nuisance_trace(seed, learning_rate, args.epochs, critic_steps=critic_steps)
                late = [nuisance for nuisance, _ in trace[9:]]
                print(
                    f"{critic_steps:12d} {learning_rate:6.3f} {seed:4d} {max(late):7.3f} {np.mean(late):7.4f} "
                    f"{sum(value > 0.05 for value in late):3d}/{len(late):<3d} {trace[-1][0]:7.4f} {trace[-1][1]:7.3f}",
                    flush=True,
                )


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["cost", "stability"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=30, help="cost: timed epochs (default 5); stability: 30")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--hid_width", type=int, default=MutualInformation().hid_width, help="cost: the critic's width")
    args = parser.parse_args()
    if args.mode == "cost":
        args.epochs = 5 if args.epochs == 30 else args.epochs
        cost(args)
    else:
        stability(args)


if __name__ == "__main__":
    main()
