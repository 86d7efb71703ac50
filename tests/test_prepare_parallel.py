"""`ndae prepare --jobs N`: the same cache files and the same errors as one job; and the cache
itself (patient images): private, never half-written on a full or read-only disk."""

from __future__ import annotations

import errno
import os
import stat

import nibabel as nib
import numpy as np
import pytest

from ndae.cli import main
from ndae.data.cache import prepare_manifest
from ndae.data.manifest import read_manifest, write_manifest
from ndae.data.prepare_pool import MAX_DEFAULT_JOBS, THREAD_VARIABLES, ordered_map
from ndae.errors import InvalidImageError, NdaeError


@pytest.fixture(scope="module")
def demo_rows():
    """Three shipped demo subjects (on the output grid: prepared in about a second each)."""
    from ndae.data.demo import demo_manifest_path

    return read_manifest(demo_manifest_path()).iloc[:3].reset_index(drop=True)


def _files(folder) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_a_parallel_run_writes_the_same_bytes_as_a_serial_one(demo_rows, tmp_path):
    assert prepare_manifest(demo_rows, tmp_path / "serial", progress=False, jobs=1) == {"prepared": 3, "cached": 0}
    assert prepare_manifest(demo_rows, tmp_path / "parallel", progress=False, jobs=2) == {"prepared": 3, "cached": 0}
    serial, parallel = _files(tmp_path / "serial"), _files(tmp_path / "parallel")
    assert len(serial) == 6 and serial == parallel
    # The bytes depend on the arrays only: a second serial run into a new folder gives them again.
    prepare_manifest(demo_rows.iloc[:1], tmp_path / "again", progress=False)
    name = f"{demo_rows.iloc[0]['subject']}.npz"
    assert (tmp_path / "again" / name).read_bytes() == serial[name]


def test_a_registered_scan_is_the_same_bytes_in_every_run_and_in_a_worker(demo_rows, tmp_path):
    # Registration was seeded by an argument ANTs ignores and ran multi-threaded: two runs of one
    # scan gave different transforms, hence different cache files.
    from ndae.data.cache import _prepare_task
    from ndae.data.preprocess import PrepareConfig

    row, other = demo_rows.iloc[0], demo_rows.iloc[1]
    task = (row["image"], row["mask"], row["subject"], PrepareConfig(registration="affine"), None)
    here, problem = _prepare_task(task)
    assert problem is None and here.registered
    on_grid = (other["image"], other["mask"], other["subject"], PrepareConfig(), None)  # not registered: quick
    with ordered_map(_prepare_task, [task, on_grid], jobs=2) as results:  # in worker processes
        worker, _ = next(results)
        list(results)
    assert worker.transform_mat == here.transform_mat
    assert np.array_equal(worker.image, here.image) and np.array_equal(worker.mask, here.mask)


def test_a_bad_scan_is_reported_the_same_way_by_a_parallel_run(demo_rows, tmp_path):
    source = nib.load(demo_rows.iloc[1]["image"])
    data = source.get_fdata(dtype=np.float32)
    broken = tmp_path / "nan.nii.gz"
    nib.save(nib.Nifti1Image(np.where(data > data.mean(), np.nan, data), source.affine), str(broken))
    frame = demo_rows.copy()
    frame.loc[1, "image"] = str(broken)
    messages, listings = [], []
    for jobs in (1, 2):
        out = tmp_path / f"jobs{jobs}"
        with pytest.raises(InvalidImageError) as error:
            prepare_manifest(frame, out, progress=False, jobs=jobs)
        messages.append(str(error.value).replace(str(out), "<out>"))
        listings.append(sorted(p.name for p in out.iterdir()))
    assert messages[0] == messages[1]
    assert "1 of 3 subject(s) could not be prepared" in messages[0] and "nan.nii.gz" in messages[0]
    assert listings[0] == listings[1] and len(listings[0]) == 4  # the two good subjects, npz + json each


def test_workers_run_one_thread_each():
    with ordered_map(os.getenv, THREAD_VARIABLES, jobs=2) as values:
        assert list(values) == ["1"] * len(THREAD_VARIABLES)


def _die(task):
    os._exit(9)  # as a worker killed by the kernel's out-of-memory killer would


def test_a_worker_that_dies_is_named_not_a_traceback(demo_rows, tmp_path, monkeypatch):
    import ndae.data.cache as cache

    monkeypatch.setattr(cache, "_prepare_task", _die)
    with pytest.raises(NdaeError, match="a worker process died while preparing subject .*fewer --jobs"):
        prepare_manifest(demo_rows, tmp_path / "out", progress=False, jobs=2)


