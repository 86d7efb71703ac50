"""ndae-fed: federated, privacy-audited Normative Diffusion Autoencoders.

The library is importable without Flower; `client/` and `server/` hold the thin Flower apps.
"""

__version__ = "0.1.0"
