"""Accuracy benchmark: the estimate against the true MI on generated data.

Not collected by pytest (the name does not start with test_). Run from the
repository root:

    python tests/bench_accuracy.py                  # the full grid, 3 seeds
    python tests/bench_accuracy.py --tasks gauss-1.0 half_cube-1.0 -- --lr 0.0005
    python tests/bench_accuracy.py --record new.jsonl ...   # also one JSON line per run
    python tests/bench_accuracy.py --compare old.jsonl new.jsonl

--record keeps each run (task, seed, truth, the summary's estimates, its
wall seconds in this process, and every epoch's held-out bounds), so that
two sets of defaults run on the same rows can be compared task by task:
--compare prints the error and wall time per family, side by side.

The Gaussian-copula tasks are files made by
mi_data_processing.make_known_mi_rows; the others (additive noise, heavy
tails, mixtures, several dimensions, an embedding, a discrete z) come from
tests/known_mi.py, each with its true MI in closed form or by a Monte Carlo
over 10^6 draws. mi_main runs on each 10,000-row file with its defaults
(or the flags after --), --data_dim and --latent_dim set to the task's;
the table gives the mean and spread over seeds, then a line per family.
Seconds are the wall time of each mi_main.main() call in this one process:
a call whose shapes ran before in the process compiles nothing.
"""

import argparse
import contextlib
import io
import json
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from known_mi import TASK_MAKERS  # noqa: E402

import mi_main  # noqa: E402
from mi_data_processing import make_known_mi_rows, save_json, save_rows, sidecar_path  # noqa: E402

# name: (true MI, generator keyword arguments): the Gaussian-copula family
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


def task_file(name, n_rows, seed, scratch):
    """Writes the task's rows and description; returns (path, truth, family, dimension flags)."""
    path = os.path.join(scratch, f"{name}-{seed}.dat")
    if name in TASKS:
        truth, generator_options = TASKS[name]
        rows, description = make_known_mi_rows(n_rows, truth, seed=1000 + seed, **generator_options)
        family, dimensions = "gaussian copula", []
    else:
        family, make = TASK_MAKERS[name]
        truth, sample = make()
        rows, data_dim, latent_dim = sample(np.random.default_rng(1000 + seed), n_rows)
        description = {"true_mi_nats": truth}
        dimensions = ["--data_dim", str(data_dim), "--latent_dim", str(latent_dim)]
    save_rows(path, rows)
    save_json(sidecar_path(path), description)
    return path, truth, family, dimensions


def estimate(path, seed, flags, output_dir):
    """Runs mi_main quietly; returns (summary, its History, wall seconds of the call in this process)."""
    captured, write_outputs = {}, mi_main.write_outputs

    def capture(config, prepared, data, outcome, stop):
        captured["history"] = outcome.history
        return write_outputs(config, prepared, data, outcome, stop)

    start = time.perf_counter()
    mi_main.write_outputs = capture
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            summary = mi_main.main(["--input", path, "--seed", str(seed), "--output_dir", output_dir, *flags])
    finally:
        mi_main.write_outputs = write_outputs
    return summary, captured["history"], time.perf_counter() - start


def record_line(name, family, seed, truth, summary, history, seconds):
    """One run as a JSON line: the estimates, the seconds, the held-out bounds per epoch and critic."""
    keys = ("mi_estimate", "mi_lower_95", "mi_ci95", "fold_estimates", "fold_winners", "train_seconds", "n_epoch")
    bounds = {
        field: np.round(getattr(history, field), 5).tolist() for field in ("held_out", "held_out_a", "held_out_b")
    }
    return json.dumps(
        {"task": name, "family": family, "seed": seed, "truth": truth, "wall_seconds": round(seconds, 2)}
        | {key: summary.get(key) for key in keys}
        | {"candidates": summary["candidates"], "bounds": bounds}
    )


def compare(old_path, new_path):
    """Error and wall time per family of two --record files of the same tasks and seeds."""
    runs = []
    for path in (old_path, new_path):
        with open(path) as stream:
            runs.append({(line["task"], line["seed"]): line for line in map(json.loads, stream)})
    shared = sorted(set(runs[0]) & set(runs[1]))
    print(f"{len(shared)} runs in both\n")
    print(
        "| family | runs | mean abs error, old | new | mean error, old | new | median wall s, old | new "
        "| lowest fold, new |"
    )
    print("|" + " --- |" * 9)
    families = {}
    for key in shared:
        families.setdefault(runs[0][key]["family"], []).append(key)
    for family, keys in [
        *families.items(),
        ("all with MI <= 2", [key for key in shared if runs[0][key]["truth"] <= 2]),
    ]:
        errors = [[run[key]["mi_estimate"] - run[key]["truth"] for key in keys] for run in runs]
        seconds = [[run[key]["wall_seconds"] for key in keys] for run in runs]
        lowest = min((value for key in keys for value in runs[1][key]["fold_estimates"] or []), default=np.nan)
        print(
            f"| {family} | {len(keys)} | {np.mean(np.abs(errors[0])):.3f} | {np.mean(np.abs(errors[1])):.3f} | "
            f"{np.mean(errors[0]):+.3f} | {np.mean(errors[1]):+.3f} | {np.median(seconds[0]):.1f} | "
            f"{np.median(seconds[1]):.1f} | {lowest:.3f} |"
        )


