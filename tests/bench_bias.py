"""Bias benchmark: how far below the true MI a trained critic's bound sits.

Not collected by pytest. Run from the repository root:

    python tests/bench_bias.py
    python tests/bench_bias.py --mi 1.0 --activations relu tanh --rows 4000 8000 16000

The held-out estimate mixes two errors: the noise of the few rows it is read
on, and the bias of the critic (the Donsker-Varadhan bound of any critic but
the optimal one is below the MI). This script isolates the second: it trains
critics as mi_main does (defaults: Adam, cosine decay, rank map, fresh
marginal pairs) on `--rows` generated Gaussian rows, and evaluates each
critic's bound on 60,000 fresh rows of the same distribution, where the
evaluation noise is negligible. It prints, per setting, the mean over seeds
of (bound at the best evaluated epoch - true MI); epochs 10, 20, ... and the
last three are evaluated.
"""

import argparse
import math
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tensorflow as tf  # noqa: E402
from epoch_rows import epoch_batches  # noqa: E402

import mi_main  # noqa: E402  (sets TensorFlow's log level before importing it)
from mi_data_processing import fit_transform_parameters, make_known_mi_rows, make_transform  # noqa: E402
from mi_model import donsker_varadhan_bound  # noqa: E402

FRESH_ROWS = 60_000


def best_population_bound(training_rows, fresh_rows, activation, seed, n_epoch, flags):
    """Trains one critic; returns its best bound on fresh_rows over the evaluated epochs."""
    parameters = fit_transform_parameters("rank", training_rows, 11)
    transform = make_transform("rank", parameters, 11)
    fresh = tf.constant(transform(fresh_rows))
    config = mi_main.parse_flags(
        [*flags, "--activation", activation, "--n_epoch", str(n_epoch), "--seed", str(seed), "--folds", "1"]
    )
    steps = -(-len(training_rows) // config.batch_size)
    compiled = mi_main.compiled_critics(config.critic_settings, 1, tf.distribute.get_strategy(), seed)
    model = compiled.model
    best = -np.inf
    batches = epoch_batches([transform(training_rows)], config.batch_size, seed, 0, n_epoch, resample_latent_dim=1)
    for epoch, chunk in enumerate(batches, 1):
        start, end = (config.lr * 0.5 * (1 + math.cos(math.pi * done / n_epoch)) for done in (epoch - 1, epoch))
        compiled.set_learning_rate(start, end, steps)  # a cosine over the run, as mi_main's
        compiled.train_epoch([chunk], None, seed, epoch, [0])
        if epoch % 10 == 0 or epoch > n_epoch - 3:
            # the fresh file's z_bar is drawn independently: its marginal half is a true product sample
            bound = donsker_varadhan_bound(
                model.statistics_network(fresh[None, :, :11]), model.statistics_network(fresh[None, :, 11:])
            )[0]
            best = max(best, float(bound[0]))
    return best


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mi", type=float, nargs="+", default=[0.2, 1.0, 2.0, 4.0])
    parser.add_argument("--activations", nargs="+", default=["relu", "tanh"])
    parser.add_argument(
        "--rows", type=int, nargs="+", default=[8_000], help="training rows (8,000: one of 5 folds of 10,000 held out)"
    )
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--n_epoch", type=int, default=100)
    parser.add_argument(
        "flags", nargs="*", help="other mi_main training flags (--lr, --batch_size, --estimator, --hid_width), after --"
    )
    args = parser.parse_args()

    print(
        f"bound on {FRESH_ROWS} fresh rows minus the true MI, mean over {args.seeds} seeds; {args.n_epoch} epochs; "
        f"mi_main flags: {' '.join(args.flags) or '(defaults)'}"
    )
    print("| true MI | training rows | " + " | ".join(args.activations) + " |")
    print("|" + " --- |" * (2 + len(args.activations)), flush=True)
    for mi in args.mi:
        fresh_rows, _ = make_known_mi_rows(FRESH_ROWS, mi, seed=99)
        for n_rows in args.rows:
            cells = []
            for activation in args.activations:
                biases = [
                    best_population_bound(
                        make_known_mi_rows(n_rows, mi, seed=1000 + seed)[0],
                        fresh_rows,
                        activation,
                        seed,
                        args.n_epoch,
                        args.flags,
                    )
                    - mi
                    for seed in range(args.seeds)
                ]
                cells.append(f"{np.mean(biases):+.3f}")
            print(f"| {mi} | {n_rows} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
