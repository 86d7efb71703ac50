"""The GPU NDAE run's CPU half, end to end on the toy cohort with `tiny` and a few steps: the carry
file (`benchmarks.gpu_prepare`), the device command (`benchmarks.gpu_ndae`, here on the CPU), its
refusals before anything runs, and `ndae evaluate --features` scoring what it returned with the
same folds, baselines and truth metrics as every run."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from benchmarks import gpu_ndae, gpu_prepare
from ndae.cli import main
from ndae.io import atomic_write_bytes

SMOKE = ["--allow-cpu", "--preset", "tiny", "--bench-presets", "tiny", "--bench-steps", "1", "--bench-warmup", "1",
         "--bench-invert-images", "2", "--bench-invert-steps", "2", "--bench-s", "30", "--budget-s", "200",
         "--reserve-s", "60", "--max-steps", "2", "--chunk-steps", "1", "--batch-size", "4", "--recon-steps", "2",
         "--recon-images", "2"]


@pytest.fixture(scope="module")
def cohort(evaluation_toy_cohort, tmp_path_factory):
    """The toy cohort tests/test_evaluate.py evaluates (tests/conftest.py), prepared into its default
    cache (where `ndae evaluate` without --cache reads), and the carry file made from it."""
    from ndae.data.cache import default_cache_dir

    folder = tmp_path_factory.mktemp("gpu-toy")
    manifest, truth = evaluation_toy_cohort
    cache = default_cache_dir(manifest)
    payload, meta = gpu_prepare.build_carry(manifest, cache, 0.25, 0)
    carry = folder / "carry" / "cohort.npz"
    atomic_write_bytes(carry, payload)
    return manifest, truth, cache, carry, meta


# What the lent GPU machine lacks (its image has torch, numpy, pandas, scikit-learn, matplotlib;
# nibabel travels as a wheel): the device command must run without importing any of these.
NOT_ON_THE_DEVICE = ("flwr", "opacus", "lifelines", "sksurv", "cryptography", "ants", "nilearn", "monai")
WITHOUT_THEM = """
import importlib.abc, runpy, sys
class Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in {blocked!r}:
            raise ImportError("not on the device machine: " + name)
