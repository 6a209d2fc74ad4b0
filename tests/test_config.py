"""One typed configuration: the compiled programs' cache key and the resume
identity derived from it, configurations that never change, and a Python
API that leaves the process as it found it."""

import dataclasses
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO

import mi_main
from mi_data_processing import make_known_mi_rows, save_rows

# Another value for each setting the compiled critics are built from (data_dim and latent_dim together: the
# same 22-column file reads as 10 + 1 or 9 + 2 columns).
OTHER_VALUES = [
    {"hid_width": 16},
    {"out_width": 2},
    {"candidates": "asinh:relu"},
    {"data_dim": 9, "latent_dim": 2},
    {"estimator": "mine_f"},
    {"ema_rate": 0.1},
    {"marginal": "file"},
    {"eval_permutations": 2},
    {"optimizer": "sgd"},
    {"adam_beta_2": 0.5},
    {"jit": False},
]


def gaussian(n_rows=500, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n_rows, 2))
    return x, x[:, :1] + rng.standard_normal((n_rows, 1))


def recording_compiled_critics(patch):
    """Every CompiledCritics that runs get from now on, in a list."""
    made, real = [], mi_main.compiled_critics

    def recording(*arguments):
        made.append(real(*arguments))
        return made[-1]

    patch.setattr(mi_main, "compiled_critics", recording)
    return made


@pytest.mark.slow
def test_two_estimates_that_differ_only_in_adam_beta_2_share_no_program(monkeypatch):
    made = recording_compiled_critics(monkeypatch)
    x, z = gaussian()
    first = mi_main.estimate(x, z, n_epoch=2, adam_beta_2=0.99, quiet=True)
    second = mi_main.estimate(x, z, n_epoch=2, adam_beta_2=0.5, quiet=True)
    trained = [stack for stack in made if "tanh" in {candidate.activation for candidate in stack.settings.candidates}]
    assert trained[0] is not trained[1] and trained[1].optimizer.beta_2 == 0.5  # (the fitted critics' stacks aside)
    assert first["training_rows_estimate"] != second["training_rows_estimate"]  # the chosen critic may be fitted


def test_every_setting_of_the_compiled_program_is_tried_below():
    assert {name for changes in OTHER_VALUES for name in changes} == set(mi_main.CRITIC_SETTINGS)


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    """run(config) of a small file, and the base configuration: 300 rows, two folds of one small critic."""
    path = str(tmp_path_factory.mktemp("rows") / "rows.dat")
    save_rows(path, make_known_mi_rows(300, 0.5, seed=4)[0])
    base = ["--input", path, "--folds", "2", "--candidates", "rank:tanh", "--hid_width", "8", "--n_epoch", "2"]
    base_config = dataclasses.replace(mi_main.parse_flags([*base, "--batch_size", "75", "--quiet"]), output_dir=None)

    def run(config):
        with pytest.MonkeyPatch.context() as patch:
            made = recording_compiled_critics(patch)
            summary = mi_main.run(config)
        # the per-epoch reading too: eval_permutations moves it, and the estimate's only through the chosen epoch
        return made[0], (summary["mi_estimate"], summary["training_rows_estimate"], summary["held_out_last_epoch"])

    return run, base_config, run(base_config)


@pytest.mark.slow
@pytest.mark.parametrize("changes", OTHER_VALUES, ids=lambda changes: ",".join(changes))
def test_each_setting_of_the_compiled_program_makes_another_program_and_estimate(small_run, changes):
    run, base_config, (base_compiled, base_figures) = small_run
    compiled, figures = run(dataclasses.replace(base_config, **changes))
    assert compiled is not base_compiled and compiled.settings != base_compiled.settings
    assert figures != base_figures


def test_mine_f_by_default_leaves_out_the_fitted_candidates_it_would_refuse():
    names = [candidate.name for candidate in mi_main.parse_flags(["--estimator", "mine_f"]).candidates]
    assert names == ["rank:tanh", "asinh:relu:wd0.5", "asinh:relu:wd2"]
    with pytest.raises(mi_main.InputError, match="copula"):
        mi_main.check_combination(
            mi_main.parse_flags(["--estimator", "mine_f", "--candidates", "rank:tanh,rank:copula"])
        )


def test_a_config_never_changes_and_adapting_makes_a_new_one():
    config = mi_main.parse_flags([])
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.n_epoch = 3
    assert config.adaptable == {"folds", "batch_size", "n_epoch", "data_dim", "latent_dim", "permutations"}
    given = mi_main.parse_flags(["--folds", "3", "--n_epoch", "7", "--permutations", "99"])
    assert given.adaptable == {"batch_size", "data_dim", "latent_dim"}


def test_the_resume_identity_is_the_settings_marked_resume():
    identity = mi_main.parse_flags(["--hid_width", "64"]).identity()
    marked = {name for name, field in mi_main.FLAG_FIELDS.items() if field.metadata.get("resume")}
    assert set(identity) == marked and identity["hid_width"] == 64 and "lr" not in identity


def run_python(code, **environment):
    """Python code in a fresh process from the repository, TensorFlow's log level and XLA flags unset and
    oneDNN on (as TensorFlow sets it by itself on CPUs with AVX-512, which log more as it loads)."""
    env = {**os.environ, "TF_ENABLE_ONEDNN_OPTS": "1", **environment}
    for name in ("TF_CPP_MIN_LOG_LEVEL", "TF_XLA_FLAGS"):
        env.pop(name, None)
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=240, env=env)


@pytest.mark.slow
def test_importing_mi_main_sets_no_environment_variable():
    code = (
        "import os, tensorflow\n"
        "before = dict(os.environ)\n"
        "import mi_main\n"
        "print(sorted(name for name in {*before, *os.environ} if before.get(name) != os.environ.get(name)))\n"
    )
    result = run_python(code)
    assert result.returncode == 0 and result.stdout.strip() == "[]", result.stderr


@pytest.mark.slow
def test_many_estimates_in_one_process_keep_stderr_empty():
    # TensorFlow warned of retracing after five runs of a function made anew per run, or of one made per
    # configuration (here every call has its own learning rate, so its own compiled critics).
    code = (
        "import numpy as np, mi_main\n"
        "rng = np.random.default_rng(0)\n"
        "x = rng.standard_normal((300, 2)); z = x[:, :1] + rng.standard_normal((300, 1))\n"
        "for run in range(7):\n"
        "    mi_main.estimate(\n"
        "        x, z, n_epoch=2, lr=0.001 * (run + 1), folds=2, candidates='rank:tanh', hid_width=8, quiet=True\n"
        "    )\n"
    )
    result = run_python(code)
    assert result.returncode == 0 and result.stderr == ""
