"""Pairs benchmark: how far a critic's held-out bound moves when its marginal term is read on every pair.

Not collected by pytest. Run from the repository root:

    python tests/bench_pairs.py                 # 20 x 20 staircase Gaussians, MI 2, 6 and 10, 10,000 rows
    python tests/bench_pairs.py --mi 4 8 --rows 5000

Each task draws x and z of 20 columns, z_i = g x_i + e_i (the staircase), and runs mi_main.estimate at its
defaults with an output folder. Each fold's chosen critic, as saved (its last epoch's weights), is then read on
its fold's held-out rows three ways: the marginal term over 4 pairings a row (as the per-epoch reading), and over
every pair (i, j), i != j, of the fold. The table gives, per fold, the estimate's own reading (at the chosen epoch,
4 pairings), the last weights' readings with 4 pairings and with every pair, and log N, the most that N pairs can
certify (McAllester and Stratos 2020).
"""

import argparse
import os
import sys
import tempfile

import numpy as np
import tensorflow as tf

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from known_mi import gaussian_task  # noqa: E402

import mi_main  # noqa: E402
from mi_data_processing import fold_indices, make_transform  # noqa: E402

DIM, FOLDS = 20, 5


def dv_bound(joint_scores, marginal_scores):
    """mean T(joint) - log mean exp T(marginal), in float64."""
    peak = marginal_scores.max()
    return float(joint_scores.mean() - peak - np.log(np.mean(np.exp(marginal_scores - peak))))


def scores(network, samples, block=262_144):
    return np.concatenate(
        [
            network(tf.constant(samples[first : first + block][None], tf.float32)).numpy()[0, :, 0]
            for first in range(0, len(samples), block)
        ]
    )


def fold_readings(folder, rows, held_out, seed):
    """(4 pairings a row, every pair, pairs) of the critic saved in folder, on the rows held_out."""
    model = tf.keras.models.load_model(os.path.join(folder, mi_main.CRITIC_FILE))
    with np.load(os.path.join(folder, mi_main.TRANSFORM_FILE)) as saved:
        parameters = {name: saved[name] for name in saved.files if name != "kind"}
        mapped = make_transform(str(saved["kind"]), parameters, 2 * DIM)(rows[held_out])
    x, z, n = mapped[:, :DIM], mapped[:, DIM : 2 * DIM], len(held_out)
    network = model.statistics_network
    joint = scores(network, np.column_stack([x, z]))
    shifts = np.random.default_rng(seed).integers(1, n, 4)
    four = np.concatenate([scores(network, np.column_stack([x, np.roll(z, -shift, axis=0)])) for shift in shifts])
    every = np.concatenate(  # row i against every z_j, j != i: the shifts 1, ..., n - 1
        [scores(network, np.column_stack([x, np.roll(z, -shift, axis=0)])) for shift in range(1, n)]
    )
    return dv_bound(joint, four), dv_bound(joint, every), len(every)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mi", type=float, nargs="+", default=[2.0, 6.0, 10.0])
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    columns = ["truth", "estimate", "fold", "candidate", "chosen epoch, 4 pairings", "last epoch, 4 pairings"]
    print("| " + " | ".join(columns + ["last epoch, every pair", "log N"]) + " |")
    print("|" + " --- |" * 8)
    for mi_nats in args.mi:
        truth, sample = gaussian_task(DIM, mi_nats, np.eye)
        joint, _, _ = sample(np.random.default_rng(args.seed), args.rows)
        rows = np.column_stack([joint, joint]).astype(np.float32)  # the full layout: (x, z, x_bar, z_bar)
        with tempfile.TemporaryDirectory() as output_dir:
            summary = mi_main.estimate(joint[:, :DIM], joint[:, DIM:], output_dir=output_dir, quiet=True)
            for fold, name in enumerate(summary["fold_winners"]):
                folder = os.path.join(output_dir, f"fold-{fold + 1}", name.replace(":", "-"))
                held_out = fold_indices(args.rows, FOLDS, fold, summary["seed"])[1]
                four, every, pairs = fold_readings(folder, rows, held_out, fold)
                print(
                    f"| {truth:.3f} | {summary['mi_estimate']:.3f} | {fold + 1} | {name} | "
                    f"{summary['fold_estimates'][fold]:.3f} | {four:.3f} | {every:.3f} | {np.log(pairs):.2f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
