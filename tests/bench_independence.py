"""Independence-test benchmark: its size under independence, and its power beside hyppo's HSIC and Dcorr.

Not collected by pytest. It needs hyppo (pip install hyppo==0.5.2, which brings scipy), beside the project's
requirements. Run from the repository root; each command appends one JSON line per data set to its record (a
data set already there is skipped, so a stopped run continues), and `report` prints the tables:

    python tests/bench_independence.py null --rows 500 --sets 125 --record null.jsonl
    python tests/bench_independence.py power --rows 500 --sets 20 --record power.jsonl
    python tests/bench_independence.py power --rows 100 --sets 50 --record power.jsonl
    python tests/bench_independence.py power --rows 500 --sets 20 --dims 10 --record power.jsonl
    python tests/bench_independence.py report null.jsonl power.jsonl
    python tests/bench_independence.py cost --repeats 5    # seconds a run with and without the test, interleaved
    python tests/bench_independence.py toy --sets 4000      # the combination rules' size on the tests' toy model
    python tests/bench_independence.py null ... -- --n_epoch 30        # mi_main flags after --

Null families: x ~ N(0, I_10) and z ~ N(0, 1); x and z standard Cauchy (Student t, 1 degree of freedom); x ~
N(0, I_10) and z one of three values (ties); hyppo's multimodal_independence. Power: hyppo's 19 dependent
indep_sim simulations with their noise (noise=True, as hyppo's power benchmarks draw them), the same rows for all
three tests. Our test runs mi_main's defaults with --permutations 999 (data set i's run seeded i); HSIC and Dcorr
take 1,000 permutations, or their fast approximations (auto=True, as hyppo chooses by the rows). The report also
gives, from the fold p-values, other rules valid however the folds depend on each other, at the same rows.
"""

import argparse
import functools
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
from hyppo.independence import Dcorr, Hsic
from hyppo.tools import indep_sim
from scipy import stats

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import mi_main  # noqa: E402

ALPHA = 0.05
PERMUTATIONS = 999


def null_rows(family, rows, generator):
    """(x, z) of one null data set: x and z independent."""
    if family == "gaussian-10x1":
        return generator.normal(size=(rows, 10)), generator.normal(size=(rows, 1))
    if family == "student-t-df1":
        return generator.standard_cauchy(size=(rows, 1)), generator.standard_cauchy(size=(rows, 1))
    if family == "discrete-z":
        return generator.normal(size=(rows, 10)), generator.integers(0, 3, size=(rows, 1)).astype(float)
    np.random.seed(generator.integers(2**31))  # hyppo draws from NumPy's global generator
    return indep_sim("multimodal_independence", rows, 1)


NULL_FAMILIES = ("gaussian-10x1", "student-t-df1", "discrete-z", "multimodal_independence")
DEPENDENT = [name for name in ("linear", "exponential", "cubic", "joint_normal", "step", "quadratic", "w_shaped",
             "spiral", "uncorrelated_bernoulli", "logarithmic", "fourth_root", "sin_four_pi", "sin_sixteen_pi",
             "square", "two_parabolas", "circle", "ellipse", "diamond", "multiplicative_noise")]  # fmt: skip
NOISE = {"multiplicative_noise": {}}  # as hyppo's power benchmarks draw them: with noise, where a simulation has it
WIDE = ("linear", "quadratic", "spiral", "sin_four_pi", "circle")  # the five at --dims 10
# MGC's published power at 100 rows, one dimension (hyppo's paper, as the issue gives it)
MGC_PUBLISHED = {"spiral": 0.94, "sin_four_pi": 0.84, "circle": 0.85, "square": 0.64}
HARD = ("sin_four_pi", "sin_sixteen_pi", "spiral", "circle", "square")


def our_test(x, z, seed, flags):
    start = time.perf_counter()
    summary = mi_main.independence_test(x, z, PERMUTATIONS, seed=seed, quiet=True, **flags).summary
    return {
        "p": summary["p_value"],
        "fold_p": summary["fold_p_values"],
        "stat": summary["test_statistic"],
        "mi": summary["mi_estimate"],
        "test_seconds": summary["test_seconds"],
        "seconds": round(time.perf_counter() - start, 2),
    }


def hyppo_tests(x, z, seed):
    p_values = {}
    for name, test in (("hsic", Hsic()), ("dcorr", Dcorr())):
        p_values[name] = float(test.test(x, z, reps=1000, auto=True, random_state=seed)[1])
    return p_values


