"""The GPU benchmark's code path, on the CPU: a lent GPU machine gives one short try, so the script
must already run end to end (cells, saved JSON, the section with its computed ratios) before it
gets there. The numbers here are CPU numbers and are not checked, only that they are there."""

import json

import pytest

from benchmarks import bench_gpu


def test_bench_gpu_refuses_without_a_gpu_unless_asked(tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match="no CUDA device"):
        bench_gpu.main(["--presets", "tiny", "--json", str(tmp_path / "g.json"), "--results-dir", str(tmp_path)])
    assert not (tmp_path / "g.json").exists()  # refused before writing


def test_bench_gpu_smoke_writes_both_precisions_and_the_ratio(tmp_path):
    saved = tmp_path / "gpu.json"
    assert bench_gpu.main(["--presets", "tiny", "--steps", "1", "--warmup", "1", "--invert-images", "2",
                           "--invert-steps", "2", "--allow-cpu", "--json", str(saved),
                           "--results-dir", str(tmp_path)]) == 0
    cells = json.loads(saved.read_text())["cells"]
    assert [c["amp"] for c in cells] == [True, False]
    for cell in cells:
        assert cell["train_images_per_s"] > 0 and cell["invert_images_per_s"] > 0 and cell["x_T_finite"]
    # the plain-loop reference: one cell per precision, with the project/plain ratio in the section
    plain = json.loads(saved.read_text())["plain_cells"]
    assert [(c["amp"], c["loop"]) for c in plain] == [(True, "plain"), (False, "plain")]
    assert all(c["train_images_per_s"] > 0 for c in plain)
    section = (tmp_path / "gpu.md").read_text()
    # two rows in the main table, two in the project-vs-plain table
    assert section.count("| `tiny` |") == 4 and "AMP trains" in section and "project / plain" in section
    # The section can be rebuilt from the saved numbers alone.
    (tmp_path / "gpu.md").unlink()
    assert bench_gpu.main(["--render-only", "--json", str(saved), "--results-dir", str(tmp_path)]) == 0
    assert (tmp_path / "gpu.md").read_text() == section


def test_bench_gpu_skips_cells_the_time_budget_cannot_hold(tmp_path):
    import time

    import torch

    result = bench_gpu.run_cells(["tiny"], 1, 1, None, torch.device("cpu"), 2, 2, tmp_path / "g.json",
                                 deadline=time.perf_counter() - 1)
    assert result["cells"] == [] and len(result["skipped"]) == 4
    assert "Not measured" in bench_gpu.render(result)
