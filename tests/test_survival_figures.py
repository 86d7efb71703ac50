"""Survival metrics and figures beside the C-index: time-dependent AUC, Brier score, calibration at a
horizon, and Kaplan–Meier curves with censor marks and an at-risk table naming what the groups
were split on; in `ndae survival` and in the federated report."""

import json

import numpy as np
import pandas as pd
import pytest

from tests.survival_simulation import simulate_weibull_cox


@pytest.fixture(scope="module")
def patients():
    table = simulate_weibull_cox(120, [1.0, 0.0], seed=4, sites=["s1", "s2"])
    return table.rename(columns={"x0": "strong", "x1": "noise"})


def _captured_figures(monkeypatch):
    """The matplotlib Figures the survival figure module saves, kept for inspection."""
    import ndae.survival.figures as figures
    from tests.figure_capture import capture_figures

    return capture_figures(monkeypatch, figures)


def test_time_dependent_auc_and_brier_are_sksurvs_on_out_of_fold_predictions(patients, tmp_path):
    from sksurv.metrics import cumulative_dynamic_auc, integrated_brier_score

    from ndae.survival.metrics import _survival_array
    from ndae.survival.time_dependent import out_of_fold_predictions, time_dependent_metrics

    models = {"noise": ["noise"], "strong": ["strong"]}
    result = time_dependent_metrics(patients, models, tmp_path, strata=["site"], folds=4, seed=1)
    for name in ("time_dependent_auc.png", "brier_score.png", "calibration.png"):
        assert (tmp_path / name).stat().st_size > 5000, name
    times = np.asarray(result["times_months"])
    risk, survival = out_of_fold_predictions(patients, models, times, ["site"], 4, 1)["strong"]
    y = _survival_array(patients["time"].to_numpy(), patients["event"].to_numpy())
    assert result["models"]["strong"]["mean_auc"] == pytest.approx(cumulative_dynamic_auc(y, y, risk, times)[1])
    assert result["models"]["strong"]["integrated_brier"] == pytest.approx(integrated_brier_score(y, y, survival, times))
    # a real effect is told apart from noise, and beats the Kaplan–Meier curve everyone shares
    assert result["models"]["strong"]["mean_auc"] > 0.7 > result["models"]["noise"]["mean_auc"]
    km = result["models"]["Kaplan–Meier (no covariates)"]["integrated_brier"]
    assert result["models"]["strong"]["integrated_brier"] < km
    json.dumps(result)  # the metrics file's content


def test_calibration_groups_compare_predicted_with_kaplan_meier_survival(patients, tmp_path):
    from lifelines import KaplanMeierFitter

    from ndae.survival.time_dependent import calibration_bins

    time, event = patients["time"].to_numpy(), patients["event"].to_numpy()
    predicted = np.linspace(0.1, 0.9, len(time))
    bins = calibration_bins(predicted, time, event, horizon=12.0, groups=4)
    assert [b["n"] for b in bins] == [30, 30, 30, 30]
    first = KaplanMeierFitter().fit(time[:30], event[:30]).survival_function_at_times(12.0).iloc[0]
    assert bins[0]["observed"] == pytest.approx(first)
    assert bins[0]["predicted"] == pytest.approx(predicted[:30].mean())
    assert all(b["observed_lower"] <= b["observed"] <= b["observed_upper"] for b in bins)


def test_too_few_events_say_why_instead_of_raising(patients, tmp_path):
    from ndae.survival.time_dependent import time_dependent_lines, time_dependent_metrics

    few = patients.head(12).assign(event=[1, 0] + [0] * 10)
    result = time_dependent_metrics(few, {"strong": ["strong"]}, tmp_path, folds=3)
    assert "not_computed" in result
    assert "Not computed" in "\n".join(time_dependent_lines(result))


