"""What one hospital computes. The ClientApp calls these functions and nothing else.

Each function takes the site's own data plus what the server sent (weights, a normative model,
a Cox coefficient vector) and returns only what may leave the site: DAE weights and counts,
summable sufficient statistics, Cox gradient/Hessian terms, or (pooled survival mode only) the
patients' deviation scores with their covariates and follow-up. What a private run may send of
these, and in what form, is decided by `policy` and done by `privacy` / `private_releases`.

The work is in three modules, gathered here as the site's one task API: `data` (the site's
manifest, cache and slices), `training` (a local DAE round), `statistics` (everything computed on
the site's rows for the server).
"""

from ndae.federation.site.data import *  # noqa: F401,F403
from ndae.federation.site.data import __all__ as _data
from ndae.federation.site.statistics import *  # noqa: F401,F403
from ndae.federation.site.statistics import __all__ as _statistics
from ndae.federation.site.training import *  # noqa: F401,F403
from ndae.federation.site.training import __all__ as _training

__all__ = [*_data, *_training, *_statistics]
