"""Bad command-line values end in one clear line naming the option, within seconds, before any
work and with nothing written: negative seeds, steps and folds, NaN penalties, unknown devices,
unbounded --jobs and --patients-per-anatomy, a demo into / or $HOME, a private pooled demo,
--target-epsilon without --privacy, non-finite run-config values, unwritable outputs."""

from __future__ import annotations

import errno
import time
from pathlib import Path

import pytest

import ndae.federation.demo  # noqa: F401  (imported here, so timings measure the checks, not imports)
from ndae.cli import main
from ndae.cli_types import MAX_PATIENTS_PER_ANATOMY, max_jobs
from ndae.errors import NdaeError


def _refused(capsys, argv: list[str], seconds: float = 5) -> str:
    """Run `ndae argv`; it must fail within seconds with a one-line error, not a traceback."""
    started = time.monotonic()
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse's usage error
        code = exit_.code
    error = capsys.readouterr().err
    assert code not in (0, None), error
    assert time.monotonic() - started < seconds
    assert "Traceback" not in error and error.strip(), error
    assert len([line for line in error.splitlines() if "error" in line]) == 1, error
    return error


class WorkStarted(Exception):
    """A refused call must never reach the cohort or the federation."""


@pytest.fixture(autouse=True)
def _no_real_work(monkeypatch):
    import ndae.cohort

    def started(*args, **kwargs):
        raise WorkStarted

    monkeypatch.setattr(ndae.cohort, "generate_cohort", started)


@pytest.fixture
def files(tmp_path):
    (tmp_path / "m.csv").write_text("subject,site\n")
    (tmp_path / "binary.csv").write_bytes(b"\x89PNG\r\n\x1a\n\0\0\0IHDR")
    (tmp_path / "a_file").write_text("not a folder")
    (tmp_path / "empty.csv").write_text("")
    return tmp_path


CASES = [
    (["demo", "--out", "{out}", "--seed", "-1"], "--seed"),
    (["demo", "--out", "{out}", "--jobs", "100000"], "--jobs"),
    (["demo", "--out", "{out}", "--patients-per-anatomy", "1000000"], "--patients-per-anatomy"),
    (["demo", "--out", "{out}", "--privacy", "--survival-mode", "pooled"], "pooled"),
    (["demo", "--out", "{out}", "--target-epsilon", "3"], "--target-epsilon"),
    (["cohort", "--healthy", "{dir}/m.csv", "--out", "{out}", "--seed", "-1"], "--seed"),
    (["cohort", "--healthy", "{dir}/m.csv", "--out", "{out}", "--jobs", "0"], "--jobs"),
    (["cohort", "--healthy", "{dir}/m.csv", "--out", "{out}", "--jobs", "100000"], "--jobs"),
    (["cohort", "--healthy", "{dir}/m.csv", "--out", "{out}", "--patients-per-anatomy", "1000000"],
     "--patients-per-anatomy"),
    (["survival", "--deviations", "{dir}/m.csv", "--manifest", "{dir}/m.csv", "--out", "{out}", "--folds", "0"],
     "--folds"),
    (["survival", "--deviations", "{dir}/m.csv", "--manifest", "{dir}/m.csv", "--out", "{out}", "--penalizer",
      "nan"], "--penalizer"),
    (["train", "--manifest", "{dir}/m.csv", "--out", "{out}", "--device", "bogus"], "--device"),
    (["train", "--manifest", "{dir}/m.csv", "--out", "{out}", "--steps", "-1"], "--steps"),
    (["encode", "--run", "{out}", "--manifest", "{dir}/m.csv", "--steps", "-5"], "--steps"),
    (["evaluate", "--manifest", "{dir}/m.csv", "--out", "{out}", "--folds", "1"], "--folds"),
    (["evaluate", "--manifest", "{dir}/m.csv", "--out", "{out}", "--truth", "{dir}/binary.csv"], "--truth"),
    (["evaluate", "--manifest", "{dir}/m.csv", "--out", "{out}", "--truth", "{dir}"], "--truth"),
    (["evaluate", "--manifest", "{dir}/m.csv", "--out", "{out}", "--truth", "{dir}/empty.csv"], "--truth"),
    (["site", "approve", "ab" * 32, "--site-dir", "{dir}/a_file"], "--site-dir"),
]


