"""Scale benchmark: multi-worker against one process, and the streaming
path on a file of millions of rows. Not collected by pytest. Run from the
repository root (it writes a few GB under --scratch):

    python tests/bench_scale.py --rows 5000000 --scratch /tmp/mine-scale

Prints one table:
  - the estimate on the shipped data from two workers on loopback ports
    (--strategy multi_worker) and from one process;
  - the text-to-cache build rate against numpy.loadtxt on the same file;
  - training rows/s of the streamed path (--cache_dir) on the whole file
    against the in-memory path on its first 500,000 rows, both after the
    first epoch, and the streamed run's peak RSS (whole process).
"""

import argparse
import json
import os
import resource
import socket
import subprocess
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from mi_data_processing import build_cache, make_known_mi_rows  # noqa: E402


def run_main(flags, environment=None):
    """Runs mi_main.py in a new process; returns its summary.json."""
    subprocess.run([sys.executable, os.path.join(REPO, "mi_main.py"), *flags, "--quiet"], check=True, env=environment)
    output_dir = flags[flags.index("--output_dir") + 1]
    with open(os.path.join(output_dir, "summary.json")) as stream:
        return json.load(stream)


def multi_worker_against_one_process(scratch):
    flags = ["--input", os.path.join(REPO, "data", "input_set.dat")]
    single = run_main([*flags, "--output_dir", os.path.join(scratch, "single")])
    ports = []
    for _ in range(2):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            ports.append(sock.getsockname()[1])
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    workers = [
        subprocess.Popen(
            [
                sys.executable,
                os.path.join(REPO, "mi_main.py"),
                *flags,
                "--strategy",
                "multi_worker",
                "--quiet",
                "--output_dir",
                os.path.join(scratch, "cluster"),
            ],
            env=dict(
                os.environ, TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
            ),
        )
        for index in range(2)
    ]
    for worker in workers:
        worker.wait()
    with open(os.path.join(scratch, "cluster", "summary.json")) as stream:
        cluster_summary = json.load(stream)
    return single["mi_estimate"], cluster_summary["mi_estimate"]


def write_big_file(path, rows, chunk=500_000):
    with open(path, "w") as stream:
        for start in range(0, rows, chunk):
            block, _ = make_known_mi_rows(min(chunk, rows - start), 1.0, seed=start)
            np.savetxt(stream, block)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=5_000_000)
    parser.add_argument("--scratch", default="/tmp/mine-scale")
    args = parser.parse_args()
    os.makedirs(args.scratch, exist_ok=True)

    single, cluster = multi_worker_against_one_process(args.scratch)

    big = os.path.join(args.scratch, f"rows-{args.rows}.dat")
    if not os.path.exists(big):
        write_big_file(big, args.rows)
    cache_dir = os.path.join(args.scratch, "cache")
    for name in os.listdir(cache_dir) if os.path.isdir(cache_dir) else []:
        os.unlink(os.path.join(cache_dir, name))
    start = time.perf_counter()
    _, cached_rows, _ = build_cache(big, (22, 11), cache_dir)
    cache_rate = cached_rows / (time.perf_counter() - start)
    sample_rows = 200_000
    with open(big) as stream:
        head = [next(stream) for _ in range(sample_rows)]
    start = time.perf_counter()
    np.loadtxt(head, dtype=np.float32)
    loadtxt_rate = sample_rows / (time.perf_counter() - start)

    training = ["--n_epoch", "2", "--val_fraction", "0.01", "--checkpoint_every", "0"]
    streamed = run_main(
        ["--input", big, "--cache_dir", cache_dir, "--output_dir", os.path.join(args.scratch, "streamed"), *training]
    )
    peak_rss_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20  # the largest child so far
    small = os.path.join(args.scratch, "first-500000.dat")
    if not os.path.exists(small):
        with open(big) as source, open(small, "w") as target:
            for _ in range(500_000):
                target.write(next(source))
    in_memory = run_main(
        ["--input", small, "--output_dir", os.path.join(args.scratch, "in-memory"), *training, "--n_epoch", "3"]
    )

    print("| measure | value | target |")
    print("| --- | --- | --- |")
    print(f"| shipped data, one process | {single:.4f} | |")
    print(
        f"| shipped data, 2 workers on loopback | {cluster:.4f} | within 0.05 of one process: "
        f"{abs(single - cluster):.4f} |"
    )
    print(f"| cache build, rows/s ({cached_rows:,} rows) | {cache_rate:,.0f} | |")
    print(f"| numpy.loadtxt, rows/s (first {sample_rows:,} rows) | {loadtxt_rate:,.0f} | |")
    print(f"| cache build / loadtxt | {cache_rate / loadtxt_rate:.2f} | >= 3 |")
    print(f"| streamed training rows/s after epoch 1 | {streamed['training_rows_per_second']:,.0f} | |")
    print(
        f"| in-memory training rows/s after epoch 1 (500,000 rows) | {in_memory['training_rows_per_second']:,.0f} | |"
    )
    print(
        f"| streamed / in-memory | {streamed['training_rows_per_second'] / in_memory['training_rows_per_second']:.2f} "
        "| >= 0.5 |"
    )
    print(f"| peak RSS of the processes run, GB (the streamed one is the largest) | {peak_rss_gb:.2f} | < 1.5 |")


if __name__ == "__main__":
    main()
