"""The one δ rule. A site's policy (node config `delta`) sets δ; this is its default and its bound.

δ is the probability that the (ε, δ) guarantee fails outright, so it must be far below 1/n for a
site of n records (δ ≈ 1/n would allow publishing one record in the clear). The default 1e-5
does not depend on the site's size (a δ computed from n would itself reveal n) and is below
1/n^1.1 for every site with fewer than ~35,000 records; a larger site must set a smaller δ.
"""

from __future__ import annotations

from ndae.errors import NdaeError

DEFAULT_DELTA = 1e-5


def check_delta(delta: float, records: int, where: str = "node config 'delta'") -> float:
    """δ itself if it is in (0, 1/n^1.1] for n records, else a clear error naming `where`."""
    delta = float(delta)
    bound = 1.0 / max(1, int(records)) ** 1.1
    if not 0.0 < delta <= bound:
        raise NdaeError(f"{where} = {delta:g} must be in (0, 1/n^1.1 = {bound:.3g}] for a site of {records} records")
    return delta
