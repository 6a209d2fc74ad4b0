"""tf.distribute: the global bound over replicas equals the single-device
bound, step for step, two workers on loopback train as one process, and the
Keras layer trains under replicas."""

import json
import os
import socket
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import REPO
from encoders import BATCH_ROWS, infomax_mi, infomax_model, infomax_rows
from epoch_rows import epoch_batches

import mi_main
from mi_model import ESTIMATORS, MineModel, cross_replica_bound, donsker_varadhan_bound, f_divergence_bound


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_cross_replica_bound_of_one_replica_is_the_plain_bound(estimator):
    joint_scores = tf.random.stateless_normal([1, 40, 1], seed=[1, 1])
    marginal_scores = tf.random.stateless_normal([1, 40, 1], seed=[2, 2]) * 30.0  # large: logsumexp must stay exact
    bound_of = f_divergence_bound if estimator == "mine_f" else donsker_varadhan_bound
    real_rows = tf.constant([[1.0] * 33 + [0.0] * 7])  # the last 7 are padding
    expected = bound_of(joint_scores[:, :33], marginal_scores[:, :33])
    found = cross_replica_bound(
        joint_scores, marginal_scores, estimator, lambda value: value, lambda value: value, real_rows
    )
    np.testing.assert_allclose(
        [float(value) for value in found[:3]], [float(value[0]) for value in expected], rtol=1e-6
    )


def train_one_epoch(strategy, estimator, initial_weights, batches, batch_rows):
    # SGD: see test_training_loop, Adam magnifies float32 noise
    config = mi_main.Config(hid_width=32, candidates="rank:tanh", estimator=estimator, optimizer="sgd")
    critics = mi_main.CompiledCritics(config.critic_settings, 1, strategy, seed=None)
    critics.model.set_weights(initial_weights)
    critics.set_learning_rate(0.05, 0.05, 1)
    means, _, _ = critics.train_epoch([(batches, batch_rows)], None, 0, 1, [0])
    return means[0], [weight.numpy() for weight in critics.model.weights]


@pytest.fixture(scope="module")
def mirrored():
    # One strategy for all the tests: collective instance keys of several
    # MirroredStrategy objects in one process can collide.
    return tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])


@pytest.mark.slow
@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_mirrored_replicas_train_exactly_as_one_device(estimator, mirrored):
    rows = np.random.default_rng(0).standard_normal((70, 22)).astype(np.float32)
    batches, batch_rows = next(iter(epoch_batches([rows], 32, seed=0, first_epoch=0, n_epoch=1, resample_latent_dim=1)))
    assert list(batch_rows.numpy()) == [32, 32, 6]  # the padded last batch: its padding splits unevenly too
    initial_weights = MineModel(10, 1, 32, 1, estimator).get_weights()
    one_means, one_weights = train_one_epoch(
        tf.distribute.get_strategy(), estimator, initial_weights, batches, batch_rows
    )
    two_means, two_weights = train_one_epoch(mirrored, estimator, initial_weights, batches, batch_rows)
    np.testing.assert_allclose(two_means, one_means, rtol=1e-5, atol=1e-6)
    assert not np.allclose(one_weights[0], initial_weights[0])  # it did train
    for two, one in zip(two_weights, one_weights, strict=True):
        np.testing.assert_allclose(two, one, rtol=1e-4, atol=1e-6)


def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


@pytest.mark.slow
def test_two_workers_on_loopback_give_the_single_process_estimate(known_mi_file, tmp_path):
    path = known_mi_file(n_rows=1000, mi_nats=0.5, seed=8)
    flags = [
        "--input",
        path,
        "--folds",
        "1",
        "--candidates",
        "rank:tanh",
        "--n_epoch",
        "3",
        "--batch_size",
        "128",
        "--hid_width",
        "32",
        "--no-jit",
    ]
    single = mi_main.main([*flags, "--output_dir", str(tmp_path / "single")])

    cluster = {"worker": [f"127.0.0.1:{port}" for port in free_ports(2)]}
    workers = []
    for index in range(2):
        environment = dict(
            os.environ, TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        )
        workers.append(
            subprocess.Popen(
                [
                    sys.executable,
                    os.path.join(REPO, "mi_main.py"),
                    *flags,
                    "--strategy",
                    "multi_worker",
                    "--output_dir",
                    str(tmp_path / "cluster"),
                ],
                env=environment,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    for worker in workers:
        output, _ = worker.communicate(timeout=240)
        assert worker.returncode == 0, output
    summary = json.loads((tmp_path / "cluster" / mi_main.SUMMARY_FILE).read_text())
    assert summary["mi_estimate"] == pytest.approx(single["mi_estimate"], abs=1e-3)
    assert (tmp_path / "cluster" / "worker-1" / mi_main.SUMMARY_FILE).exists()


@pytest.mark.slow
def test_the_keras_layer_trains_under_mirrored_replicas(mirrored):
    # Each replica re-pairs its own 128 rows; the bound is the global batch's, the same on both replicas, so the
    # loss fit shows (each replica's, averaged) is minus the bound it shows.
    keras.utils.set_random_seed(0)
    with mirrored.scope():
        model, encoder = infomax_model(seed=1)
        model.compile(optimizer=keras.optimizers.Adam(0.01), jit_compile=False)
    history = model.fit(infomax_rows(20_000, seed=0), epochs=5, batch_size=BATCH_ROWS, verbose=0).history
    np.testing.assert_allclose(history["loss"], -np.array(history[model.layers[-1].name]), atol=0.05)
    assert infomax_mi(encoder.get_weights()[0]) >= 2.1  # random encoders: 1.97 at the 95th percentile
    batch = infomax_rows(BATCH_ROWS, seed=1)
    shown = model.evaluate(batch, batch_size=BATCH_ROWS, verbose=0, return_dict=True)
    assert shown["loss"] == pytest.approx(-shown[model.layers[-1].name], abs=1e-6)
