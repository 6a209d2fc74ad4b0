"""Selection benchmark: rules for choosing each fold's critic and epoch, on the same runs.

Not collected by pytest. Run from the repository root:

    python tests/bench_selection.py --tasks gauss-1.0 student-t-3x3-df3 -- --candidates rank:tanh,standardize:relu

Each task of tests/bench_accuracy.py is run with mi_main's defaults (or the
flags after --); the run's whole history, every epoch's held-out bound of
every critic, is kept, and each rule below is applied to it, so that the
rules are compared on exactly the same critics. The table gives each rule's
mean error against the true MI, per task, over the seeds:

  halves: each fold's (candidate, epoch) chosen on one half of its held-out
      rows and read on the other (the default before 2026-12-02);
  other folds: chosen on the mean held-out bound of the other folds, read
      on the fold's own rows (mi_model.chosen_in_views, the default);
  other folds, 5 epochs: the same, read as the mean of 5 epochs around the choice;
  other folds, max-min: chosen on the lowest of the other folds' bounds;
  other folds, mean - sd: on their mean less their standard deviation, so
      that a candidate whose critics are erratic between folds loses;
  candidate k: candidate k alone, its epoch chosen on the other folds;
  oracle: each fold's highest held-out bound, chosen on the rows it is read
      on: biased upward, it shows what the choice itself costs.
"""

import argparse
import collections
import contextlib
import io
import os
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench_accuracy import TASKS, task_file  # noqa: E402
from known_mi import TASK_MAKERS  # noqa: E402

import mi_main  # noqa: E402


def history_of(argv):
    """Runs mi_main quietly; returns its History and its candidates."""
    captured = {}
    write_outputs = mi_main.write_outputs

    def capture(config, prepared, data, outcome, stop):
        captured["history"] = outcome.history
        return write_outputs(config, prepared, data, outcome, stop)

    mi_main.write_outputs = capture
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            summary = mi_main.main(argv)
    finally:
        mi_main.write_outputs = write_outputs
    return captured["history"], summary["candidates"]


def read_at_best(choice, reading):
    """reading at the (epoch, candidate) where choice is highest (NaN where a critic did not train)."""
    return reading[np.unravel_index(int(np.nanargmax(choice)), choice.shape)]


def rule_estimates(history, per_fold):
    """{rule: estimate} of one cross-fitted run."""
    epochs, folds = len(history), history.held_out.shape[1] // per_fold
    bounds, half_a, half_b = (
        figures.reshape(epochs, folds, per_fold)
        for figures in (history.held_out, history.held_out_a, history.held_out_b)
    )
    rules = collections.defaultdict(list)
    for fold in range(folds):
        a, b = half_a[:, fold], half_b[:, fold]
        rules["halves"].append(0.5 * (read_at_best(a, b) + read_at_best(b, a)))
        other_folds = np.delete(bounds, fold, axis=1)  # [epochs, folds - 1, candidates]
        others = other_folds.mean(axis=1)
        rules["other folds"].append(read_at_best(others, bounds[:, fold]))
        for rule, score in (
            ("other folds, max-min", other_folds.min(axis=1)),
            ("other folds, mean - sd", others - other_folds.std(axis=1, ddof=1)),
        ):
            rules[rule].append(read_at_best(score, bounds[:, fold]))
        epoch, candidate = np.unravel_index(int(np.nanargmax(others)), others.shape)
        rules["other folds, 5 epochs"].append(np.nanmean(bounds[max(0, epoch - 2) : epoch + 3, fold, candidate]))
        rules["oracle"].append(np.nanmax(bounds[:, fold]))
        for k in range(per_fold):
            rules[f"candidate {k}"].append(read_at_best(others[:, k], bounds[:, fold, k]))
    return {rule: float(np.mean(values)) for rule, values in rules.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", choices=sorted(TASKS) + sorted(TASK_MAKERS), required=True)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--rows", type=int, default=5_000)
    parser.add_argument("flags", nargs="*", help="mi_main flags, after --")
    args = parser.parse_args()
    print(f"rows {args.rows}, seeds {args.seeds}, mi_main flags: {' '.join(args.flags) or '(defaults)'}")
    errors, header = collections.defaultdict(list), None
    with tempfile.TemporaryDirectory() as scratch:
        for name in args.tasks:
            task_errors = collections.defaultdict(list)
            for seed in range(args.seeds):
                path, truth, _, dimensions = task_file(name, args.rows, seed, scratch)
                argv = ["--input", path, "--seed", str(seed), "--output_dir", os.path.join(scratch, "out")]
                history, candidates = history_of([*argv, *dimensions, *args.flags])
                for rule, estimate in rule_estimates(history, len(candidates)).items():
                    task_errors[rule].append(estimate - truth)
                    if truth <= 2:
                        errors[rule].append(estimate - truth)
            if header is None:
                header = list(task_errors)
                print(f"candidates: {', '.join(f'{k} {name}' for k, name in enumerate(candidates))}")
                print("| task | truth | " + " | ".join(header) + " |\n|" + " --- |" * (len(header) + 2))
            print(f"| {name} | {truth:.3f} | " + " | ".join(f"{np.mean(task_errors[r]):+.3f}" for r in header) + " |")
    print("| mean abs error, MI <= 2 | | " + " | ".join(f"{np.mean(np.abs(errors[r])):.3f}" for r in header) + " |")


if __name__ == "__main__":
    main()