def flags_of(words):
    """mi_main flags given after --, as estimate() keywords (values as text; estimate() parses them)."""
    flags, name = {}, None
    for word in words:
        if word.startswith("--"):
            name = word[2:]
            flags[name] = True
        else:
            flags[name] = word
    return flags


def done_keys(record):
    if not os.path.exists(record):
        return set()
    with open(record) as lines:
        return {(r["kind"], r["family"], r["rows"], r["dims"], r["set"]) for r in map(json.loads, lines)}


def run(args, flags):
    done = done_keys(args.record)
    if args.kind == "null":
        jobs = [(family, 1) for family in NULL_FAMILIES]
    else:
        jobs = [(name, args.dims) for name in (WIDE if args.dims > 1 else DEPENDENT)]
    for index in range(args.sets):  # a set of every family at a time: a stopped run has them all alike
        for number, (family, dims) in enumerate(jobs):
            key = (args.kind, family, args.rows, dims, index)
            if key in done:
                continue
            if args.kind == "null":
                x, z = null_rows(family, args.rows, np.random.default_rng([number, index, args.rows]))
            else:
                np.random.seed(1000 * number + index + args.rows * dims)
                x, z = indep_sim(family, args.rows, dims, **NOISE.get(family, {"noise": True}))
            x, z = np.asarray(x, np.float32).reshape(args.rows, -1), np.asarray(z, np.float32).reshape(args.rows, -1)
            line = dict(zip(("kind", "family", "rows", "dims", "set"), key, strict=True))
            line |= our_test(x, z, index, flags) | {"flags": flags}
            if args.kind == "power":
                line |= hyppo_tests(x, z, index)
            with open(args.record, "a") as out:
                out.write(json.dumps(line) + "\n")
            print(json.dumps(line), flush=True)


