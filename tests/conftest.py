"""Shared fixtures: the repository on sys.path and small known-MI files."""

import os
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import tensorflow as tf  # noqa: E402

import mi_main  # noqa: E402
from mi_data_processing import make_known_mi_rows, save_json, save_rows, sidecar_path  # noqa: E402

# Two logical CPU devices for the whole session, so that --strategy
# mirrored can be tested without GPUs; this must happen before TensorFlow
# runs its first operation.
tf.config.set_logical_device_configuration(
    tf.config.list_physical_devices("CPU")[0], [tf.config.LogicalDeviceConfiguration()] * 2
)
# As every run starts, but before the first test compiles with XLA: the session then shares XLA's disk cache.
mi_main.start_process()


def run_main(argv, capsys=None, status=0):
    """Runs mi_main.main in this process and checks its exit status against
    `status` (0: done); returns (exit status, stdout, stderr), the last two
    captured when capsys is given."""
    try:
        mi_main.main(argv)
        code = 0
    except SystemExit as stop:
        code = stop.code
    captured = capsys.readouterr() if capsys else None
    assert code == status, f"exit status {code}, expected {status}" + (f"; stderr: {captured.err}" if captured else "")
    return code, captured and captured.out, captured and captured.err


def logged_scalars(logdir):
    """{tag: {step: value}} of every scalar in a run's TensorBoard event files."""
    values = {}
    for event_file in logdir.iterdir():
        for event in tf.compat.v1.train.summary_iterator(str(event_file)):
            for value in event.summary.value:
                values.setdefault(value.tag, {})[event.step] = value.simple_value
    return values


@pytest.fixture
def known_mi_file(tmp_path):
    """Writes a generated row file with its sidecar and returns its path."""

    def write(n_rows=2000, mi_nats=1.0, seed=0, name="known.dat"):
        path = str(tmp_path / name)
        rows, description = make_known_mi_rows(n_rows, mi_nats, seed)
        save_rows(path, rows)
        save_json(sidecar_path(path), description)
        return path

    return write
