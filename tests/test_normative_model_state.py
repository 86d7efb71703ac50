"""The normative model's state is declared: every fitted attribute exists (None) before a fit, the
files list comes from that declaration and round-trips byte for byte, and what other modules need
(site lookup, latent shape check) is public."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json

import numpy as np
import pandas as pd
import pytest

from ndae.errors import NdaeError
from ndae.normative.design import DesignSpec
from ndae.normative.model import NormativeModel
from ndae.normative.sufficient_stats import SufficientStats

# The files' contract: what model.npz and model.json hold (unchanged by how the model declares it).
NPZ_ARRAYS = ["control_mean", "control_sd", "beta", "beta_precision", "noise_variance", "site_variance", "site_n",
              "site_offset", "site_offset_variance", "site_shrinkage", "site_mean_x", "covariate_min", "covariate_max"]
JSON_KEYS = ["kind", "version", "design", "design_columns", "feature_names", "n_features", "n_controls", "sites",
             "covariate_range", "prior_precision", "site_effects", "n_iterations", "site_column", "clip",
             "model_npz_sha256"]


def _controls(n=90, d=4, seed=3):
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"age": rng.uniform(25, 80, n), "sex": rng.choice(["M", "F"], n),
                          "site": rng.choice(["A", "B", "C"], n)})
    Y = 5.0 + 0.03 * frame["age"].to_numpy()[:, None] + rng.normal(0, 0.5, (n, d))
    return frame, Y


@pytest.fixture(scope="module")
def fitted():
    frame, Y = _controls()
    return frame, Y, NormativeModel().fit(frame, Y, [f"f{k}" for k in range(Y.shape[1])])


def test_no_attribute_appears_only_after_fitting(fitted):
    _, _, model = fitted
    unfitted = NormativeModel()
    assert set(vars(model)) == set(vars(unfitted))
    assert unfitted.beta is None and unfitted.site_names is None and unfitted.residual_covariance is None
    declared = {field.name for field in dataclasses.fields(NormativeModel)}
    assert set(vars(model)) - {"_fitted"} == declared


def test_site_index_and_check_latents_are_public(fitted):
    frame, Y, model = fitted
    rows = frame.iloc[:3].assign(site=["B", "unseen", "A"])
    np.testing.assert_array_equal(model.site_index(rows), [model.site_names.index("B"), -1,
                                                           model.site_names.index("A")])
    assert (model.site_index(rows.drop(columns="site")) == -1).all()
    assert model.check_latents(Y[:3], 3).shape == (3, Y.shape[1])
    with pytest.raises(NdaeError, match=r"expected \(2, 4\)"):
        model.check_latents(Y[:3], 2)


@pytest.mark.parametrize("variant", ["cross_products", "diagonal", "clipped", "transferred"])
def test_save_load_save_is_byte_identical_with_the_same_keys(tmp_path, variant):
    frame, Y = _controls()
    design = DesignSpec(basis="polynomial", degree=2)
    stats = SufficientStats.from_data(frame, Y, design, cross_products=variant != "diagonal")
    if variant == "clipped":
        stats = dataclasses.replace(stats, covariate_clip=2.5, latent_clip=30.0)
    model = NormativeModel.from_stats(stats, [f"f{k}" for k in range(Y.shape[1])])
    if variant == "transferred":
        model = model.transfer(frame.iloc[:6].assign(site="Z"), Y[:6])
    model.save(tmp_path / "first")
    NormativeModel.load(tmp_path / "first").save(tmp_path / "second")
    for name in ("model.npz", "model.json"):
        assert (tmp_path / "first" / name).read_bytes() == (tmp_path / "second" / name).read_bytes(), name
    with np.load(tmp_path / "first" / "model.npz") as arrays:
        extra = [] if variant == "diagonal" else ["residual_covariance"]
        assert arrays.files == NPZ_ARRAYS + extra
    assert sorted(json.loads((tmp_path / "first" / "model.json").read_text())) == sorted(JSON_KEYS)


def _rewrite_npz(folder, change):
    """model.npz changed by `change(arrays)`, with a model.json whose sha256 matches it."""
    with np.load(folder / "model.npz") as stored:
        arrays = {key: stored[key] for key in stored.files}
    change(arrays)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    (folder / "model.npz").write_bytes(buffer.getvalue())
    meta = json.loads((folder / "model.json").read_text())
    meta["model_npz_sha256"] = hashlib.sha256(buffer.getvalue()).hexdigest()
    (folder / "model.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("change, words", [
    (lambda arrays: arrays.update(site_column=np.array(1.0)), "site_column"),  # not a fitted array
    (lambda arrays: arrays.pop("beta"), "beta"),
])
def test_load_takes_only_the_declared_arrays(fitted, tmp_path, change, words):
    fitted[2].save(tmp_path)
    _rewrite_npz(tmp_path, change)
    with pytest.raises(NdaeError, match=words) as error:
        NormativeModel.load(tmp_path)
    assert "model.npz" in str(error.value)
