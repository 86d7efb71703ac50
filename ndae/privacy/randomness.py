"""Randomness that protects privacy, held at the site.

Every draw that a DP guarantee rests on (DP-SGD noise and Poisson sampling, the Gaussian noise
of the moments, canary coins, pseudonyms) comes from here, and here only from the operating
system's CSPRNG (`secrets`), never from anything the server or the run config sends: a server
that knows the run config, the site's name and everything the site sent cannot regenerate it.

torch and numpy need seeded generators: each call seeds a fresh one with 64 (torch, the most
`torch.Generator.manual_seed` takes) or 128 (numpy PCG64) secret bits, so a guess of the seed
succeeds with probability 2^-64 per generator. (Opacus' own `secure_mode` would draw the noise
itself from a CSPRNG, but needs torchcsprng, which no longer builds against current torch: see
docs/privacy.md.)

`insecure_seed` exists for tests only (node config `insecure-reproducible-seed`): the draws then
follow from that seed and the `purpose`, and the site records in its ledger that they did.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

import numpy as np

__all__ = ["SiteRandomness"]


@dataclass(frozen=True)
class SiteRandomness:
    """The site's source of privacy-protecting randomness (secure unless `insecure_seed` is set)."""

    insecure_seed: int | None = None

    @property
    def secure(self) -> bool:
        return self.insecure_seed is None

    def _bits(self, bits: int, purpose: tuple) -> int:
        if self.insecure_seed is None:
            return secrets.randbits(bits)
        digest = hashlib.sha256(repr((int(self.insecure_seed), *map(str, purpose))).encode()).digest()
        return int.from_bytes(digest, "big") >> (256 - bits)

    def seed(self, *purpose) -> int:
        """A 63-bit seed (fits every seeding API): secret, or derived from the insecure seed."""
        return self._bits(63, purpose)

    def torch_generator(self, *purpose):
        import torch

        return torch.Generator().manual_seed(self._bits(63, purpose))

    def numpy_rng(self, *purpose) -> np.random.Generator:
        return np.random.default_rng(self._bits(128, purpose))

    def token(self, nbytes: int = 8, *purpose) -> str:
        """A hex token (pseudonyms): `secrets.token_hex` unless the seed is insecure."""
        if self.insecure_seed is None:
            return secrets.token_hex(nbytes)
        return format(self._bits(8 * nbytes, ("token", *purpose)), f"0{2 * nbytes}x")