sys.meta_path.insert(0, Absent())
sys.argv = ["gpu_ndae", *{argv!r}]
runpy.run_module("benchmarks.gpu_ndae", run_name="__main__")
"""


@pytest.fixture(scope="module")
def returned(cohort, tmp_path_factory):
    """What the device command writes into $OUT, run here on the CPU in a process that cannot
    import what the device machine lacks."""
    import subprocess
    import sys

    folder = tmp_path_factory.mktemp("gpu-out")
    out, work = folder / "out", folder / "work"
    argv = ["--data", str(cohort[3]), "--out", str(out), "--work", str(work), *SMOKE]
    done = subprocess.run([sys.executable, "-c", WITHOUT_THEM.format(blocked=set(NOT_ON_THE_DEVICE), argv=argv)],
                          cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    return out, work


def test_carry_file_holds_every_subject_and_the_evaluate_held_out_controls(cohort):
    from ndae.data.manifest import read_manifest
    from ndae.evaluation.held_out import held_out_controls

    manifest, _, _, carry, meta = cohort
    table = read_manifest(manifest)
    data = np.load(carry)
    assert list(data["subject"]) == list(table["subject"].astype(str))
    assert data["images"].dtype == np.float16 and data["images"].shape[1:] == data["atlas_slices"].shape
    assert sorted(data["subject"][data["held_out"]]) == sorted(held_out_controls(table, 0.25, 0))
    assert meta["manifest_sha256"] == gpu_prepare.sha256_file(manifest) and meta["format"] == gpu_ndae.FORMAT


def test_device_command_returns_at_most_eight_small_files(returned, cohort):
    out, work = returned
    files = sorted(p.name for p in out.iterdir())
    assert {"run.json", "latents.npz", "prior_residuals.csv", "train_loss.csv", "gpu_bench.json", "gpu.md"} <= set(files)
    assert len(files) <= 7  # gpu_run.sh adds its log: 8 in all
    assert all((out / f).stat().st_size < 16 * 2**20 for f in files)
    run = json.loads((out / "run.json").read_text())
    assert run["complete"] and run["training"]["steps"] == 2 and run["dae"]["steps"] == 2
    assert set(run["quality"]["reconstruction_psnr_brain_db"]) == {"2"}
    assert run["quality"]["reconstruction_subjects_held_out"]
    assert "relative_change" in run["quality"]["prior_residual_swap"]
    assert run["data"]["held_out_subjects"] and (work / "checkpoint.pt").exists()
    latents = np.load(out / "latents.npz")
    assert len(latents["subject"]) == 34 and np.isfinite(latents["z_sem"]).all()
    prior = pd.read_csv(out / "prior_residuals.csv")
    assert {"prior_precentral", "prior_own_precentral"} <= set(prior.columns) and len(prior) == 34
    bench = json.loads((out / "gpu_bench.json").read_text())
    assert len(bench["cells"]) == 2 and len(bench["plain_cells"]) == 2


def test_device_command_resumes_its_checkpoint(returned, cohort, tmp_path):
    """The same command again (after a timeout, on the warm machine) trains on from the checkpoint."""
    import time

    import torch

    _, work = returned
    arguments = list(SMOKE)
    arguments[arguments.index("--max-steps") + 1] = "3"
    args = gpu_ndae.build_parser().parse_args(["--data", str(cohort[3]), "--out", str(tmp_path), "--work", str(work),
                                               *arguments])
    _, _, training, _ = gpu_ndae.train(args, gpu_ndae.Carry(cohort[3]), torch.device("cpu"),
                                       time.perf_counter() + 60, {}, tmp_path)
    assert training["resumed_from_step"] == 2 and training["steps"] == 3
    assert len(pd.read_csv(tmp_path / "train_loss.csv")) == 3  # the losses of both calls


@pytest.mark.parametrize("change, message", [
    (["--preset", "paper3d"], "2-D DAE"),
    (["--bench-s", "150"], "leave no training time"),
    (["--recon-steps", "0"], "--recon-steps"),
    (["--preset", "huge"], "unknown DAE config preset"),
])
def test_device_command_refuses_bad_arguments_before_anything(cohort, tmp_path, change, message):
    arguments = list(SMOKE)
    for i in range(0, len(change), 2):
        arguments[arguments.index(change[i]) + 1] = change[i + 1]
    with pytest.raises(SystemExit, match=message):
        gpu_ndae.main(["--data", str(cohort[3]), "--out", str(tmp_path / "out"), "--work", str(tmp_path / "w"),
                       *arguments])
    assert not (tmp_path / "out").exists() and not (tmp_path / "w").exists()


def test_device_command_refuses_a_bad_carry_file(cohort, tmp_path):
    data = dict(np.load(cohort[3]))
    broken = tmp_path / "broken.npz"
    np.savez(broken, **{k: v for k, v in data.items() if k != "atlas_slices"})
    with pytest.raises(SystemExit, match="missing arrays"):
        gpu_ndae.main(["--data", str(broken), "--out", str(tmp_path / "out"), *SMOKE])
    data["held_out"] = data["group"] == "als"
    np.savez(broken, **data)
    with pytest.raises(SystemExit, match="held_out marks a patient"):
        gpu_ndae.main(["--data", str(broken), "--out", str(tmp_path / "out"), *SMOKE])
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(SystemExit, match="not a readable npz"):
        gpu_ndae.main(["--data", str(tmp_path / "junk.npz"), "--out", str(tmp_path / "out"), *SMOKE])
    assert not (tmp_path / "out").exists()


def _evaluate(cohort, features: Path, out: Path, *extra: str) -> int:
    manifest, truth, cache = cohort[:3]
    return main(["evaluate", "--manifest", str(manifest), "--truth", str(truth), "--out", str(out), "--cache",
                 str(cache), "--features", str(features), "--folds", "3", "--autoencoder-steps", "2", "--draws", "5",
                 "--quiet", *extra])


@pytest.mark.slow
def test_evaluate_scores_the_returned_features_beside_the_baselines(returned, cohort, tmp_path):
    out = tmp_path / "eval"
    assert _evaluate(cohort, returned[0], out, "--config", "tiny-age") == 0  # the run's own preset wins
    result = json.loads((out / "evaluation.json").read_text())
    models = {m["model"] for m in result["models"]}
    assert {"covariates", "NDAE cosine", "NDAE prior residual", "voxel-wise normative z", "oracle (true risk)"} <= models
    assert not (out / "dae" / "checkpoint.pt").exists()  # nothing trained here
    assert result["dae"]["features_from"]["folder"] == str(returned[0].resolve())
    assert result["options"]["config"] == "tiny" and result["options"]["features_dir"] == str(returned[0])
    ndae = next(m for m in result["models"] if m["model"] == "NDAE prior residual" and m["variant"] == "alone")
    assert "risk_concordance" in ndae and np.isfinite(ndae["harrell_c_mean"])
    # the returned z_sem are the ones scored
    mine, theirs = np.load(out / "latents.npz"), np.load(returned[0] / "latents.npz")
    assert list(mine["subject"]) == list(theirs["subject"]) and np.allclose(mine["z_sem"], theirs["z_sem"])
    assert result["prior_residuals"]["relative_change"] == pytest.approx(
        json.loads((returned[0] / "run.json").read_text())["quality"]["prior_residual_swap"]["relative_change"])


def test_evaluate_refuses_features_of_another_manifest_or_split(returned, cohort, tmp_path, capsys):
    features = tmp_path / "features"
    features.mkdir()
    for name in ("latents.npz", "prior_residuals.csv"):
        (features / name).write_bytes((returned[0] / name).read_bytes())
    run = json.loads((returned[0] / "run.json").read_text())
    run["data"]["manifest_sha256"] = "0" * 64
    (features / "run.json").write_text(json.dumps(run))
    assert _evaluate(cohort, features, tmp_path / "a") == 1
    assert "another manifest" in capsys.readouterr().err
    assert not (tmp_path / "a" / "latents.npz").exists()  # refused before writing a result
    assert _evaluate(cohort, returned[0], tmp_path / "b", "--held-out-controls", "0.3") == 1
    assert "held out controls with" in capsys.readouterr().err and not (tmp_path / "b" / "latents.npz").exists()
    assert _evaluate(cohort, returned[0], tmp_path / "c", "--image-deviation-steps", "2") == 1
    assert "cannot be combined with --features" in capsys.readouterr().err
