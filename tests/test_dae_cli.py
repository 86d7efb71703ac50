"""`ndae train` + `ndae encode` end to end on a few demo subjects (a handful of steps)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from ndae.cli import main


@pytest.fixture(scope="module")
def small_manifest(tmp_path_factory) -> Path:
    from ndae.data.demo import demo_manifest_path

    demo = demo_manifest_path()
    table = pd.read_csv(demo)
    for column in ("image", "mask"):
        if column in table:
            table[column] = [p if pd.isna(p) or Path(p).is_absolute() else str(demo.parent / p) for p in table[column]]
    rows = table.head(8).copy()
    rows.loc[rows.index[-2:], "group"] = "als"  # two non-controls: encoded, never trained on
    path = tmp_path_factory.mktemp("manifest") / "manifest.csv"
    rows.to_csv(path, index=False)
    return path


def test_train_then_encode_writes_the_run_files(small_manifest, tmp_path):
    run, cache = tmp_path / "run", tmp_path / "cache"
    common = ["--manifest", str(small_manifest), "--cache", str(cache), "--quiet"]
    assert main(["train", *common, "--config", "tiny", "--out", str(run), "--steps", "3", "--figure-steps", "3"]) == 0
    for name in ("config.json", "dae/checkpoint.pt", "dae/loss_curve.png", "dae/reconstruction.png", "dae/loss.csv"):
        assert (run / name).stat().st_size > 0, name
    config = json.loads((run / "config.json").read_text())
    assert config["dae"]["name"] == "tiny" and config["dae_training"]["n_controls"] == 6
    assert len(pd.read_csv(run / "dae/loss.csv")) == 3

    # Resume continues from step 3 to 5 (loss history carried over).
    assert main(["train", *common, "--out", str(run), "--steps", "5", "--figure-steps", "2", "--resume"]) == 0
    state = torch.load(run / "dae/checkpoint.pt", weights_only=True)
    assert state["step"] == 5 and len(pd.read_csv(run / "dae/loss.csv")) == 5

    out = tmp_path / "latents.npz"
    assert main(["encode", *common, "--run", str(run), "--out", str(out), "--steps", "3"]) == 0
    latents = np.load(out)
    manifest = pd.read_csv(small_manifest)
    assert list(latents["subject"]) == list(manifest["subject"])
    assert latents["z_sem"].shape == (8, config["dae"]["model"]["z_sem_dim"])
    assert latents["x_T"].shape[0] == 8 and latents["x_T"].shape[2:] == tuple(config["dae"]["model"]["image_size"])
    assert np.isfinite(latents["z_sem"]).all() and np.isfinite(latents["x_T"]).all()


def test_train_without_controls_fails_with_a_message(small_manifest, tmp_path, capsys):
    table = pd.read_csv(small_manifest)
    table["group"] = "als"
    path = tmp_path / "als_only.csv"
    table.to_csv(path, index=False)
    assert main(["train", "--manifest", str(path), "--out", str(tmp_path / "run"), "--cache", str(tmp_path / "c"),
                 "--quiet", "--steps", "1"]) == 1
    assert "no rows with group 'control'" in capsys.readouterr().err


def test_encode_without_a_checkpoint_fails_with_a_message(small_manifest, tmp_path, capsys):
    assert main(["encode", "--run", str(tmp_path / "nothing"), "--manifest", str(small_manifest), "--quiet"]) == 1
    assert "checkpoint not found" in capsys.readouterr().err


def test_tiny_ventricle_preset_trains_and_encodes_on_one_slice(tmp_path):
    """`slice_channels` picks the ventricle slice out of the four prepared ones, train to encode."""
    import pandas as pd

    from ndae.data.demo import demo_manifest_path
    from ndae.data.manifest import read_manifest
    from ndae.model.config import preset
    from ndae.errors import NdaeError
    from ndae.model.run import encode_run, train_run

    manifest = read_manifest(demo_manifest_path()).iloc[:5]
    path = tmp_path / "manifest.csv"
    manifest.to_csv(path, index=False)
    run = tmp_path / "run"
    train_run(path, run, "tiny-ventricle", steps=2, cache_dir=tmp_path / "cache", progress=False, figure_steps=2)
    config = preset("tiny-ventricle").with_data_shape(4)
    assert config.model.in_channels == 1 and config.model.slice_channels == (1,)
    latents = np.load(encode_run(run, path, cache_dir=tmp_path / "cache", steps=2, progress=False))
    assert latents["x_T"].shape == (5, 1, 64, 56) and latents["z_sem"].shape == (5, config.model.z_sem_dim)
    with pytest.raises(NdaeError, match="slice_channels"):
        preset("tiny-ventricle").with_data_shape(1)
    assert list(pd.Series(latents["subject"])) == list(manifest["subject"])