def test_workers_die_with_a_killed_prepare(demo_rows, tmp_path):
    import signal
    import subprocess
    import sys
    import time

    from ndae.child_processes import alive, descendants

    manifest = tmp_path / "manifest.csv"
    write_manifest(demo_rows, manifest)
    parent = subprocess.Popen([sys.executable, "-m", "ndae.cli", "prepare", "--manifest", str(manifest), "--out",
                               str(tmp_path / "out"), "--registration", "affine", "--jobs", "2"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    children: list[int] = []
    try:
        deadline = time.monotonic() + 60
        while len(children := descendants(parent.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert len(children) >= 2, "the workers never started"
        time.sleep(1.0)  # let them import and start registering
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        deadline = time.monotonic() + 20
        while any(alive(pid) for pid in children) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(alive(pid) for pid in children), "workers outlived their parent"
    finally:
        parent.kill()
        for pid in {*children, *descendants(parent.pid)}:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("jobs", ["0", "-3", "100000", "two"])
def test_absurd_job_counts_are_refused(demo_rows, tmp_path, capsys, jobs):
    manifest = tmp_path / "manifest.csv"
    write_manifest(demo_rows, manifest)
    with pytest.raises(SystemExit) as exit_code:
        main(["prepare", "--manifest", str(manifest), "--out", str(tmp_path / "out"), "--jobs", jobs])
    assert exit_code.value.code == 2 and "--jobs" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    if jobs.lstrip("-").isdigit():
        with pytest.raises(NdaeError, match="--jobs"):
            prepare_manifest(demo_rows, tmp_path / "out", progress=False, jobs=int(jobs))


def test_the_default_is_one_job_per_core_bounded(demo_rows, tmp_path, monkeypatch):
    import ndae.data.cache as cache
    from ndae.cli_types import cores

    seen = {}

    def record(manifest, out, config, **options):
        seen.update(options)
        return {"prepared": 0, "cached": len(manifest)}

    monkeypatch.setattr(cache, "prepare_manifest", record)
    manifest = tmp_path / "manifest.csv"
    write_manifest(demo_rows, manifest)
    assert main(["prepare", "--manifest", str(manifest), "--out", str(tmp_path / "out")]) == 0
    assert seen["jobs"] == min(cores(), MAX_DEFAULT_JOBS)


# ---- the cache holds patient images ------------------------------------------------------------
def test_the_cache_is_private(demo_rows, tmp_path):
    manifest = tmp_path / "in" / "manifest.csv"
    write_manifest(demo_rows.iloc[:1], manifest)
    out = tmp_path / "new" / "cache"
    assert main(["prepare", "--manifest", str(manifest), "--out", str(out), "--figure", "--jobs", "1"]) == 0
    for folder in (tmp_path / "new", out):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder
    files = list(out.iterdir())
    assert {p.suffix for p in files} == {".npz", ".json", ".png"}
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


@pytest.mark.parametrize("failure", [errno.ENOSPC, errno.EROFS])
def test_a_full_or_read_only_disk_ends_in_one_clear_error_and_keeps_what_was_done(demo_rows, tmp_path, monkeypatch,
                                                                                    capsys, failure):
    out = tmp_path / "out"
    prepare_manifest(demo_rows.iloc[:1], out, progress=False)
    before = _files(out)
    manifest = tmp_path / "manifest.csv"
    write_manifest(demo_rows, manifest)

    def refuse(*_):
        raise OSError(failure, os.strerror(failure))

    monkeypatch.setattr(os, "fsync", refuse)  # every write of the cache fails before its rename
    assert main(["prepare", "--manifest", str(manifest), "--out", str(out), "--jobs", "1"]) == 1
    error = capsys.readouterr().err
    assert str(out) in error and os.strerror(failure) in error and "Traceback" not in error
    assert _files(out) == before  # no partial or temporary file, the subject done before kept


def test_an_output_folder_that_cannot_be_made_is_named(demo_rows, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    manifest = tmp_path / "manifest.csv"
    write_manifest(demo_rows.iloc[:1], manifest)
    assert main(["prepare", "--manifest", str(manifest), "--out", str(blocker / "cache"), "--jobs", "1"]) == 1
    assert "a-file/cache: cannot create" in capsys.readouterr().err
