"""Gaussian diffusion (schedule, loss, DDIM), independent of the network."""

from ndae.diffusion.gaussian import GaussianDiffusion, linear_beta_schedule

__all__ = ["GaussianDiffusion", "linear_beta_schedule"]
