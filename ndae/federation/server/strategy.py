"""How the DAE is trained across sites: its config from the run config, the Flower strategy that
aggregates the sites' weights (FedAvg, FedAdam or FedProx), and that strategy's state in the
checkpoint (FedAdam's moments), so a resumed run continues exactly.

The weights message holds two halves (`ndae.federation.records`): `model.*`, the weights the
sites train, and `ema.*`, each site's exponential moving average of its local iterates.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
from flwr.app import ArrayRecord, Message, MetricRecord
from flwr.serverapp.strategy import FedAdam, FedAvg, FedProx

from ndae.federation.config import FederationConfig
from ndae.federation.records import EMA_PREFIX

__all__ = ["FedAdamPlainEMA", "dae_config_for", "load_strategy_state", "make_strategy", "strategy_state"]


def dae_config_for(config: FederationConfig, channels: int):
    """The DAE every site trains: the run's preset at the sites' slice count, with the run's
    batch size, learning rate and seed where it sets them."""
    from ndae.model import preset

    cfg = preset(config.dae_preset).with_data_shape(channels)
    if config.batch_size:
        cfg.train.batch_size = int(config.batch_size)
    if config.learning_rate:
        cfg.train.learning_rate = float(config.learning_rate)
    cfg.train.seed = int(config.seed)
    return cfg


def make_strategy(config: FederationConfig, dae_config):
    common = dict(fraction_evaluate=0.0, min_train_nodes=1, min_available_nodes=1)
    if config.strategy == "fedadam":
        # eta is the server's step; eta_l is Flower's record of the clients' learning rate (its
        # FedAdam only logs it), so it is the rate the sites' local optimiser really uses.
        return FedAdamPlainEMA(eta=config.server_learning_rate, eta_l=float(dae_config.train.learning_rate),
                               **common)
    if config.strategy == "fedprox":
        return FedProx(proximal_mu=config.proximal_mu, **common)
    return FedAvg(**common)


class FedAdamPlainEMA(FedAdam):
    """Flower's FedAdam on the `model.*` half of the weights; the `ema.*` half is the plain
    weighted mean of the sites' EMAs (what FedAvg gives).

    The EMA is a smoothing of the training trajectory, not a parameter being optimised. An Adam
    step on it is sized by `eta`, `tau` and the EMA's own running RMS change, not by how far the
    sites' EMAs moved, and Adam's momentum carries it on past them: it would stop being an average
    of iterates at all. Each site starts its EMA from the global one and updates it along its
    local steps; their mean, weighted by examples, is the EMA of the round's averaged trajectory
    (exactly so when the sites take equal numbers of steps), as under FedAvg."""

    def _compute_deltat_and_mt(self, aggregated_arrayrecord: ArrayRecord):
        # FedAdam.aggregate_train calls this with the weighted mean of every array, then steps
        # every key of `current_arrays`: keep the EMA's mean aside and hand Adam the model only.
        self._ema_mean = ArrayRecord({k: a for k, a in aggregated_arrayrecord.items() if k.startswith(EMA_PREFIX)})
        self.current_arrays = {k: v for k, v in self.current_arrays.items() if not k.startswith(EMA_PREFIX)}
        model = ArrayRecord({k: a for k, a in aggregated_arrayrecord.items() if not k.startswith(EMA_PREFIX)})
        return super()._compute_deltat_and_mt(model)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        self._ema_mean = ArrayRecord()
        stepped, metrics = super().aggregate_train(server_round, replies)
        if stepped is not None:
            for key, array in self._ema_mean.items():
                stepped[key] = array
        return stepped, metrics


def strategy_state(strategy) -> dict:
    """FedAdam's first and second moments as tensors (what `torch.save` keeps); {} otherwise."""
    import torch

    state = {}
    for name in ("m_t", "v_t"):
        value = getattr(strategy, name, None)
        if value:
            state[name] = {k: torch.as_tensor(np.asarray(v)) for k, v in value.items()}
    return state


def load_strategy_state(strategy, state: dict) -> None:
    for name, value in state.items():
        # A checkpoint from before FedAdamPlainEMA also has moments of the EMA half: Adam no
        # longer steps those keys (and Flower's update would fail on a key it does not step).
        setattr(strategy, name, {k: v.numpy() for k, v in value.items() if not k.startswith(EMA_PREFIX)})
