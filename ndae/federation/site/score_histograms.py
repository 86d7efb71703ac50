"""Runs AT THE SITE: the patients-vs-controls score distributions and the held-out controls' z
calibration, as counts (never a score or a row).

- `fold_statistics` (with `normative_stats`, non-private runs): the controls split into K folds by
  the run's seed, one set of summable sufficient statistics per fold. The server sums, for fold k,
  every site's other folds and fits model k: a fit none of fold k's controls is in, at no site.
- `score_histograms` (with `deviations`): histogram counts per group (control / patient) of the
  scores the server names, on bin edges the server fixed from public knowledge only (the latent
  dimension, the cosine's range). The first and last bins are open-ended: a value beyond the edges
  counts in them, so no subject is dropped. Patients are scored against the run's normative model;
  controls, when the server sent the K fold models, each against the model its fold was left out
  of (held out), else against the run's model (in sample). With the fold models, also the number
  of the controls' per-dimension z with |z| <= 1, 2, 3 (the calibration bands) and of all z.

A private run's fold statistics would be exact moments (not a DP release): none are sent. Its
counts are row-level on a small site: they leave only where the site's policy declares counts
public (node config public-counts), declared in its ledger (`score-histograms`), as the
Kaplan–Meier counts are kept (`survival_queries._risk_summary`).
"""

from __future__ import annotations

import numpy as np

from ndae.federation.records import arrays_to_record
from ndae.federation.site.context import SiteRefusal

__all__ = ["BANDS", "BINS", "FOLDS_KEY", "HISTOGRAM_KEY", "MAX_BINS", "MAX_FOLDS", "HISTOGRAM_SCORES", "REPLY_KEY",
           "binned", "checked_histogram_request", "control_folds", "fold_model_key", "fold_stats_key",
           "fold_statistics", "histogram_edges", "score_histograms"]

FOLDS_KEY = "calibration-folds"  # in the normative_stats and deviations configs: K
HISTOGRAM_KEY = "score-histograms"  # the deviations query's request (scores and their edges)
REPLY_KEY = "score-histograms"  # the site's counts in its deviations reply
HISTOGRAM_SCORES = ("mahalanobis", "cosine")  # the scores a server may ask counts of
MAX_BINS = 64
MAX_FOLDS = 10
BANDS = (1.0, 2.0, 3.0)


def fold_stats_key(k: int) -> str:
    return f"fold-stats-{k}"


def fold_model_key(k: int) -> str:
    return f"held-out-model-{k}"


def _checked_folds(value, site_name: str) -> int:
    try:
        folds = int(value)
        whole = float(value) == folds
    except (TypeError, ValueError, OverflowError):
        whole = False
    if not whole or not 2 <= folds <= MAX_FOLDS:
        raise SiteRefusal(f"site {site_name!r} refuses the query: {FOLDS_KEY!r} must be a whole number "
                          f"from 2 to {MAX_FOLDS}")
    return folds


def control_folds(n_controls: int, folds: int, seed: int) -> np.ndarray:
    """Each control's fold (0..K-1): a permutation by the run's seed, dealt round-robin, so the
    folds differ in size by at most one. The same for both messages of a run (same seed, same
    manifest); it decides which fit a control is left out of, nothing private."""
    order = np.random.default_rng(seed).permutation(n_controls)
    fold = np.empty(n_controls, dtype=int)
    fold[order] = np.arange(n_controls) % folds
    return fold


def fold_statistics(site, z_sem: np.ndarray, design: dict, folds_value, seed: int) -> dict:
    """{fold_stats_key(k): the fold's summable statistics} for the normative_stats reply, from the
    controls' z_sem the handler encoded once for its whole statistics."""
    from ndae.federation.site.statistics import covariates
    from ndae.normative import DesignSpec, SufficientStats

    folds = _checked_folds(folds_value, site.name)
    table = covariates(site, site.controls)
    fold = control_folds(len(table), folds, seed)
    spec = DesignSpec.from_dict(design)
    return {fold_stats_key(k): arrays_to_record(
        SufficientStats.from_data(table[fold == k].reset_index(drop=True), z_sem[fold == k], spec,
                                  site_column="site").to_arrays()) for k in range(folds)}


BINS = 48  # bins per score on the canonical edges


def histogram_edges(z_sem_dim: int) -> dict[str, np.ndarray]:
    """The canonical bin edges of each score, from the latent dimension alone (public knowledge;
    the reasoning is in `ndae.federation.server.score_distributions`). A private site counts on
    these and no others: edges a server chose could single out a patient's score."""
    from scipy.stats import chi

    d = int(z_sem_dim)
    return {"mahalanobis": np.geomspace(float(chi.ppf(0.001, d)) / 4, 16 * float(chi.ppf(0.999, d)), BINS + 1),
            "cosine": 1.0 - np.geomspace(2.0, 1e-7, BINS + 1)}


