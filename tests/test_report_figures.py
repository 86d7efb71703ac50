"""The reports' figures: the DAE's training loss per round and site, the normative model's centile
curves with controls and patients, z calibration and score distributions, and colourbars on maps."""

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest


def _capture(monkeypatch, module):
    from tests.figure_capture import capture_figures

    return capture_figures(monkeypatch, module)


def test_training_loss_per_round_and_site(tmp_path, monkeypatch):
    import ndae.reporting.federated_figures as federated_figures

    saved = _capture(monkeypatch, federated_figures)
    metrics = [{"phase": "dae", "round": r, "train_loss": {"site1": 2.0 / r, "site2": 3.0 / r},
                "train_loss_mean": 2.5 / r} for r in (1, 2, 3)] + [{"phase": "normative"}]
    lines = federated_figures.training_loss_lines(tmp_path, metrics)
    assert "![DAE training loss per round and site](figures/training_loss.png)" in lines
    axis = saved["training_loss.png"].axes[0]
    labels = [line.get_label() for line in axis.get_lines()]
    assert labels == ["site site1", "site site2", "aggregated (weighted by examples)"]
    assert list(axis.get_lines()[1].get_ydata()) == [3.0, 1.5, 1.0]
    assert axis.get_xlabel() == "federated round" and "loss" in axis.get_ylabel()
    # a private run: the sites kept their loss, the report says so and draws nothing
    private = [{"phase": "dae", "round": 1, "train_loss": {}, "train_loss_mean": None}]
    assert "kept its training loss" in " ".join(federated_figures.training_loss_lines(tmp_path / "p", private))
    assert not (tmp_path / "p" / "figures").exists()


@pytest.fixture(scope="module")
def normative():
    from ndae.normative import NormativeModel

    rng = np.random.default_rng(0)
    n = 120
    covariates = pd.DataFrame({"age": rng.uniform(30, 80, n), "sex": rng.choice(["M", "F"], n), "site": "s1"})
    z = rng.normal(size=(n, 3))
    z[:, 1] += 0.08 * (covariates["age"].to_numpy() - 55)  # one feature with an age trend
    return NormativeModel().fit(covariates, z), covariates, z


def test_centile_curves_pick_the_age_dependent_feature_and_draw_the_subjects(normative, tmp_path, monkeypatch):
    import ndae.normative.centile_figure as centile_figure

    model, covariates, z = normative
    saved = _capture(monkeypatch, centile_figure)
    assert centile_figure.most_age_dependent_feature(model) == 1
    points = covariates[["age", "sex"]].assign(group=["als"] * 20 + ["control"] * 100, value=z[:, 1])
    drawn = centile_figure.plot_centiles(model, tmp_path / "c.png", points=points)
    assert drawn["feature"] == "z_sem_1" and drawn["points"] == 120
    figure = saved["c.png"]
    women, men = figure.axes
    assert women.get_xlabel() == "age (years)" and "z_sem_1" in women.get_ylabel()
    legend = " ".join(t.get_text() for axis in figure.axes for t in axis.get_legend().get_texts())
    assert "2.5–97.5 % centiles" in legend and "median (50 %)" in legend
    n_patients = sum(int(t.get_text().split("n=")[1].rstrip(")")) for axis in figure.axes
                     for t in axis.get_legend().get_texts() if t.get_text().startswith("patients"))
    assert n_patients == 20


def test_evaluate_normative_figures_z_calibration_and_score_distributions(normative, tmp_path):
    from ndae.reporting.normative_figures import normative_figure_lines, normative_figures

    model, covariates, z = normative
    covariates = covariates.assign(subject=[f"s{i}" for i in range(len(covariates))])
    groups = pd.Series(["als"] * 20 + ["control"] * 100)
    training = np.r_[np.zeros(20, bool), np.ones(80, bool), np.zeros(20, bool)]
    held_out = np.r_[np.zeros(100, bool), np.ones(20, bool)]
    latent_z = model.z_scores(covariates, z)
    scores = pd.DataFrame({"subject": covariates["subject"], "cosine": np.linspace(0, 1, 120)})
    result = normative_figures(tmp_path, model, covariates, groups, z, latent_z, scores, training, held_out)
    assert result["z_calibration"]["groups"] == ["training controls (in the fit)", "held-out controls (in no fit)",
                                                 "patients"]
    assert result["score_distributions"]["reference"] == "held-out controls"
    lines = "\n".join(normative_figure_lines(result))
    for name in ("normative_centiles.png", "normative_z_calibration.png", "deviation_scores_by_group.png"):
        assert (tmp_path / name).stat().st_size > 5000 and f"]({name})" in lines


def test_the_prepared_subject_map_has_a_colourbar(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    import ndae.data.figures as figures

    saved = []
    original = Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda self, *a, **k: (saved.append(self), original(self, *a, **k))[1])
    image = np.random.default_rng(0).uniform(-1, 1, (20, 24, 22))
    mask = np.zeros_like(image, bool)
    mask[5:15, 5:18, 5:16] = True
    figures.plot_prepared_subject(SimpleNamespace(image=image, mask=mask, subject="sub-01"), tmp_path / "p.png")
    assert (tmp_path / "p.png").exists()
    labels = [axis.get_ylabel() for axis in saved[-1].axes]
    assert "normalised intensity (a.u.)" in labels
