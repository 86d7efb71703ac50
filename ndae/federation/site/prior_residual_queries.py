"""The ClientApp's prior residual handlers (`ndae.federation.site.prior_residuals` does the work).

- `handle_prior_residual_stats` (query `prior_residual_stats`): the controls' residual region
  means as summable sufficient statistics; in a private run the noised, accounted release of
  `private_releases`. A query asking for anything else (rows, subjects) is refused: per-subject
  residuals never leave the site.
- `patient_prior_features` (part of the deviations query): the patients' z-scores against the
  residuals' model the server sends, and (non-private runs) the swap test over the site's subjects.
"""

from __future__ import annotations

import json
import logging
from contextlib import contextmanager

import numpy as np
from flwr.app import ConfigRecord, Context, Message, MetricRecord

from ndae.errors import NdaeError, PrivacyBudgetExceeded
from ndae.federation.config import FederationConfig
from ndae.federation.records import PRIOR_KEY, arrays_to_record, config_to_normative
from ndae.federation.site.context import PRIOR_SWAP_KEY
from ndae.federation.site.data import check_fault
from ndae.federation.site.policy import PolicyViolation
from ndae.federation.site.releases import Gate, release_layer

__all__ = ["handle_prior_residual_stats", "patient_prior_features", "checked_design", "checked_dae_config",
           "checked_normative_model", "prior_score_columns"]

_log = logging.getLogger("ndae.site")

PRIOR_REQUEST_FIELDS = ("dae-config", "design")  # what a prior residual statistics query may hold
COVARIATES = {"age_column": "age", "sex_column": "sex"}  # the only covariates a server's design may read
MAX_DESIGN_COLUMNS = 32  # a design wider than this is no normative model of age and sex


# ---- what the server sends, checked before any subject is read --------------------------------
# A design or a model is applied to the site's covariate table (subject, site, age, sex): one that
# reads the `subject` column fails with an error naming the subjects, one of the wrong size with
# an error holding the number of rows. Both are checked here on their own (public) content, so
# what the server reads back in a refusal is only what it sent.
def _refuse(site_name: str, why: str) -> PolicyViolation:
    return PolicyViolation(f"site {site_name!r} refuses {why}")


def _check_design(spec, site_name: str, what: str) -> None:
    from ndae.normative import DesignSpec

    if not isinstance(spec, DesignSpec):
        raise _refuse(site_name, f"{what}: no design")
    for field, column in COVARIATES.items():
        if getattr(spec, field) != column:
            raise _refuse(site_name, f"{what}: its design reads column {str(getattr(spec, field))[:80]!r} as "
                                     f"{field}; a design may read only the covariates 'age' and 'sex'")
    if spec.n_columns > MAX_DESIGN_COLUMNS:
        raise _refuse(site_name, f"{what}: its design has {spec.n_columns} columns (at most {MAX_DESIGN_COLUMNS})")


def checked_design(settings, site_name: str, what: str = "the prior residual query's design") -> dict:
    """The design a statistics query sends, refused unless it reads only age and sex."""
    from ndae.normative import DesignSpec

    try:
        spec = DesignSpec.from_dict(json.loads(settings["design"]))
    except (NdaeError, TypeError, ValueError, KeyError) as error:
        raise _refuse(site_name, f"{what} ({type(error).__name__}: "
                                 f"{str(error).splitlines()[0][:160] if str(error) else ''})") from None
    _check_design(spec, site_name, what)
    return spec.to_dict()


_design = checked_design


def checked_dae_config(settings, site_name: str) -> dict:
    try:
        dae_config = json.loads(settings["dae-config"])
    except (KeyError, TypeError, ValueError) as error:
        raise _refuse(site_name, f"the query's DAE config ({type(error).__name__})") from None
    if not isinstance(dae_config, dict):
        raise _refuse(site_name, "the query's DAE config: not a JSON object")
    return dae_config


def checked_normative_model(content, site_name: str, dae_config: dict):
    """The normative model of z_sem a query sends (`normative`), checked on its own content."""
    if "normative" not in content:
        raise _refuse(site_name, "a query without the normative model of z_sem ('normative')")
    return _model(content["normative"], site_name, "the normative model of z_sem in the query",
                  _z_sem_dim(dae_config, site_name))