def mean_or_dash(values):
    """A column's figure, or "-" where the run mode has none."""
    return f"{np.mean(values):.3f}" if values else "-"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--tasks",
        nargs="+",
        choices=sorted(TASKS) + sorted(TASK_MAKERS),
        default=list(TASKS) + [name for name in TASK_MAKERS if name not in TASKS],
    )
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--record", help="append one JSON line per run to this file")
    parser.add_argument("--compare", nargs=2, metavar=("OLD", "NEW"), help="compare two --record files, then stop")
    parser.add_argument("flags", nargs="*", help="mi_main flags, after --")
    args = parser.parse_args()
    if args.compare:
        compare(*args.compare)
        return

    print(f"rows {args.rows}, seeds {args.seeds}, mi_main flags: {' '.join(args.flags) or '(defaults)'}")
    header = (
        "| task | family | truth | estimate (mean ± std) | error | max abs error | last epoch's held-out bound | "
        "95 % interval covers truth | mean interval width | truth above the 95 % lower bound | lowest fold estimate | "
        "s per estimate |"
    )
    print(header + "\n|" + " --- |" * 12, flush=True)
    errors, coverage, lower_bound_holds, interval_widths, families = {}, {}, {}, {}, {}
    with tempfile.TemporaryDirectory() as scratch:
        for name in args.tasks:
            estimates, last_epoch, seconds, covered, widths, below, folds = [], [], [], [], [], [], []
            for seed in range(args.seeds):
                path, truth, family, dimensions = task_file(name, args.rows, seed, scratch)
                summary, history, wall_seconds = estimate(
                    path, seed, [*dimensions, *args.flags], os.path.join(scratch, "out")
                )
                if args.record:
                    with open(args.record, "a") as stream:
                        stream.write(record_line(name, family, seed, truth, summary, history, wall_seconds) + "\n")
                estimates.append(summary["mi_estimate"])
                if "mi_ci95" in summary:  # cross-fitted: the held-out figures are the folds'
                    low, high = summary["mi_ci95"]
                    covered.append(low <= truth <= high)
                    widths.append(high - low)
                    below.append(summary["mi_lower_95"] <= truth)
                    folds.extend(value for value in summary.get("fold_estimates", []) if value is not None)
                else:
                    last_epoch.append(summary["held_out_last_epoch"])
                seconds.append(wall_seconds)
            estimates = np.array(estimates)
            errors[name] = (truth, estimates - truth)
            families.setdefault(family, []).append(name)
            coverage[name] = (truth, covered)
            lower_bound_holds[name] = (truth, below)
            if widths:
                interval_widths[name] = (truth, np.mean(widths))
            print(
                f"| {name} | {family} | {truth:.3f} | {estimates.mean():.3f} ± {estimates.std():.3f} | "
                f"{estimates.mean() - truth:+.3f} | {np.abs(estimates - truth).max():.3f} | "
                f"{mean_or_dash(last_epoch)} | {f'{sum(covered)} of {len(covered)}' if covered else '-'} | "
                f"{mean_or_dash(widths)} | "
                f"{f'{sum(below)} of {len(below)}' if below else '-'} | "
                f"{f'{min(folds):.3f}' if folds else '-'} | {np.mean(seconds):.1f} |",
                flush=True,
            )
    print(
        "\n| family | tasks | mean abs error | 95 % interval covers truth | mean interval width | truth above the 95 % "
        "lower bound |"
    )
    print("|" + " --- |" * 6)
    for family, names in families.items():
        family_errors = np.concatenate([errors[name][1] for name in names])
        hits = [hit for name in names for hit in coverage[name][1]]
        family_widths = [interval_widths[name][1] for name in names if name in interval_widths]
        holds = [hold for name in names for hold in lower_bound_holds[name][1]]
        print(
            f"| {family} | {len(names)} | {np.abs(family_errors).mean():.3f} | "
            f"{f'{sum(hits)} of {len(hits)}' if hits else '-'} | {mean_or_dash(family_widths)} | "
            f"{f'{sum(holds)} of {len(holds)}' if holds else '-'} |"
        )
    small = np.concatenate([[]] + [error for truth, error in errors.values() if truth <= 2])
    if small.size:
        print(f"tasks with MI <= 2: mean absolute error {np.abs(small).mean():.3f}, worst {np.abs(small).max():.3f}")
    small_coverage = [hit for truth, hits in coverage.values() if truth <= 2 for hit in hits]
    if small_coverage:
        print(
            f"tasks with MI <= 2: the 95 % interval covered the truth in {sum(small_coverage)} of "
            f"{len(small_coverage)} cases, "
            f"mean width {np.mean([width for truth, width in interval_widths.values() if truth <= 2]):.3f}"
        )
        small_holds = [hold for truth, holds in lower_bound_holds.values() if truth <= 2 for hold in holds]
        print(
            f"tasks with MI <= 2: the truth was at or above the 95 % lower bound in {sum(small_holds)} of "
            f"{len(small_holds)} cases"
        )


if __name__ == "__main__":
    main()
