"""Accuracy benchmark: the estimate against the true MI on generated data.

Not collected by pytest (the name does not start with test_). Run from the
repository root:

    python tests/bench_accuracy.py                  # the full grid, 3 seeds
    python tests/bench_accuracy.py --tasks gauss-1.0 half_cube-1.0 -- --lr 0.0005

Every task is a 10,000-row file made by mi_data_processing.make_known_mi_rows
(true MI known in closed form); mi_main runs on it with its defaults (or the
flags after --) and the table gives the mean and spread over seeds.
"""

import argparse
import contextlib
import io
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import mi_main  # noqa: E402
from mi_data_processing import make_known_mi_rows, save_json, save_rows, sidecar_path  # noqa: E402

# name: (true MI, generator keyword arguments)
TASKS = {
    "gauss-0.0": (0.0, {}),
    "gauss-0.2": (0.2, {}),
    "gauss-1.0": (1.0, {}),
    "gauss-2.0": (2.0, {}),
    "gauss-4.0": (4.0, {}),
    "cube-1.0": (1.0, {"x_distortion": "cube", "z_distortion": "cube"}),
    "half_cube-1.0": (1.0, {"x_distortion": "half_cube", "z_distortion": "half_cube"}),
    "asinh-1.0": (1.0, {"x_distortion": "asinh", "z_distortion": "asinh"}),
    "correlated-1.0": (1.0, {"correlation": 0.5}),
}


def estimate(path, seed, flags, output_dir):
    """Runs mi_main quietly; returns (summary, seconds of training)."""
    with contextlib.redirect_stdout(io.StringIO()):
        summary = mi_main.main(["--input", path, "--seed", str(seed), "--output_dir", output_dir, *flags])
    return summary, summary["train_seconds"]


def mean_or_dash(values):
    """A column's figure, or "-" where the run mode has none."""
    return f"{np.mean(values):.3f}" if values else "-"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", choices=sorted(TASKS), default=list(TASKS))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("flags", nargs="*", help="mi_main flags, after --")
    args = parser.parse_args()

    print(f"rows {args.rows}, seeds {args.seeds}, mi_main flags: {' '.join(args.flags) or '(defaults)'}")
    header = ("| task | truth | estimate (mean ± std) | error | max abs error | last epoch's held-out bound | "
              "95 % interval covers truth | mean interval width | s per estimate |")
    print(header + "\n|" + " --- |" * 9, flush=True)
    errors, coverage, interval_widths = {}, {}, {}
    with tempfile.TemporaryDirectory() as scratch:
        for name in args.tasks:
            truth, generator_options = TASKS[name]
            estimates, last_epoch, seconds, covered, widths = [], [], [], [], []
            for seed in range(args.seeds):
                rows, description = make_known_mi_rows(args.rows, truth, seed=1000 + seed, **generator_options)
                path = os.path.join(scratch, f"{name}-{seed}.dat")
                save_rows(path, rows)
                save_json(sidecar_path(path), description)
                summary, train_seconds = estimate(path, seed, args.flags, os.path.join(scratch, "out"))
                estimates.append(summary["mi_estimate"])
                if "mi_ci95" in summary:  # cross-fitted: the held-out figures are the folds'
                    low, high = summary["mi_ci95"]
                    covered.append(low <= truth <= high)
                    widths.append(high - low)
                else:
                    last_epoch.append(summary["held_out_last_epoch"])
                seconds.append(train_seconds)
            estimates = np.array(estimates)
            errors[name] = (truth, estimates - truth)
            coverage[name] = (truth, covered)
            if widths:
                interval_widths[name] = (truth, np.mean(widths))
            print(
                f"| {name} | {truth:.1f} | {estimates.mean():.3f} ± {estimates.std():.3f} | "
                f"{estimates.mean() - truth:+.3f} | {np.abs(estimates - truth).max():.3f} | "
                f"{mean_or_dash(last_epoch)} | {f'{sum(covered)} of {len(covered)}' if covered else '-'} | {mean_or_dash(widths)} | "
                f"{np.mean(seconds):.1f} |",
                flush=True,
            )
    small = np.concatenate([error for truth, error in errors.values() if truth <= 2])
    if small.size:
        print(f"tasks with MI <= 2: mean absolute error {np.abs(small).mean():.3f}, worst {np.abs(small).max():.3f}")
    small_coverage = [hit for truth, hits in coverage.values() if truth <= 2 for hit in hits]
    if small_coverage:
        print(f"tasks with MI <= 2: the 95 % interval covered the truth in {sum(small_coverage)} of {len(small_coverage)} cases, "
              f"mean width {np.mean([width for truth, width in interval_widths.values() if truth <= 2]):.3f}")


if __name__ == "__main__":
    main()