def merged(fold_p, rule):
    """Rules that merge K p-values validly however they depend on each other (Vovk and Wang 2020)."""
    p, k = np.sort(np.asarray(fold_p)), len(fold_p)
    value = {
        "bonferroni": k * p[0],
        "twice the mean": 2 * p.mean(),
        "e times the geometric mean": np.e * np.exp(np.log(p).mean()),
        "twice the median (Rüger)": p[(k + 1) // 2 - 1] * k / ((k + 1) // 2),
        "the largest": p[-1],
    }[rule]
    return min(1.0, value)


def fisher(fold_p):
    return float(stats.chi2.sf(-2 * np.log(fold_p).sum(), 2 * len(fold_p)))


def toy(sets):
    """Sizes at 0.05 of the rules on the toy model of the tests (fold critics fitted on the other folds)."""
    from test_independence import shared_training_critic_p_values  # here: it brings the tests' fixtures

    generator = np.random.default_rng(0)
    p_values = [shared_training_critic_p_values(generator) for _ in range(sets)]
    print(f"{sets} toy null data sets (tests/test_independence.py), rejections at 0.05:")
    for name, rule in [(rule, functools.partial(merged, rule=rule)) for rule in RULES] + [("Fisher", fisher)]:
        size = np.mean([rule(each) <= ALPHA for each in p_values])
        print(f"- {name}: {size:.4f} ± {np.sqrt(size * (1 - size) / sets):.4f}")


RULES = ("bonferroni", "twice the mean", "e times the geometric mean", "twice the median (Rüger)", "the largest")


def report(paths):
    records = [json.loads(line) for path in paths for line in open(path)]
    null = [r for r in records if r["kind"] == "null"]
    if null:
        print(
            "| null family | rows | data sets | rejected at 0.05 | KS uniformity, fold 1's p (two-sided) | "
            "KS, the combined p (one-sided: too many small) | seconds a run (test) |"
        )
        print("|---|---|---|---|---|---|---|")
        for family in NULL_FAMILIES:
            rows = [r for r in null if r["family"] == family]
            if not rows:
                continue
            combined, first = np.array([r["p"] for r in rows]), np.array([r["fold_p"][0] for r in rows])
            print(
                f"| {family} | {rows[0]['rows']} | {len(rows)} | {np.sum(combined <= ALPHA)} | "
                f"{stats.kstest(first, 'uniform').pvalue:.3f} | "
                f"{stats.kstest(combined, 'uniform', alternative='greater').pvalue:.3f} | "
                f"{np.mean([r['seconds'] for r in rows]):.1f} ({np.mean([r['test_seconds'] for r in rows]):.2f}) |"
            )
        everything = np.array([r["p"] for r in null])
        print(f"| all | | {len(null)} | {np.sum(everything <= ALPHA)} | | | |")
        print("\nOther valid rules on the same fold p-values, rejections at 0.05 of all null data sets:")
        for rule in RULES:
            print(f"- {rule}: {sum(merged(r['fold_p'], rule) <= ALPHA for r in null)} of {len(null)}")
        print(f"- Fisher's (valid only for independent p-values): {sum(fisher(r['fold_p']) <= ALPHA for r in null)}")
    power = [r for r in records if r["kind"] == "power"]
    for rows, dims in sorted({(r["rows"], r["dims"]) for r in power}):
        cell = [r for r in power if r["rows"] == rows and r["dims"] == dims]
        print(f"\nPower at {rows} rows, {dims} dimension{'s' if dims > 1 else ''}, alpha 0.05 (data sets a cell):")
        print(
            "| simulation | sets | ours | HSIC | Dcorr | MGC (published, 100 rows, 1-D) | ours, other rules: "
            + ", ".join(RULES[1:])
            + " |"
        )
        print("|---|---|---|---|---|---|---|")
        wins = 0
        for family in DEPENDENT:
            rows_of = [r for r in cell if r["family"] == family]
            if not rows_of:
                continue
            ours, hsic, dcorr = (np.mean([r[key] <= ALPHA for r in rows_of]) for key in ("p", "hsic", "dcorr"))
            wins += ours >= hsic
            others = " / ".join(
                f"{np.mean([merged(r['fold_p'], rule) <= ALPHA for r in rows_of]):.2f}" for rule in RULES[1:]
            )
            mgc = MGC_PUBLISHED.get(family, "") if rows == 100 and dims == 1 else ""
            print(
                f"| {family}{' (hard)' if family in HARD else ''} | {len(rows_of)} | {ours:.2f} | {hsic:.2f} | "
                f"{dcorr:.2f} | {mgc} | {others} |"
            )
        print(f"ours at least HSIC's in {wins} of {len({r['family'] for r in cell})}")


def cost(repeats):
    """Wall seconds of fresh mi_main processes, at the defaults and with --permutations 999, one after the other
    (interleaved, so that the machine's load falls on both alike), on the shipped data and on the reference's
    20-row sample; and the test's own seconds (test_seconds of summary.json)."""
    inputs = [
        os.path.join("data", "input_set.dat"),
        os.path.join("..", "shared", "reference_sample", "combined_input.dat"),
    ]
    print("| input | seconds, defaults | with --permutations 999 | ratio | the test's own seconds | p-value |")
    print("|---|---|---|---|---|---|")
    for path in inputs:
        if not os.path.exists(path):
            print(f"{path}: not here, skipped")
            continue
        seconds, test_seconds, p_values = {"0": [], "999": []}, [], []
        with tempfile.TemporaryDirectory() as scratch:
            for _ in range(repeats):
                for permutations in seconds:
                    argv = [sys.executable, "mi_main.py", "--input", path, "--quiet", "--output_dir", scratch]
                    start = time.perf_counter()
                    subprocess.run([*argv, "--permutations", permutations], check=True, capture_output=True)
                    seconds[permutations].append(time.perf_counter() - start)
                    if permutations != "0":
                        summary = json.load(open(os.path.join(scratch, mi_main.SUMMARY_FILE)))
                        test_seconds.append(summary["test_seconds"])
                        p_values.append(summary["p_value"])
        without, with_test = np.median(seconds["0"]), np.median(seconds["999"])
        print(
            f"| {path} | {without:.1f} | {with_test:.1f} | {with_test / without:.3f} | {np.median(test_seconds):.2f} "
            f"| {p_values[0]} |"
        )


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kind", choices=("null", "power", "report", "cost", "toy"))
    parser.add_argument("records", nargs="*", help="with report: the records to read")
    parser.add_argument("--rows", type=int, default=500)
    parser.add_argument("--sets", type=int, default=20, help="data sets of each family or simulation")
    parser.add_argument("--dims", type=int, default=1, help="power: columns of x (10: the five of WIDE)")
    parser.add_argument("--record", default="independence.jsonl")
    parser.add_argument("--repeats", type=int, default=5, help="cost: runs of each kind, interleaved")
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    args = parser.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    if args.kind == "report":
        report(args.records)
    elif args.kind == "cost":
        cost(args.repeats)
    elif args.kind == "toy":
        toy(args.sets)
    else:
        run(args, flags_of(extra))


if __name__ == "__main__":
    main()