@pytest.mark.parametrize("argv,named", CASES, ids=[" ".join(a[:1] + a[-2:]) for a, _ in CASES])
def test_a_bad_value_is_refused_in_one_line_naming_the_option_before_anything_is_written(files, capsys, argv,
                                                                                         named):
    out = files / "out"
    error = _refused(capsys, [part.replace("{out}", str(out)).replace("{dir}", str(files)) for part in argv])
    assert named in error
    assert not out.exists()
    assert (files / "a_file").read_text() == "not a folder"


def test_the_bounds_are_sane_on_this_machine():
    assert 1 <= max_jobs() <= 64
    assert 4 <= MAX_PATIENTS_PER_ANATOMY < 1000


@pytest.mark.parametrize("where", ["/", "home", "foreign"])
def test_demo_refuses_root_home_and_a_folder_of_other_files(tmp_path, capsys, monkeypatch, where):
    home = tmp_path / "home"
    home.mkdir()
    (home / ".bashrc").write_text("mine")
    monkeypatch.setenv("HOME", str(home))
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "holiday.jpg").write_bytes(b"jpeg")
    out = {"/": "/", "home": str(home), "foreign": str(foreign)}[where]
    error = _refused(capsys, ["demo", "--out", out])
    assert error.startswith("ndae demo: error:") and out in error
    assert sorted(p.name for p in home.iterdir()) == [".bashrc"]
    assert sorted(p.name for p in foreign.iterdir()) == ["holiday.jpg"]


def test_demo_into_an_unwritable_folder_ends_in_one_line(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    error = _refused(capsys, ["demo", "--out", str(blocker / "run")])  # a file where a folder must be
    assert error.startswith("ndae demo: error:") and str(blocker) in error


def test_a_full_or_read_only_disk_during_the_demo_ends_in_one_line_naming_the_file(tmp_path, capsys, monkeypatch):
    import ndae.cohort

    def full_disk(healthy, out, config):
        Path(out).mkdir(parents=True)
        raise OSError(errno.ENOSPC, "No space left on device", str(Path(out) / "images" / "x.nii.gz"))

    monkeypatch.setattr(ndae.cohort, "generate_cohort", full_disk)
    run = tmp_path / "run"
    error = _refused(capsys, ["demo", "--out", str(run), "--rounds", "1"], seconds=60)  # unpacks the demo data
    assert error.startswith("ndae demo: error:") and "No space left on device" in error and "x.nii.gz" in error

    def read_only(healthy, out, config):
        raise PermissionError(errno.EROFS, "Read-only file system", str(out))

    monkeypatch.setattr(ndae.cohort, "generate_cohort", read_only)
    error = _refused(capsys, ["demo", "--out", str(run), "--rounds", "1"], seconds=60)
    assert "Read-only file system" in error


@pytest.mark.parametrize("key", ["max-grad-norm", "noise-multiplier", "moments-noise-multiplier", "learning-rate",
                                 "round-timeout"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), "-inf", "nan"])
@pytest.mark.parametrize("privacy", [True, False])
def test_run_config_refuses_non_finite_numbers_naming_the_key(key, value, privacy):
    from ndae.federation.config import FederationConfig

    with pytest.raises(NdaeError, match=f"'{key}'"):
        FederationConfig.from_run_config({key: value, "privacy": privacy})


@pytest.mark.parametrize("command", [["demo"], ["cohort", "--out", "c"], ["train", "--manifest", "m.csv", "--out", "r"],
                                     ["evaluate", "--manifest", "m.csv", "--out", "o"],
                                     ["survival", "--deviations", "d.csv", "--manifest", "m.csv", "--out", "o"],
                                     ["audit", "run", "--empirical", "--members", "m.csv", "--nonmembers", "n.csv"]])
@pytest.mark.parametrize("seed", ["-1", str(2**32), "1e3"])
def test_every_seed_option_is_bounded_and_named(command, seed, capsys):
    from ndae.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args([*command, "--seed", seed])
    assert "--seed" in capsys.readouterr().err
