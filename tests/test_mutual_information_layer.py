"""mi_model.MutualInformation, the MINE bound as a Keras layer: closed-form truths of InfoMax and nuisance
removal (tests/encoders.py), the reading afterwards with mi_main.estimate on fresh rows, monitor mode leaving
the model's training as it was to the bit, and a saved model's bound."""

import keras
import numpy as np
import pytest
from encoders import (
    BATCH_ROWS,
    INFOMAX_NOISE,
    NUISANCE_NOISE,
    encoded,
    infomax_mi,
    infomax_model,
    infomax_rows,
    nuisance_mi,
    nuisance_model,
    nuisance_rows,
)

import mi_main
from mi_model import MutualInformation

FRESH_ROWS = 10_000


@pytest.mark.slow
def test_infomax_reaches_the_closed_form_and_estimate_reads_it():
    keras.utils.set_random_seed(0)
    model, encoder = infomax_model(seed=1)
    model.compile(optimizer=keras.optimizers.Adam(0.01), jit_compile=True)
    history = model.fit(infomax_rows(20_000, seed=0), epochs=10, batch_size=BATCH_ROWS, verbose=0)
    kernel = encoder.get_weights()[0]
    assert infomax_mi(kernel) >= 2.30  # random encoders: 1.6 on average, optimum 2.515
    assert history.history[model.layers[-1].name][-1] > 1.5  # the batch bound, shown by fit
    x = infomax_rows(FRESH_ROWS, seed=1)
    summary = mi_main.estimate(x, encoded(kernel, x, INFOMAX_NOISE, seed=2), quiet=True)
    assert abs(summary["mi_estimate"] - infomax_mi(kernel)) <= 0.1


@pytest.mark.slow
def test_minimize_removes_the_nuisance_and_estimate_reads_it():
    keras.utils.set_random_seed(0)
    x, s, _ = nuisance_rows(10_000, seed=0)
    alone, alone_encoder = nuisance_model(layer=False)
    alone.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
    alone.fit([x, s], x, epochs=10, batch_size=BATCH_ROWS, verbose=0)
    assert nuisance_mi(alone_encoder.get_weights()[0])[0] > 2.5  # reconstruction alone keeps s: 3 nats at best
    model, encoder = nuisance_model(seed=1)
    model.compile(optimizer=keras.optimizers.Adam(0.003), loss="mse", jit_compile=False)
    model.fit([x, s], x, epochs=30, batch_size=BATCH_ROWS, verbose=0)
    kernel = encoder.get_weights()[0]
    nuisance, signal = nuisance_mi(kernel)
    assert nuisance <= 0.05 and signal >= 0.8
    fresh_x, fresh_s, _ = nuisance_rows(FRESH_ROWS, seed=1)
    summary = mi_main.estimate(encoded(kernel, fresh_x, NUISANCE_NOISE, seed=2), fresh_s, quiet=True)
    assert abs(summary["mi_estimate"] - nuisance) <= 0.03


def trained_weights(model, x, s, epochs=2):
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
    history = model.fit([x, s], x, epochs=epochs, batch_size=BATCH_ROWS, shuffle=False, verbose=0)
    return history.history, model.get_weights()


def test_monitor_leaves_the_model_training_as_it_was_to_the_bit():
    x, s, _ = nuisance_rows(2_000, seed=0)
    alone, _ = nuisance_model(layer=False)
    watched, _ = nuisance_model(mode="monitor", seed=1)
    layer = watched.layers[-2]
    assert isinstance(layer, MutualInformation)
    own_weights = [weight for weight in watched.weights if not weight.path.startswith(layer.name)]
    for weight, value in zip(own_weights, alone.get_weights(), strict=True):
        weight.assign(value)
    critic_before = layer.statistics_network.get_weights()
    alone_history, alone_weights = trained_weights(alone, x, s)
    watched_history, _ = trained_weights(watched, x, s)
    for found, expected in zip([weight.numpy() for weight in own_weights], alone_weights, strict=True):
        np.testing.assert_array_equal(found, expected)
    assert watched_history["loss"] == alone_history["loss"]  # the layer adds 0 to the loss
    assert np.isfinite(watched_history[layer.name]).all()
    assert any(np.any(a != b) for a, b in zip(layer.statistics_network.get_weights(), critic_before, strict=True))


def test_a_saved_model_gives_the_same_bound(tmp_path):
    keras.utils.set_random_seed(0)
    model, _ = infomax_model(seed=1)
    model.compile(optimizer="adam")
    x = infomax_rows(2_000, seed=0)
    model.fit(x, epochs=1, batch_size=BATCH_ROWS, verbose=0)
    model.save(tmp_path / "infomax.keras")
    loaded = keras.models.load_model(tmp_path / "infomax.keras")
    batch = x[:BATCH_ROWS]
    layer, loaded_layer = model.layers[-1], loaded.layers[-1]
    bound = model.evaluate(batch, batch_size=BATCH_ROWS, verbose=0, return_dict=True)[layer.name]
    assert loaded.evaluate(batch, batch_size=BATCH_ROWS, verbose=0, return_dict=True)[loaded_layer.name] == bound
    assert np.isfinite(layer.mine.log_moving_average.numpy()).all()
    np.testing.assert_array_equal(loaded_layer.mine.log_moving_average.numpy(), layer.mine.log_moving_average.numpy())
    assert loaded_layer.get_config() == layer.get_config()


@pytest.mark.parametrize("mode, jit_compile", [("maximize", True), ("minimize", False), ("minimize", True)])
def test_the_layer_trains_under_fit_with_and_without_xla(mode, jit_compile):
    # monitor trains under XLA (Keras's default here) in the bit-identity test above
    x, s, _ = nuisance_rows(1_024, seed=0)
    model, _ = nuisance_model(mode=mode, seed=1)
    model.compile(optimizer="adam", loss="mse", jit_compile=jit_compile)
    history = model.fit([x, s], x, epochs=2, batch_size=BATCH_ROWS, verbose=0).history
    assert np.isfinite(history["loss"]).all() and np.isfinite(history[model.layers[-2].name]).all()


@pytest.mark.parametrize(
    "arguments, message", [({"mode": "maximise"}, "mode must be one of"), ({"critic_steps": 0}, "critic_steps")]
)
def test_bad_arguments_are_refused(arguments, message):
    with pytest.raises(ValueError, match=message):
        MutualInformation(**arguments)
