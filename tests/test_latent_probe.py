"""The latent probe (`ndae.model.probe`): what it finds, what it must not find, and `ndae train`'s use of it."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from ndae.model import build_model, prepare_images, preset
from ndae.model.probe import MIN_SUBJECTS, age_probe_vs_init, effective_rank, ridge_probe


def _shared_mean_latent(target: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """What raw z_sem looks like: a large offset shared by everyone, one dominant direction
    unrelated to the target, and the target in one small-variance dimension."""
    n = len(target)
    z = 50.0 + rng.normal(size=(n, 16)) * 0.01
    direction = rng.normal(size=16)
    direction[7] = 0.0
    z += np.outer(rng.normal(size=n) * 10.0, direction)  # dominant nuisance direction
    z[:, 7] += 0.05 * (target - target.mean()) / target.std()
    return z


def test_probe_finds_a_target_hidden_in_a_small_variance_dimension():
    rng = np.random.default_rng(0)
    ages = rng.uniform(20, 80, 100)
    z = _shared_mean_latent(ages, rng)
    assert effective_rank(z) < 1.5  # collapsed, like the tiny DAE's raw z_sem
    found = ridge_probe(z, ages, repeats=3)
    assert found["r"] > 0.9 and found["mae"] < 0.5 * found["mean_mae"]
    # The same data through an unstandardised, fixed-penalty ridge: the small dimension is shrunk away.
    from sklearn.linear_model import Ridge
    from sklearn.model_selection import cross_val_predict

    naive = cross_val_predict(Ridge(alpha=10.0), z, ages, cv=5)
    assert np.corrcoef(naive, ages)[0, 1] < found["r"] - 0.3


def test_probe_of_noise_finds_nothing():
    rng = np.random.default_rng(1)
    ages = rng.uniform(20, 80, 100)
    blind = ridge_probe(rng.normal(size=(100, 32)), ages, repeats=3)
    assert blind["r"] < 0.3 and blind["mae"] > 0.9 * blind["mean_mae"]


def test_probe_vs_init_needs_enough_subjects_and_compares_like_with_like():
    from ndae.data.dataset import load_slice_dataset
    from ndae.data.demo import demo_manifest_path

    data = load_slice_dataset(demo_manifest_path(), None, progress=False)
    config = preset("tiny").with_data_shape(data.images.shape[1])
    x = prepare_images(data.images[:40], config)
    ages = data.ages[:40]
    model = build_model(config, seed=3)
    assert age_probe_vs_init(model, model, x[:MIN_SUBJECTS - 1], ages[:MIN_SUBJECTS - 1]) is None
    assert age_probe_vs_init(model, model, x, np.full(40, 50.0)) is None  # one age: nothing to predict
    same = age_probe_vs_init(model, build_model(config, seed=3), x, ages, repeats=2)
    assert same["trained"]["r"] == same["init"]["r"] and not same["trained_beats_init"]
    other = age_probe_vs_init(model, build_model(config, seed=4), x, ages, repeats=2)
    assert other["trained"]["r"] != other["init"]["r"] and other["n_subjects"] == 40


def test_train_reports_the_age_probe_against_the_initial_encoder(tmp_path):
    from ndae.cli import main
    from ndae.data.demo import demo_manifest_path

    demo = demo_manifest_path()
    table = pd.read_csv(demo)
    for column in ("image", "mask"):
        table[column] = [str(demo.parent / p) for p in table[column]]
    manifest = tmp_path / "manifest.csv"
    table.iloc[::5].head(MIN_SUBJECTS + 4).to_csv(manifest, index=False)  # ages across the range
    run = tmp_path / "run"
    assert main(["train", "--manifest", str(manifest), "--cache", str(tmp_path / "cache"), "--config", "tiny",
                 "--out", str(run), "--steps", "2", "--figure-steps", "2", "--quiet"]) == 0
    probe = json.loads((run / "config.json").read_text())["dae_result"]["latent_age_probe"]
    assert probe["n_controls"] == MIN_SUBJECTS + 4
    assert -1 <= probe["r_init"] <= 1 and -1 <= probe["r_trained"] <= 1
    assert probe["trained_beats_init"] == (probe["r_trained"] > probe["r_init"])
    assert probe["mae_predicting_mean"] > 0 and probe["r_sd"] >= 0
