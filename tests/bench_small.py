"""Small-data benchmark: how often the interval and the lower bound hold.

Not collected by pytest. Run from the repository root:

    python tests/bench_small.py                       # 300 and 1,000 rows at the defaults, one split at 1,000 and 5,000
    python tests/bench_small.py --seeds 20 --rows 300 -- --folds 1
    python tests/bench_small.py -- --candidates C     # CASES, each with these flags added

Each seed draws a new Gaussian 10 x 1 file with a true MI of 1.0 nat
(mi_data_processing.make_known_mi_rows) and runs mi_main on it quietly;
the table gives the estimate's mean and spread over the seeds, how often
the 95 % interval covered the truth, how often the truth was at or above
the 95 % lower bound, the mean interval width and the seconds per run.
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
from mi_data_processing import make_known_mi_rows, save_rows  # noqa: E402

TRUTH = 1.0
# (rows, flags): the defaults on small inputs, then one split
CASES = [(300, []), (1000, []), (1000, ["--folds", "1"]), (5000, ["--folds", "1"])]


def one_case(n_rows, flags, seeds, scratch):
    """The table's row for n_rows and flags."""
    estimates, covered, holds, widths, adapted = [], [], [], [], []
    start = time.perf_counter()
    for seed in range(seeds):
        path = os.path.join(scratch, f"gauss-{n_rows}-{seed}.dat")
        save_rows(path, make_known_mi_rows(n_rows, TRUTH, seed=500 + seed)[0])
        argv = ["--input", path, "--seed", str(seed), "--output_dir", os.path.join(scratch, "out"), *flags]
        with contextlib.redirect_stdout(io.StringIO()):
            summary = mi_main.main(argv)
        low, high = summary["mi_ci95"]
        estimates.append(summary["mi_estimate"])
        covered.append(low <= TRUTH <= high)
        holds.append(summary["mi_lower_95"] <= TRUTH)
        widths.append(high - low)
        adapted = summary["adapted_to_rows"]
    estimates = np.array(estimates)
    return (
        f"| {n_rows:,} | {' '.join(flags) or '(defaults)'} | {'; '.join(adapted) or '-'} | "
        f"{estimates.mean():.3f} ± {estimates.std():.3f} | {sum(covered)} of {seeds} | {sum(holds)} of {seeds} | "
        f"{np.mean(widths):.3f} | {(time.perf_counter() - start) / seeds:.1f} |"
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--rows", type=int, nargs="+", help="these row counts with the flags after --, not CASES")
    parser.add_argument("flags", nargs="*", help="mi_main flags, after --")
    args = parser.parse_args()
    cases = [(n_rows, args.flags) for n_rows in args.rows] if args.rows else [(n, [*f, *args.flags]) for n, f in CASES]
    print(f"Gaussian 10 x 1, true MI {TRUTH}, {args.seeds} seeds")
    print(
        "| rows | flags | adapted | estimate (mean ± std) | 95 % interval covers truth | "
        "truth above the 95 % lower bound | mean interval width | s per run |"
    )
    print("|" + " --- |" * 8, flush=True)
    with tempfile.TemporaryDirectory() as scratch:
        for n_rows, flags in cases:
            print(one_case(n_rows, flags, args.seeds, scratch), flush=True)


if __name__ == "__main__":
    main()