def prior_score_columns(site, dae_config: dict) -> list[str]:
    """The patients' prior residual z-score columns this site computes for a DAE config (the
    atlas regions its slices cut: no subject is read)."""
    from ndae.federation.site.prior_residuals import prior_region_columns

    site.data  # the site's own slices load here, outside the try: a damaged cache is not the query's fault
    try:
        return ["z_" + c for c in prior_region_columns(site, dae_config)]
    except (NdaeError, TypeError, ValueError, KeyError, AttributeError, IndexError) as error:
        raise _refuse(site_name=site.name, why=f"the query's DAE config ({type(error).__name__})") from None


def _model(record, site_name: str, what: str, features: list[str] | int, dae_config: dict | None = None):
    """The normative model `record` holds, checked on its own content: a design on age and sex
    only, every array finite and of the size its features and design give, positive variances,
    and finite predictions for public covariates (this site's name, the design's ages, both sexes).
    `features`: the feature names it must have, or their number."""
    import pandas as pd

    from ndae.normative import NormativeModel

    try:
        model = config_to_normative(record)
    except (NdaeError, TypeError, ValueError, KeyError, OSError) as error:
        raise _refuse(site_name, f"{what}: malformed ({type(error).__name__}: "
                                 f"{str(error).splitlines()[0][:160] if str(error) else ''})") from None
    if not isinstance(model, NormativeModel) or not isinstance(model.site_column, str) or model.site_column != "site":
        raise _refuse(site_name, f"{what}: its site column is not 'site'")
    _check_design(model.design, site_name, what)
    names = [str(n) for n in (model.feature_names or [])]
    if isinstance(features, int):
        if len(names) != features:
            raise _refuse(site_name, f"{what}: it models {len(names)} features, the DAE's z_sem has {features}")
    elif names != list(features):
        raise _refuse(site_name, f"{what}: its regions {names[:40]} are not this site's {list(features)}")
    d, p, s = len(names), model.design.n_columns, len(model.site_names or [])
    shapes = {"control_mean": (d,), "control_sd": (d,), "beta": (d, p), "beta_precision": (d, p, p),
              "noise_variance": (d,), "site_variance": (d,), "site_offset": (s, d), "site_offset_variance": (s, d),
              "site_shrinkage": (s, d), "site_mean_x": (s, p), "covariate_min": (1,), "covariate_max": (1,)}
    try:
        for name, shape in shapes.items():
            value = np.asarray(getattr(model, name), dtype=np.float64)
            if value.shape != shape or not np.isfinite(value).all():
                raise NdaeError(f"{name} has shape {value.shape} (expected {shape}) or non-finite values")
        if not ((model.control_sd > 0).all() and (model.noise_variance > 0).all() and (model.site_variance >= 0).all()
                and (model.site_offset_variance >= 0).all()):
            raise NdaeError("its standard deviations and variances must be positive")
        for name, low in (("covariate_clip", 1.0), ("latent_clip", 0.0)):
            clip = getattr(model, name)
            if clip is not None and not (np.isfinite(clip) and clip > low):
                raise NdaeError(f"{name} {clip} must be finite and > {low:g}")
        low, high = model.design.age_range
        ages = np.linspace(low, high, 5)
        public = pd.DataFrame({"subject": [f"probe-{i}" for i in range(10)], "site": [site_name] * 10,
                               "age": np.repeat(ages, 2), "sex": ["F", "M"] * 5})
        import warnings

        from ndae.normative.model import OutOfRangeWarning

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", OutOfRangeWarning)
            warnings.simplefilter("ignore", RuntimeWarning)
            mean, variance = model.predict(public)
        # Finite predictions only: an honest model fitted on noised statistics can predict a non-positive
        # variance where its noisy β covariance is indefinite (measured: a flaky private-run refusal);
        # z-scores that come out non-finite there are bounded at the site (`prior_residuals`).
        if mean.shape != (10, d) or not (np.isfinite(mean).all() and np.isfinite(variance).all()):
            raise NdaeError("its predictions for public covariates are not finite")
        return model
    except (NdaeError, TypeError, ValueError, KeyError, AttributeError, IndexError, np.linalg.LinAlgError) as error:
        raise _refuse(site_name, f"{what}: {type(error).__name__}: "
                                 f"{str(error).splitlines()[0][:200] if str(error) else ''}") from None


