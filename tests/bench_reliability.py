"""Reliability benchmark: runs killed or interrupted at random moments,
fuzzed input files, and two runs with the same seed. Not collected by
pytest. Run from the repository root:

    python tests/bench_reliability.py --kills 50 --interrupts 20 --fuzz 500

Prints one table: how many output files were found truncated or
unparsable after SIGKILL, how many SIGINT runs left outputs for exactly
their completed epochs, how many fuzzed files ended in a traceback or a
hang, and whether two same-seed runs wrote identical estimate files.
"""

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import mi_data_processing  # noqa: E402
import mi_main  # noqa: E402
from mi_data_processing import make_known_mi_rows, save_rows  # noqa: E402

# One split (--folds 1): the checks read a single critic's files in OUTPUT_DIR.
RUN = [
    sys.executable,
    os.path.join(REPO, "mi_main.py"),
    "--folds",
    "1",
    "--batch_size",
    "128",
    "--hid_width",
    "32",
    "--checkpoint_seconds",
    "0",
]


def outputs_whole(output_dir):
    """Every output file present parses completely (none truncated)."""
    for name in os.listdir(output_dir):
        path = os.path.join(output_dir, name)
        if name.endswith(".dat"):
            values = np.loadtxt(path, ndmin=1)
            if not np.isfinite(values).all():
                return False
        elif name.endswith(".json"):
            with open(path) as stream:
                json.load(stream)
    return True


def killed_runs(path, scratch, count, rng):
    broken = 0
    output_dir = os.path.join(scratch, "killed")
    for _ in range(count):
        process = subprocess.Popen(
            [*RUN, "--input", path, "--output_dir", output_dir, "--n_epoch", "400"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(rng.uniform(4.0, 9.0))  # start-up takes ~4 s; then epochs, checkpoints and writes
        process.kill()
        process.wait()
        try:
            broken += 0 if not os.path.isdir(output_dir) or outputs_whole(output_dir) else 1
        except (ValueError, OSError):
            broken += 1
    return broken


def interrupted_runs(path, scratch, count):
    exact = 0
    for index in range(count):
        output_dir = os.path.join(scratch, f"interrupted-{index}")
        process = subprocess.Popen(
            [*RUN, "--input", path, "--output_dir", output_dir, "--n_epoch", "100000"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        for line in process.stdout:
            if line.startswith(f"epoch {2 + index % 5:4d}/"):
                process.send_signal(2)
                break
        process.communicate(timeout=120)
        with open(os.path.join(output_dir, mi_main.SUMMARY_FILE)) as stream:
            summary = json.load(stream)
        rows = len(np.loadtxt(os.path.join(output_dir, mi_data_processing.ESTIMATE_FILE), ndmin=1))
        exact += (
            process.returncode == 130 and summary["status"] == "interrupted" and rows == summary["epochs_completed"]
        )
    return exact


def fuzzed_inputs(scratch, count, rng):
    """Files made by mangling valid rows; each is run through mi_main in
    this process (as the CLI would) to see it load or end with status 2."""
    tokens = ["nan", "inf", "-Infinity", "x", "1,5", "1e999", "1e-999", "", "#", "\ufeff", "\r", "\t", "\x00", "é"]
    tracebacks = hangs = 0
    base = make_known_mi_rows(40, 0.5, seed=0)[0]
    for index in range(count):
        lines = [" ".join(f"{value:.6g}" for value in row) for row in base]
        for _ in range(rng.randint(1, 4)):
            line = rng.randrange(len(lines))
            kind = rng.random()
            if kind < 0.3:
                parts = lines[line].split(" ")
                parts[rng.randrange(len(parts))] = rng.choice(tokens)
                lines[line] = " ".join(parts)
            elif kind < 0.5:
                lines[line] = " ".join(lines[line].split(" ")[: rng.randint(0, 21)])
            elif kind < 0.7:
                lines.insert(line, rng.choice(["", "# comment", "   ", "\x00\x01\x02"]))
            else:
                lines[line] = lines[line] + " " + rng.choice(tokens)
        content = (rng.choice(["\n", "\r\n"])).join(lines).encode("utf-8", "surrogatepass")
        if rng.random() < 0.05:
            content = bytes(rng.getrandbits(8) for _ in range(200))
        path = os.path.join(scratch, "fuzz.dat")
        with open(path, "wb") as stream:
            stream.write(content)
        flags = [
            "--input",
            path,
            "--output_dir",
            os.path.join(scratch, "fuzz-out"),
            "--n_epoch",
            "1",
            "--batch_size",
            "8",
            "--hid_width",
            "8",
            "--quiet",
        ]
        if index % 50 == 0:  # a real process now and then; the rest in this process, far quicker
            try:
                result = subprocess.run([*RUN[:2], *flags], capture_output=True, text=True, timeout=120)
            except subprocess.TimeoutExpired:
                hangs += 1
                continue
            tracebacks += "Traceback" in result.stderr or result.returncode not in (0, 2)
            continue
        try:
            with open(os.devnull, "w") as sink:
                stdout, stderr = sys.stdout, sys.stderr
                sys.stdout = sys.stderr = sink
                try:
                    mi_main.main(flags)
                finally:
                    sys.stdout, sys.stderr = stdout, stderr
        except SystemExit as stop:
            tracebacks += stop.code not in (0, 2)
        except Exception:  # noqa: BLE001 - counting exactly these is the point
            tracebacks += 1
    return tracebacks, hangs


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=50)
    parser.add_argument("--interrupts", type=int, default=20)
    parser.add_argument("--fuzz", type=int, default=500)
    args = parser.parse_args()
    rng = random.Random(0)
    with tempfile.TemporaryDirectory() as scratch:
        path = os.path.join(scratch, "rows.dat")
        save_rows(path, make_known_mi_rows(4000, 0.5, seed=1)[0])
        broken = killed_runs(path, scratch, args.kills, rng)
        exact = interrupted_runs(path, scratch, args.interrupts)
        tracebacks, hangs = fuzzed_inputs(scratch, args.fuzz, rng)
        runs = []
        for name in ["same-seed-1", "same-seed-2"]:
            subprocess.run(
                [*RUN, "--input", path, "--output_dir", os.path.join(scratch, name), "--n_epoch", "5", "--quiet"],
                check=True,
                stdout=subprocess.DEVNULL,
            )
            with open(os.path.join(scratch, name, mi_data_processing.ESTIMATE_FILE), "rb") as stream:
                runs.append(stream.read())
    print("| check | result | target |")
    print("| --- | --- | --- |")
    print(f"| runs killed with SIGKILL at random moments | {args.kills} | |")
    print(f"| output files found truncated or unparsable | {broken} | 0 |")
    print(f"| SIGINT runs leaving outputs for exactly their completed epochs | {exact} of {args.interrupts} | all |")
    print(f"| fuzzed input files | {args.fuzz} | |")
    print(f"| tracebacks or exit statuses other than 0 and 2 | {tracebacks} | 0 |")
    print(f"| hangs (over 120 s) | {hangs} | 0 |")
    print(f"| two same-seed runs: identical estimate files | {runs[0] == runs[1]} | True |")


if __name__ == "__main__":
    main()