def test_kaplan_meier_has_censor_marks_an_at_risk_table_and_names_the_split(patients, tmp_path, monkeypatch):
    from ndae.survival.kaplan_meier import kaplan_meier_by_tertile

    saved = _captured_figures(monkeypatch)
    frame = patients.assign(risk=patients["strong"])
    kaplan_meier_by_tertile(frame, "risk", path=tmp_path / "km.png", split_on="Cox risk x·β (age, sex_female, cosine)")
    figure = saved["km.png"]
    axis = figure.axes[0]
    texts = " ".join(t.get_text() for a in figure.axes for t in a.texts + a.get_xticklabels() + [a.title])
    legend = axis.get_legend()
    assert "Cox risk x·β (age, sex_female, cosine)" in axis.get_title()
    assert "censored" in legend.get_title().get_text()
    assert "At risk" in texts  # lifelines' at-risk table under the axis
    censored_marks = [line for line in axis.get_lines() if line.get_marker() == "|"]
    assert censored_marks and sum(len(line.get_xdata()) for line in censored_marks) == int((frame["event"] == 0).sum())
    assert axis.get_xlabel() == "time since scan (months)" and axis.get_ylabel() == "survival probability"


def test_kaplan_meier_from_site_counts_names_the_covariates_of_the_risk(tmp_path, monkeypatch):
    from ndae.federation.server.survival import km_from_counts

    saved = _captured_figures(monkeypatch)
    rows = np.array([[g, m, e, c] for g in range(3) for m, e, c in ((3, 1, 2), (6, 0, 1), (9, 1, 1 + g))], float)
    result = km_from_counts(rows, tmp_path / "km.png", ["age", "sex_female", "cosine"])
    assert "age, sex_female, cosine" in result["grouping"]
    axis = saved["km.png"].axes[0]
    assert "age, sex_female, cosine" in axis.get_title()
    assert any(line.get_marker() == "|" for line in axis.get_lines())


def test_ndae_survival_writes_the_time_dependent_figures(tmp_path, capsys):
    from ndae.cli import main

    table = simulate_weibull_cox(90, [0.9, 0.0], seed=8, sites=["s1", "s2"])
    rng = np.random.default_rng(0)
    manifest = pd.DataFrame({"subject": [f"als-{i}" for i in range(90)], "site": table["site"], "image": "x.nii.gz",
                             "age": rng.uniform(45, 75, 90).round(1), "sex": rng.choice(["M", "F"], 90),
                             "group": "als", "time": table["time"], "event": table["event"]})
    manifest.to_csv(tmp_path / "manifest.csv", index=False)
    pd.DataFrame({"subject": manifest["subject"], "cosine": table["x0"]}).to_csv(tmp_path / "deviations.csv", index=False)
    out = tmp_path / "out"
    assert main(["survival", "--deviations", str(tmp_path / "deviations.csv"), "--manifest",
                 str(tmp_path / "manifest.csv"), "--out", str(out), "--folds", "3"]) == 0, capsys.readouterr().err
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["time_dependent"]["models"]) == {"Kaplan–Meier (no covariates)", "clinical", "deviation",
                                                        "clinical+deviation"}
    assert metrics["time_dependent"]["calibration"]["model"] == "clinical+deviation"
    for name in ("time_dependent_auc.png", "brier_score.png", "calibration.png", "km_cosine.png"):
        assert (out / name).exists(), name
    report = (out / "report.md").read_text()
    for name in ("time_dependent_auc.png", "brier_score.png", "calibration.png", "km_cosine.png"):
        assert f"]({name})" in report, name
    assert (out / "report.html").read_text().count("data:image/png;base64,") == 4


def test_the_federated_report_says_what_federated_mode_cannot_draw():
    from ndae.reporting.federated_figures import survival_figure_lines

    federated = "\n".join(survival_figure_lines({"mode": "federated"}))
    assert "Not computed in federated mode" in federated and "no patient row leaves a site" in federated
    pooled = "\n".join(survival_figure_lines({"mode": "pooled", "time_dependent": {"not_computed": "too few"}}))
    assert "Not computed: too few." in pooled
