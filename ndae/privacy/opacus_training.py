"""DP-SGD for one site's training round, with accounting that keeps composing across rounds.

Opacus keeps the accountant inside the PrivacyEngine, and a federated site builds a fresh engine
every round: without care each round's epsilon would start from zero. `make_private` loads the
site's persisted history (from `SiteAccountant.history`, i.e. the ledger) into the new engine's
accountant before training, and `PrivateTraining.round_event()` reads back how many steps this
round took, for the ledger.

Modes: "hooks" (per-sample gradients by module hooks), "functorch" (per-sample gradients by
torch.func for every layer), "ghost" (ghost clipping: per-sample gradient norms without
materialising per-sample gradients; Opacus then returns a wrapped criterion that must be used
for the loss, and the criterion must give one loss per sample under reduction="none").

Randomness: the Gaussian noise comes from `noise_generator`, the Poisson sampling from
`sampling_generator` (Opacus' sampler would otherwise draw from the loader's generator, i.e. the
GLOBAL torch generator, which anything in the process can seed or read). A generator not given is
seeded from the operating system's CSPRNG (`ndae.privacy.randomness.SiteRandomness`), so DP-SGD
never touches the global generator.

Sample rate: Opacus' Poisson loader includes each record independently with probability
q = 1 / len(data_loader) = 1 / ceil(n / B) for n records and batch size B (not B / n: the two
differ when B does not divide n, e.g. n = 10, B = 4 gives q = 1/3, not 0.4), and one epoch is
ceil(n / B) steps. `PrivateTraining.sample_rate` is that q, the value the accountant and the
ledger use; `poisson_sample_rate` computes it without building an engine.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from opacus import PrivacyEngine
from opacus.validators import ModuleValidator

from ndae.errors import NdaeError
from ndae.privacy.accountant import History, PrivacyEvent, compact, epsilon_of

MODES = ("hooks", "functorch", "ghost")


@dataclass
class PrivateTraining:
    """What `make_private` returns: the private (module, optimizer, data_loader), the loss to
    use (Opacus' wrapper in ghost mode, otherwise the criterion given), and the engine."""

    module: torch.nn.Module
    optimizer: torch.optim.Optimizer
    data_loader: torch.utils.data.DataLoader
    criterion: Any
    engine: PrivacyEngine
    noise_multiplier: float
    max_grad_norm: float
    sample_rate: float  # q = 1 / len(data_loader) = 1 / ceil(n / B): what Opacus samples and accounts
    history_before: History = field(default_factory=list)
    sampling_generator: torch.Generator | None = None  # draws the Poisson batches
    noise_generator: torch.Generator | None = None  # draws the Gaussian noise

    def __iter__(self):  # module, optimizer, data_loader = make_private(...)
        return iter((self.module, self.optimizer, self.data_loader))

    @property
    def history(self) -> History:
        """The engine's accountant history now: everything before plus this round's steps."""
        return [tuple(step) for step in self.engine.accountant.history]

    @property
    def steps_this_round(self) -> int:
        return sum(s for _, _, s in self.history) - sum(s for _, _, s in self.history_before)

    def epsilon(self, delta: float) -> float:
        return float(self.engine.get_epsilon(delta))

    def round_event(self, records_touched: int | None = None, **details: Any) -> PrivacyEvent:
        """This round as one ledger event (DP-SGD, Poisson rate q, `steps_this_round` steps)."""
        if records_touched is None:
            records_touched = len(self.data_loader.dataset)
        return PrivacyEvent.dp_sgd(
            noise_multiplier=self.noise_multiplier, sample_rate=self.sample_rate,
            steps=self.steps_this_round, max_grad_norm=self.max_grad_norm,
            records_touched=records_touched, **details,
        )

    def planned_event(self, epochs: int = 1, records_touched: int | None = None) -> PrivacyEvent:
        """The event `epochs` epochs will make (Poisson sampling: len(data_loader) steps each),
        to check against the budget before training."""
        if records_touched is None:
            records_touched = len(self.data_loader.dataset)
        return PrivacyEvent.dp_sgd(
            noise_multiplier=self.noise_multiplier, sample_rate=self.sample_rate,
            steps=epochs * len(self.data_loader), max_grad_norm=self.max_grad_norm,
            records_touched=records_touched,
        )


def poisson_sample_rate(data_loader: torch.utils.data.DataLoader) -> float:
    """The Poisson sampling rate Opacus uses for this loader: 1 / len(data_loader), i.e.
    1 / ceil(n / B) for n records and batch size B (1 / floor(n / B) with drop_last)."""
    if len(data_loader) == 0:
        raise NdaeError("the site's data loader is empty")
    return 1 / len(data_loader)


def noise_multiplier_for_budget(
    target_epsilon: float, target_delta: float, sample_rate: float, steps: int,
    accountant_history: Sequence[Sequence[float]] = (), accountant: str = "rdp",
    tolerance: float = 0.01,
) -> float:
    """The smallest noise multiplier (to `tolerance` in epsilon) such that the history already
    spent plus `steps` steps at `sample_rate` stays within target_epsilon. Unlike Opacus'
    get_noise_multiplier, the budget already spent counts. Memoised (a pure function of its
    arguments): a site plans the same run again every round, and each solve takes seconds."""
    return _solve_noise_multiplier(float(target_epsilon), float(target_delta), float(sample_rate), int(steps),
                                   tuple(compact(accountant_history)), accountant, float(tolerance))


@functools.lru_cache(maxsize=256)
def _solve_noise_multiplier(target_epsilon: float, target_delta: float, sample_rate: float, steps: int,
                            prior: tuple, accountant: str, tolerance: float) -> float:
    prior = list(prior)
    if epsilon_of(prior, target_delta, accountant) >= target_epsilon:
        raise NdaeError(
            f"the budget epsilon {target_epsilon:g} is already spent "
            f"({epsilon_of(prior, target_delta, accountant):.4f} at delta {target_delta:g})"
        )

    if accountant == "rdp":  # the prior's RDP curve once, not at every bisection step
        from opacus.accountants import RDPAccountant
        from opacus.accountants.analysis import rdp as rdp_analysis

        orders = RDPAccountant.DEFAULT_ALPHAS
        prior_rdp = sum(rdp_analysis.compute_rdp(q=q, noise_multiplier=z, steps=n, orders=orders)
                        for z, q, n in prior)

        def eps(sigma: float) -> float:
            rdp = prior_rdp + rdp_analysis.compute_rdp(
                q=sample_rate, noise_multiplier=sigma, steps=steps, orders=orders)
            return float(rdp_analysis.get_privacy_spent(orders=orders, rdp=rdp, delta=target_delta)[0])
    else:
        def eps(sigma: float) -> float:
            return epsilon_of(prior + [(sigma, sample_rate, steps)], target_delta, accountant)

    low, high = 0.0, 1.0
    eps_high = eps(high)
    while eps_high > target_epsilon:
        low, high = high, 2 * high
        eps_high = eps(high)
        if high > 1e6:
            raise NdaeError(f"no noise multiplier reaches epsilon {target_epsilon:g}: budget too small")
    # bisect until epsilon is within `tolerance` below the target, or sigma is known to 0.1 %
    while eps_high < target_epsilon - tolerance and high - low > 1e-3 * high:
        middle = (low + high) / 2
        eps_middle = eps(middle)
        if eps_middle > target_epsilon:
            low = middle
        else:
            high, eps_high = middle, eps_middle
    return high


def make_private(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    data_loader: torch.utils.data.DataLoader,
    *,
    max_grad_norm: float,
    noise_multiplier: float | None = None,
    target_epsilon: float | None = None,
    target_delta: float | None = None,
    epochs: int | None = None,
    mode: str = "hooks",
    accountant_history: Sequence[Sequence[float]] = (),
    accountant: str = "rdp",
    criterion: Any = None,
    noise_generator: torch.Generator | None = None,
    sampling_generator: torch.Generator | None = None,
    poisson_sampling: bool = True,
) -> PrivateTraining:
    """Wrap a site's model, optimizer and loader for DP-SGD, continuing `accountant_history`.

    Give either `noise_multiplier`, or `target_epsilon` + `target_delta` + `epochs`: the site's
    total budget, of which the history has already spent part.

    `noise_generator` draws the Gaussian noise of every step, `sampling_generator` the Poisson
    batches (each record in a batch with probability `sample_rate` = 1 / len(data_loader), see
    the module docstring). A site passes generators from its `SiteRandomness`; one left out is
    seeded from the OS CSPRNG (never the global torch generator, whose state DP-SGD leaves as it
    found it). Train with `ndae.privacy.dp_sgd_loop.dp_epochs`.
    """
    if mode not in MODES:
        raise NdaeError(f"DP-SGD mode {mode!r} is not one of {', '.join(MODES)}")
    errors = ModuleValidator.validate(model, strict=False)
    if errors:
        raise NdaeError(
            "the model cannot be trained with DP-SGD: " + "; ".join(str(e) for e in errors)
            + " (replace BatchNorm with GroupNorm: opacus.validators.ModuleValidator.fix)"
        )
    sample_rate = poisson_sample_rate(data_loader)  # as Opacus computes it (make_private checks below)
    if noise_generator is None or (sampling_generator is None and poisson_sampling):
        from ndae.privacy.randomness import SiteRandomness

        secure = SiteRandomness()
        noise_generator = noise_generator or secure.torch_generator("dp-sgd", "noise")
        if poisson_sampling:
            sampling_generator = sampling_generator or secure.torch_generator("dp-sgd", "poisson-sampling")
    history_before = compact(accountant_history)
    if (noise_multiplier is None) == (target_epsilon is None):
        raise NdaeError("give exactly one of noise_multiplier or target_epsilon")
    if noise_multiplier is None:
        if target_delta is None or epochs is None:
            raise NdaeError("target_epsilon needs target_delta and epochs")
        noise_multiplier = noise_multiplier_for_budget(
            target_epsilon, target_delta, sample_rate, epochs * len(data_loader),
            history_before, accountant,
        )
    engine = PrivacyEngine(accountant=accountant)
    if history_before:
        engine.accountant.load_state_dict({"history": list(history_before), "mechanism": accountant})
    if criterion is None:
        criterion = torch.nn.CrossEntropyLoss()
    wrapped = engine.make_private(
        module=model, optimizer=optimizer, data_loader=data_loader, criterion=criterion,
        noise_multiplier=noise_multiplier, max_grad_norm=max_grad_norm, grad_sample_mode=mode,
        noise_generator=noise_generator, poisson_sampling=poisson_sampling,
    )
    if mode == "ghost":
        private_module, private_optimizer, criterion, private_loader = wrapped
    else:
        private_module, private_optimizer, private_loader = wrapped
    if poisson_sampling:
        _use_sampling_generator(private_loader, sampling_generator, sample_rate)
    elif sampling_generator is not None:
        raise NdaeError("sampling_generator is for Poisson sampling (poisson_sampling=False keeps the loader's order)")
    return PrivateTraining(
        module=private_module, optimizer=private_optimizer, data_loader=private_loader,
        criterion=criterion, engine=engine, noise_multiplier=float(noise_multiplier),
        max_grad_norm=float(max_grad_norm), sample_rate=float(sample_rate),
        history_before=list(history_before), sampling_generator=sampling_generator,
        noise_generator=noise_generator,
    )


def _use_sampling_generator(loader, generator: torch.Generator, sample_rate: float) -> None:
    """Make Opacus' Poisson sampler draw from `generator`. Opacus (1.6) builds its
    UniformWithReplacementSampler with the engine's secure_rng, which is None outside secure_mode,
    so it falls back to the loader's generator: None, the global torch generator. The sampler
    reads `self.generator` at every batch, so setting it there is enough for the batches; the
    loader's own generator is set too, because torch's DataLoader draws a worker base seed from it
    (the global generator when None) each time an epoch starts. The checks keep a future Opacus
    with another sampler from silently sampling elsewhere."""
    from opacus.data_loader import DPDataLoader
    from opacus.utils.uniform_sampler import UniformWithReplacementSampler

    sampler = getattr(loader, "batch_sampler", None)
    if not isinstance(loader, DPDataLoader) or type(sampler) is not UniformWithReplacementSampler:
        raise NdaeError(f"Opacus returned a {type(loader).__name__} with a {type(sampler).__name__}: "
                        "cannot give its Poisson sampling the site's generator")
    if not math.isclose(sampler.sample_rate, sample_rate, rel_tol=1e-12):
        raise NdaeError(f"Opacus samples at rate {sampler.sample_rate}, accounted {sample_rate}")
    sampler.generator = generator
    loader.generator = generator
