"""The server's strategies on tiny weight records (no DAE, no federation): FedAdam steps the
model half only, the EMA half is the sites' plain weighted mean, and eta_l is the clients' rate."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAdam

from ndae.federation.config import FederationConfig
from ndae.federation.inprocess import InProcessGrid
from ndae.federation.server.strategy import (
    FedAdamPlainEMA, dae_config_for, load_strategy_state, make_strategy, strategy_state,
)

# Two sites with different sizes and weights; the global record starts at zero.
SITES = {"a": (1, np.array([1.0, 2.0, -3.0], np.float32), np.array([0.1, 0.2, 0.3], np.float32)),
         "b": (3, np.array([-1.0, 0.5, 1.0], np.float32), np.array([0.5, -0.5, 0.7], np.float32))}


def _global(model=None, ema=None) -> ArrayRecord:
    zeros = np.zeros(3, np.float32)
    return ArrayRecord({"model.w": Array(zeros if model is None else model),
                        "ema.w": Array(zeros if ema is None else ema)})


def _grid():
    names = sorted(SITES)
    grid = InProcessGrid(names, {}, client_app=lambda message, context: _reply(message, context))
    return grid


def _reply(message: Message, context) -> Message:
    n, model, ema = SITES[context.node_config["manifest"]]
    shift = float(message.content["arrays"]["model.w"].numpy().sum())  # replies move with the global weights
    content = RecordDict({"arrays": ArrayRecord({"model.w": Array(model + shift), "ema.w": Array(ema + shift)}),
                          "metrics": MetricRecord({"num-examples": n, "train-loss": 1.0})})
    return Message(content, reply_to=message)


def _round(strategy, grid, number: int, record: ArrayRecord):
    messages = list(strategy.configure_train(number, record, ConfigRecord({}), grid))
    replies = list(grid.send_and_receive(messages))
    return strategy.aggregate_train(number, replies), replies


def _weighted_mean(replies, key: str) -> np.ndarray:
    n = np.array([float(r.content["metrics"]["num-examples"]) for r in replies])
    values = np.stack([r.content["arrays"][key].numpy() for r in replies]).astype(np.float64)
    return (n[:, None] * values).sum(0) / n.sum()


def test_fedadam_ema_half_is_the_plain_weighted_mean_and_model_half_is_flowers_fedadam():
    grid = _grid()
    strategy = make_strategy(FederationConfig(strategy="fedadam", server_learning_rate=0.05),
                             dae_config_for(FederationConfig(), 1))
    assert isinstance(strategy, FedAdamPlainEMA)
    reference = FedAdam(eta=0.05, fraction_evaluate=0.0, min_train_nodes=1, min_available_nodes=1)
    record, reference_record = _global(), ArrayRecord({"model.w": _global()["model.w"]})
    for number in (1, 2):  # the second round uses the moments of the first
        (record, _), replies = _round(strategy, grid, number, record)
        reference_replies = [Message(RecordDict({"arrays": ArrayRecord({"model.w": r.content["arrays"]["model.w"]}),
                                                 "metrics": r.content["metrics"]}), reply_to=m)
                             for r, m in zip(replies, reference.configure_train(number, reference_record,
                                                                                ConfigRecord({}), grid))]
        reference_record, _ = reference.aggregate_train(number, reference_replies)
        np.testing.assert_allclose(record["ema.w"].numpy(), _weighted_mean(replies, "ema.w"), rtol=1e-6)
        np.testing.assert_array_equal(record["model.w"].numpy(), reference_record["model.w"].numpy())
        # The model half really is Adam's step, not the mean (else the test above says nothing).
        assert not np.allclose(record["model.w"].numpy(), _weighted_mean(replies, "model.w"), atol=1e-3)
    assert set(strategy.m_t) == set(strategy.v_t) == {"model.w"}


def test_fedadam_state_round_trip_resumes_exactly_and_drops_old_ema_moments():
    grid = _grid()
    config, dae = FederationConfig(strategy="fedadam"), dae_config_for(FederationConfig(), 1)
    running = make_strategy(config, dae)
    (record, _), _ = _round(running, grid, 1, _global())
    state = strategy_state(running)
    state_with_old_ema = {name: {**value, "ema.w": value["model.w"].clone()} for name, value in state.items()}
    resumed = make_strategy(config, dae)
    load_strategy_state(resumed, state_with_old_ema)  # a checkpoint written before the EMA was left out
    (expected, _), _ = _round(running, grid, 2, record)
    (got, _), _ = _round(resumed, grid, 2, record)
    for key in ("model.w", "ema.w"):
        np.testing.assert_array_equal(got[key].numpy(), expected[key].numpy())


@pytest.mark.parametrize("learning_rate", [2.5e-4, 0.0])  # 0: the preset's rate
def test_fedadam_eta_l_is_the_clients_learning_rate(learning_rate):
    config = FederationConfig(strategy="fedadam", server_learning_rate=0.05, learning_rate=learning_rate)
    dae = dae_config_for(config, 1)
    strategy = make_strategy(config, dae)
    assert strategy.eta == 0.05
    assert strategy.eta_l == dae.train.learning_rate != config.server_learning_rate
    if learning_rate:
        assert strategy.eta_l == learning_rate


def test_fedavg_and_fedprox_average_both_halves():
    grid = _grid()
    dae = dae_config_for(FederationConfig(), 1)
    for name in ("fedavg", "fedprox"):
        strategy = make_strategy(FederationConfig(strategy=name, proximal_mu=0.1), dae)
        (record, _), replies = _round(strategy, grid, 1, _global())
        for key in ("model.w", "ema.w"):
            np.testing.assert_allclose(record[key].numpy(), _weighted_mean(replies, key), rtol=1e-6)
