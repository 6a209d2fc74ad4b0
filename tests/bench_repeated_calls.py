"""Many estimates in one process: memory and time per call of mi_main.main.

Notebooks, parameter sweeps and the benchmarks call mi_main.main() many
times in one process; nothing a call builds may outlive it. Not collected
by pytest. Run from the repository root:

    python tests/bench_repeated_calls.py --calls 10 --rows 10000 --n_epoch 30

Prints one row per call: its seconds, the peak RSS of the process after it
and the growth of that peak since the previous call; then the targets:
after the second call the peak grows by less than 20 MB per call, and no
call takes more than 1.3 times the median. The first call traces and
compiles; later calls with the same flags reuse its compiled functions.
"""

import argparse
import os
import resource
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import mi_main  # noqa: E402
from mi_data_processing import make_known_mi_rows, save_rows  # noqa: E402


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--n_epoch", type=int, default=30)
    parser.add_argument("flags", nargs="*", help="more mi_main.py flags, after --")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        path = os.path.join(scratch, "rows.dat")
        save_rows(path, make_known_mi_rows(args.rows, 1.0, seed=0)[0])
        seconds, peaks = [], []
        print("| call | seconds | peak RSS, MB | growth, MB |")
        print("| --- | --- | --- | --- |")
        for call in range(1, args.calls + 1):
            start = time.perf_counter()
            mi_main.main(
                [
                    "--input",
                    path,
                    "--output_dir",
                    os.path.join(scratch, f"run-{call}"),
                    "--n_epoch",
                    str(args.n_epoch),
                    "--quiet",
                    *args.flags,
                ]
            )
            seconds.append(time.perf_counter() - start)
            peaks.append(peak_rss_mb())
            growth = peaks[-1] - peaks[-2] if call > 1 else float("nan")
            print(f"| {call} | {seconds[-1]:.1f} | {peaks[-1]:.0f} | {growth:.1f} |", flush=True)
    growth_after_second = (peaks[-1] - peaks[1]) / max(1, len(peaks) - 2)
    slowest = max(seconds) / float(np.median(seconds))
    # the first call also traces and compiles; later calls with the same flags reuse that
    slowest_later = max(seconds[1:]) / float(np.median(seconds[1:]))
    print()
    print("| measure | result | target |")
    print("| --- | --- | --- |")
    print(f"| peak RSS growth per call after the second | {growth_after_second:.1f} MB | < 20 MB |")
    print(f"| slowest call / median call | {slowest:.2f} | <= 1.3 |")
    print(f"| slowest call / median call, after the first (which compiles) | {slowest_later:.2f} | |")
    print(f"| first call s / median of the later calls s | {seconds[0]:.1f} / {np.median(seconds[1:]):.1f} | |")


if __name__ == "__main__":
    main()
