"""Live progress on the console: counted work, a federated run's rounds and phases, the demo's last lines."""

from __future__ import annotations

import io
import json

import pytest

from ndae.progress import Counter, RunWatcher, duration, round_line


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_counted_work_off_a_terminal_is_one_line_per_step_ending_at_the_total():
    stream = io.StringIO()
    counter = Counter(40, "cohort", "subjects simulated", stream=stream)
    for _ in range(40):
        counter.update()
    lines = stream.getvalue().splitlines()
    assert 1 < len(lines) <= 21 and "\r" not in stream.getvalue()  # a log file stays readable
    assert lines[0].startswith("[cohort] 2/40 subjects simulated (5 %), elapsed ")
    assert lines[-1].startswith("[cohort] 40/40 subjects simulated (100 %)") and "ETA" not in lines[-1]
    assert "ETA" in lines[0]


def test_counted_work_on_a_terminal_is_a_tqdm_bar():
    pytest.importorskip("tqdm")
    stream = _Terminal()
    counter = Counter(5, "cohort", "subjects", stream=stream)
    assert counter.bar is not None
    counter.update(5)
    counter.close()
    assert "5/5" in stream.getvalue()


def test_a_round_line_gives_round_loss_sites_answered_elapsed_and_eta():
    entry = {"phase": "dae", "round": 2, "sites": ["site1", "site3"], "train_loss_mean": 0.3412}
    line = round_line(entry, rounds=4, sites=3, elapsed=60.0, rounds_done_here=2, first_round=1)
    assert line == "[federation] round 2/4: loss 0.3412, 2/3 sites answered, elapsed 1 min 00 s, ETA of training 1 min 00 s"
    private = round_line({**entry, "train_loss_mean": None, "round": 4}, 4, 3, 80.0, 4, 1)
    assert "loss withheld" in private and "ETA" not in private  # the last round: nothing left
    resumed = round_line({**entry, "round": 3}, 4, 3, 30.0, 1, 3)  # resumed after round 2: its own rate
    assert resumed.endswith("ETA of training 30 s")
    assert duration(3725) == "1 h 02 min"


def test_the_watcher_prints_each_new_metrics_entry_once(tmp_path):
    path = tmp_path / "metrics.jsonl"
    old = {"phase": "dae", "round": 1, "sites": ["a"], "train_loss_mean": 0.5}
    path.write_text(json.dumps(old) + "\n")  # a resumed run's earlier round
    lines = []
    watcher = RunWatcher(tmp_path, rounds=2, sites=2, log=lines.append)
    watcher.poll()
    assert lines == []
    new = [{"phase": "dae", "round": 2, "sites": ["a", "b"], "train_loss_mean": 0.4},
           {"phase": "normative", "sites": ["a", "b"], "n_controls": 31.0},
           {"phase": "survival", "sites": ["a", "b"]}]
    path.write_text("".join(json.dumps(x) + "\n" for x in [old, *new]))
    watcher.poll()
    watcher.poll()
    assert len(lines) == 3
    assert lines[0].startswith("[federation] round 2/2: loss 0.4000, 2/2 sites answered")
    assert lines[1].startswith("[federation] normative model done: 2/2 sites answered, 31 controls")
    assert lines[2].startswith("[federation] survival model done")


def test_cohort_generation_reports_its_subjects(tmp_path, capsys):
    from ndae.cohort import CohortConfig, generate_cohort
    from ndae.data.demo import demo_manifest_path

    config = CohortConfig(sites=1, seed=0, patients=1, figure=False, max_subjects=3)
    summary = generate_cohort(demo_manifest_path(), tmp_path / "cohort", config)
    err = capsys.readouterr().err
    n = summary["subjects"]
    assert f"[cohort] {n}/{n} subjects simulated (100 %)" in err


def test_the_demo_command_ends_with_the_verdict_then_the_report_path(tmp_path, monkeypatch, capsys):
    import ndae.federation.demo
    from ndae.cli import main

    report = tmp_path / "report.md"
    report.write_text("# Federated NDAE run\n\n**Verdict (cv).** Imaging over the covariates: none.\n"
                      "- The voxel-wise baseline ranks patients better.\n\n- sites: 3\n")
    monkeypatch.setattr(ndae.federation.demo, "run_demo", lambda *a, **k: report)
    assert main(["demo", "--out", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-3:] == ["Verdict (cv). Imaging over the covariates: none.",
                        "- The voxel-wise baseline ranks patients better.", f"report: {report}"]


def test_each_federated_round_is_logged_with_sites_answered_elapsed_and_eta(tmp_path, monkeypatch):
    from ndae.federation.config import FederationConfig
    from ndae.federation.inprocess import InProcessGrid
    from ndae.federation.server.phases import SimulatedKill, run_federation
    from ndae.testing.synthetic_cohort import make_synthetic_cohort

    monkeypatch.setenv("NDAE_TEST_HOOKS", "1")
    make_synthetic_cohort(tmp_path / "cohort", sites=2, controls_per_site=3, patients_per_site=2, seed=1)
    config = FederationConfig(run_dir=str(tmp_path / "run"), cache_dir=str(tmp_path / "cache"), rounds=3,
                              batch_size=4, seed=3, min_sites=2, voxelwise_baseline=False, stop_after_round=2)
    manifests = sorted((tmp_path / "cohort" / "sites").glob("*/manifest.csv"))
    lines = []
    with pytest.raises(SimulatedKill):
        run_federation(InProcessGrid(manifests, config.to_run_config()), config, log=lines.append)
    rounds = [line for line in lines if line.startswith("round ")]
    assert len(rounds) == 2
    assert rounds[0].startswith("round 1/3: loss ") and "from 2 site(s) of 2" in rounds[0]
    assert "elapsed " in rounds[0] and "ETA of training " in rounds[0]