def _z_sem_dim(dae_config: dict, site_name: str) -> int:
    from ndae.model import DAEConfig

    try:
        return int(DAEConfig.from_dict(dae_config).model.z_sem_dim)
    except (NdaeError, TypeError, ValueError, KeyError, AttributeError) as error:
        raise _refuse(site_name, f"the query's DAE config ({type(error).__name__})") from None


def _check_release_parameters(config: FederationConfig, site_name: str) -> None:
    """The run config's noise and clip for the private release: finite, and every block's
    sensitivity and noise sd (and its square, the variance the reply declares) a finite normal
    float, so the ledger records what was done (an overflow used to fail in the ledger writer after
    the residuals were computed, an underflow gave one block noise sd 0)."""
    from ndae.privacy.dp_moments import block_sensitivities, moments_noise_sd, moments_sensitivity

    multiplier, clip = float(config.prior_residual_noise_multiplier), float(config.prior_residual_clip)
    if not (np.isfinite(multiplier) and multiplier >= 0):
        raise _refuse(site_name, f"run config prior-residual-noise-multiplier {multiplier}: it must be finite and >= 0")
    tiny = np.finfo(np.float64).tiny
    with np.errstate(over="ignore", under="ignore"):
        bounds = block_sensitivities(config.moments_covariate_clip, clip)
        values = [*bounds.values(), moments_sensitivity(config.moments_covariate_clip, clip)]
        if not (np.isfinite(clip) and all(tiny <= v < np.inf for v in values)):
            raise _refuse(site_name, f"run config prior-residual-clip {clip} (with moments-covariate-clip "
                                     f"{config.moments_covariate_clip}): its sensitivities {values} overflow or "
                                     "underflow")
        sd = moments_noise_sd(config.moments_covariate_clip, clip, multiplier)
        if multiplier > 0 and not all(tiny <= v and np.isfinite(v * v) for v in sd.values()):
            raise _refuse(site_name, f"run config prior-residual-noise-multiplier {multiplier} with "
                                     f"prior-residual-clip {clip}: the noise sd {sd} overflows or underflows")


@contextmanager
def _errors_without_data(config: FederationConfig, site_name: str, what: str):
    """In a private run an error's text may hold the site's data (subject ids, counts in array
    shapes); it goes to the site's log, the server reads only its type. The site's own refusals
    (policy, budget) are written for the server and pass unchanged."""
    try:
        yield
    except (PolicyViolation, PrivacyBudgetExceeded):
        raise
    except Exception as error:
        if not config.privacy:
            raise
        _log.warning("site %r could not compute %s", site_name, what, exc_info=True)
        raise NdaeError(f"site {site_name!r} could not compute {what} ({type(error).__name__}; the details are in "
                        "the site's log: in a private run an error's text may hold data and does not leave the site)"
                        ) from None


def _refuse_prior_residuals_unless_requested(config: FederationConfig, site_name: str) -> None:
    if not config.prior_residuals:
        raise PolicyViolation(f"site {site_name!r} refuses prior residual queries: run config 'prior-residuals' = "
                              "false")