def checked_histogram_request(content, site_name: str, dae_config: dict, *, private: bool = True) -> dict | None:
    """What the deviations query asks counts of, checked on the message alone (before any data is
    read): {"edges": {score: edges}, "models": [fold models] or []}; None when it asks none.
    Edges: finite, strictly increasing, at most MAX_BINS bins; scores from HISTOGRAM_SCORES; in a
    private run exactly the canonical edges of the run's latent dimension (`histogram_edges`):
    narrow bins of the server's choosing, asked again and again, would bisect one patient's score."""
    if HISTOGRAM_KEY not in content:
        return None
    request = content[HISTOGRAM_KEY]
    refuse = f"site {site_name!r} refuses the score-histograms request"
    try:
        scores = [str(s) for s in request["scores"]]
    except (KeyError, TypeError) as error:
        raise SiteRefusal(f"{refuse}: it needs a list 'scores' ({type(error).__name__})") from None
    if not scores or len(set(scores)) != len(scores) or any(s not in HISTOGRAM_SCORES for s in scores):
        raise SiteRefusal(f"{refuse}: 'scores' must be distinct names among {list(HISTOGRAM_SCORES)}")
    edges = {}
    for score in scores:
        try:
            values = np.asarray([float(v) for v in request[f"edges-{score}"]], dtype=np.float64)
        except (KeyError, TypeError, ValueError) as error:
            raise SiteRefusal(f"{refuse}: 'edges-{score}' must be a list of numbers ({type(error).__name__})") from None
        if not 2 <= values.size <= MAX_BINS + 1 or not np.isfinite(values).all() or not np.all(np.diff(values) > 0):
            raise SiteRefusal(f"{refuse}: 'edges-{score}' must be 2 to {MAX_BINS + 1} finite, strictly increasing "
                              "numbers")
        if private:
            canonical = histogram_edges(int(dae_config["model"]["z_sem_dim"]))[score]
            if values.shape != canonical.shape or not np.allclose(values, canonical, rtol=1e-12, atol=0.0):
                raise SiteRefusal(f"{refuse}: in a private run 'edges-{score}' must be the canonical edges of the "
                                  "run's latent dimension")
        edges[score] = values
    models = []
    if FOLDS_KEY in request:
        from ndae.federation.site.prior_residual_queries import checked_normative_model

        folds = _checked_folds(request[FOLDS_KEY], site_name)
        for k in range(folds):
            if fold_model_key(k) not in content:
                raise SiteRefusal(f"{refuse}: it names {folds} folds but sends no {fold_model_key(k)!r}")
            models.append(checked_normative_model({"normative": content[fold_model_key(k)]}, site_name, dae_config))
    return {"edges": edges, "models": models}


def binned(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Counts per bin, the first and last bins open-ended (values beyond them clipped into them);
    a NaN score is counted nowhere."""
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    values = np.clip(values[~np.isnan(values)], edges[0], edges[-1])
    return np.histogram(values, bins=edges)[0].astype(np.float64)


def _control_scores(site, weights, dae_config: dict, normative, models: list, seed: int, scores: list[str],
                    device: str):
    """The controls' scores (held out where fold models came) and, with fold models, their
    per-dimension z-scores under the model their fold was left out of."""
    from ndae.deviation.scores import deviation_table
    from ndae.federation.site.statistics import covariates, encode_z_sem

    rows = site.controls
    table = covariates(site, rows)
    z_sem = encode_z_sem(site, weights, dae_config, rows, device)
    if not models:
        frame = deviation_table(table["subject"], table, z_sem, normative)
        return frame[scores].to_numpy(float), None
    fold = control_folds(len(table), len(models), seed)
    values, z = np.full((len(table), len(scores)), np.nan), np.full(z_sem.shape, np.nan)
    for k, model in enumerate(models):
        part = fold == k
        if part.any():
            covs = table[part].reset_index(drop=True)
            values[part] = deviation_table(covs["subject"], covs, z_sem[part], model)[scores].to_numpy(float)
            z[part] = model.z_scores(covs, z_sem[part])
    return values, z


def score_histograms(request: dict | None, gate, weights, dae_config: dict, normative, patients) -> dict:
    """The deviations reply's counts ({REPLY_KEY: ...}), or {} when none were asked or the site's
    release table keeps them (`gate`: a private run whose counts are not declared public).
    `patients`: the site's scored patient table. A declared release is written to the ledger
    before it leaves."""
    if request is None or not gate.sends(REPLY_KEY):
        return {}
    site, config = gate.site, gate.config
    scores = list(request["edges"])
    # The held-out fold models come with the per-fold statistics: where the calibration may not
    # leave (a private run, which sends no fold statistics), the controls are scored in sample.
    models = request["models"] if gate.sends(f"{REPLY_KEY}.calibration") else []
    controls, z = _control_scores(site, weights, dae_config, normative, models, int(config.seed), scores,
                                  config.device)
    counts = {}
    for i, score in enumerate(scores):
        edges = request["edges"][score]
        counts[f"control-{score}"] = binned(controls[:, i], edges)
        counts[f"patient-{score}"] = binned(patients[score].to_numpy(float) if len(patients) else [], edges)
    if z is not None:
        values = z.reshape(-1)
        values = values[np.isfinite(values)]
        counts["calibration"] = np.asarray([values.size, *(np.sum(np.abs(values) <= b) for b in BANDS)], float)
    if gate.declared(REPLY_KEY):
        from ndae.federation.site.privacy import record_declared

        record_declared(gate.privacy(), "score-histograms", held_out=bool(models),
                        edges={s: e.tolist() for s, e in request["edges"].items()},
                        counts={k: v.tolist() for k, v in counts.items()})
    return {REPLY_KEY: arrays_to_record(counts)}
