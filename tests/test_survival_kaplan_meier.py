"""Kaplan–Meier by tertile: PNG written, log-rank p-value small only when groups truly differ."""

import numpy as np
import pytest

from ndae.errors import NdaeError
from ndae.survival.kaplan_meier import kaplan_meier_by_tertile
from tests.survival_simulation import simulate_weibull_cox

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_groups_that_differ_give_small_p_and_ordered_medians(tmp_path):
    data = simulate_weibull_cox(300, [1.2], seed=5, censor_max=120)
    path = tmp_path / "km_x0.png"
    result = kaplan_meier_by_tertile(data, "x0", path=path)
    assert path.read_bytes()[:8] == PNG_MAGIC and path.stat().st_size > 5000
    assert result.p_value < 1e-6
    # higher score = higher hazard = shorter median survival
    assert result.median_survival["low"] > result.median_survival["middle"] > result.median_survival["high"]
    assert sum(result.group_sizes.values()) == len(data) and max(result.group_sizes.values()) - min(result.group_sizes.values()) <= 1
    assert (data.x0[result.groups == "low"].max() <= data.x0[result.groups == "middle"].min())
    assert result.cut_points[0] < result.cut_points[1]
    assert result.to_json()["p_value"] == result.p_value


def test_a_score_without_effect_is_not_significant(tmp_path):
    data = simulate_weibull_cox(300, [1.2], seed=5, censor_max=120)
    data["noise"] = np.random.default_rng(17).normal(size=len(data))
    result = kaplan_meier_by_tertile(data, "noise")
    assert result.p_value > 0.05
    assert not list(tmp_path.iterdir())  # no path, no figure


def test_errors_name_the_column():
    data = simulate_weibull_cox(30, [1.0], seed=1)
    with pytest.raises(NdaeError, match="'z_score'"):
        kaplan_meier_by_tertile(data, "z_score")
    with pytest.raises(NdaeError, match="'time'"):
        kaplan_meier_by_tertile(data.assign(time=-data.time), "x0")