@release_layer("query.prior_residual_stats")
def handle_prior_residual_stats(message: Message, gate: Gate) -> dict:
    """The controls' prior residual region means as summable sufficient statistics, with the
    global DAE and the normative model of z_sem the server sends; never a subject's own values."""
    config, site, context = gate.config, gate.site, gate.context
    check_fault(config, site.name, "prior_residual_stats")
    _refuse_prior_residuals_unless_requested(config, site.name)
    expected = {"config", "dae", "normative"}
    missing = sorted(expected - set(message.content.keys()))
    if missing:
        raise _refuse(site.name, f"a prior residual query without {missing}: the global DAE and the normative "
                                 "model of z_sem come first")
    settings = message.content["config"]
    asked = sorted(set(settings.keys()) - set(PRIOR_REQUEST_FIELDS))
    if asked or set(message.content.keys()) - expected:
        # e.g. share-rows: per-subject residuals (an image-derived row per control) never leave
        raise PolicyViolation(f"site {site.name!r} refuses a prior residual query asking for "
                              f"{asked or sorted(set(message.content.keys()) - expected)}: "
                              "only the controls' summed statistics of the residuals leave a site")
    if any(field not in settings for field in PRIOR_REQUEST_FIELDS):
        raise _refuse(site.name, f"a prior residual query without {list(PRIOR_REQUEST_FIELDS)}")
    from ndae.federation.site.prior_residuals import prior_region_means, prior_residual_statistics

    try:
        dae_config = json.loads(settings["dae-config"])
    except (TypeError, ValueError) as error:
        raise _refuse(site.name, f"the query's DAE config ({type(error).__name__})") from None
    design = _design(settings, site.name)
    normative = _model(message.content["normative"], site.name, "the normative model of z_sem in the query",
                       _z_sem_dim(dae_config, site.name))
    if gate.noised("stats"):  # clipped + Gaussian noise, accounted like the z_sem moments before it leaves
        from ndae.federation.site.private_releases import private_prior_residual_statistics

        _check_release_parameters(config, site.name)
        privacy = gate.privacy()
        with _errors_without_data(config, site.name, "the prior residual statistics"):
            stats, columns, _ = private_prior_residual_statistics(site, message.content["dae"], dae_config, normative,
                                                                  design, privacy, device=config.device)
        return {"stats": arrays_to_record(stats), "columns": ConfigRecord({"columns": columns})}
    means = prior_region_means(site, message.content["dae"], dae_config, normative, site.controls, config.device)
    if means.swap_relative_change is not None:  # the controls' part of the swap test, sent with the patients'
        context.state[PRIOR_SWAP_KEY] = MetricRecord({"relative-change": means.swap_relative_change,
                                                      "subjects": means.subjects})
    return {"stats": arrays_to_record(prior_residual_statistics(site, means, design)),
            "columns": ConfigRecord({"columns": means.columns})}


def patient_prior_features(message: Message, context: Context, config: FederationConfig, site, dae_config: dict,
                            normative):
    """The patients' prior residual z-scores (`z_prior_*`) when the server sent the residuals'
    model, and the swap test over the site's controls and patients (the release layer keeps it at
    a private site). Both models are checked before a patient is read (`_model`)."""
    if PRIOR_KEY not in message.content:
        return None, None
    _refuse_prior_residuals_unless_requested(config, site.name)
    from ndae.federation.site.prior_residuals import patient_prior_features, prior_region_columns, prior_region_means

    site.data  # loaded outside the try below (see prior_score_columns)
    try:
        columns = prior_region_columns(site, dae_config)
    except (NdaeError, TypeError, ValueError, KeyError, AttributeError, IndexError) as error:
        raise _refuse(site.name, f"the query's DAE config ({type(error).__name__})") from None
    _model(message.content["normative"], site.name, "the normative model of z_sem in the query",
           _z_sem_dim(dae_config, site.name))
    residual_model = _model(message.content[PRIOR_KEY], site.name, "the prior residual model message", columns)
    with _errors_without_data(config, site.name, "the patients' prior residual z-scores"):
        means = prior_region_means(site, message.content["dae"], dae_config, normative, site.patients, config.device)
        features = patient_prior_features(site, means, residual_model)
    parts = [(means.swap_relative_change, means.subjects)]
    if PRIOR_SWAP_KEY in context.state:
        controls = context.state[PRIOR_SWAP_KEY]
        parts.append((float(controls["relative-change"]), int(controls["subjects"])))
    parts = [(value, n) for value, n in parts if value is not None and n > 0]
    swap = None
    if parts:  # a mean over the site's own subjects, not a DP release: the release layer keeps it at a private site
        subjects = sum(n for _, n in parts)
        swap = {"relative-change": sum(v * n for v, n in parts) / subjects, "subjects": subjects}
    return features, swap
