"""Hostile or careless input: every case ends in a clear error naming the file, row or
field, within seconds, with nothing written outside the output folder."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from ndae.cli import main
from ndae.data.cache import default_cache_dir, load_prepared, prepare_manifest
from ndae.data.manifest import read_manifest
from ndae.data.nifti import load_nifti
from ndae.data.subject_ids import subject_file
from ndae.errors import InvalidImageError, ManifestError
from tests.timeouts import within

HEADER = "subject,site,image,age,sex,group,mask"




@pytest.fixture(scope="module")
def demo_rows():
    """Three shipped demo subjects (on the output grid: prepared in about a second each)."""
    from ndae.data.demo import demo_manifest_path

    return read_manifest(demo_manifest_path()).iloc[:3].reset_index(drop=True)


def _line(row, subject=None, image=None) -> str:
    return ",".join([subject if subject is not None else row["subject"], row["site"],
                     str(image if image is not None else row["image"]), f"{row['age']:g}", row["sex"], row["group"],
                     row["mask"]])


def _manifest(folder: Path, lines: list[str], name: str = "manifest.csv") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text("\n".join([HEADER, *lines]) + "\n")
    return path


def _tree(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


@pytest.mark.parametrize("subject", ["../../evil", "a/b", "ABSOLUTE", " s1 ", ".hidden", ".."])
def test_subject_ids_cannot_name_files_outside_the_cache(tmp_path, demo_rows, capsys, subject):
    if subject == "ABSOLUTE":
        subject = str(tmp_path / "evil")
    manifest = _manifest(tmp_path / "in", [_line(demo_rows.iloc[0], subject=subject)])
    before = _tree(tmp_path)
    out = tmp_path / "a" / "b" / "cache"
    assert main(["prepare", "--manifest", str(manifest), "--out", str(out)]) == 1
    error = capsys.readouterr().err
    assert f"row 2 (subject {subject!r})" in error and ("not a valid id" in error or "spaces" in error)
    assert _tree(tmp_path) == before  # nothing written anywhere, the cache folder included


def test_the_id_to_path_helper_refuses_what_the_manifest_would(tmp_path):
    assert subject_file(tmp_path, "IXI012-HH-1211", ".npz") == tmp_path / "IXI012-HH-1211.npz"
    for subject in ("../x", "/etc/passwd", "a/b", "", " s1", "s1 ", "..", "x" * 129):
        with pytest.raises(ManifestError, match="subject id"):
            subject_file(tmp_path, subject, ".npz")
    with pytest.raises(ManifestError, match="subject id"):
        load_prepared(tmp_path, "../../etc/x")


def test_ids_differing_by_spaces_or_case_are_not_two_subjects(tmp_path, demo_rows):
    rows = demo_rows
    lines = [_line(rows.iloc[0], subject="s1"), _line(rows.iloc[1], subject="S1"), _line(rows.iloc[2], subject=" s1 ")]
    with pytest.raises(ManifestError) as error:
        read_manifest(_manifest(tmp_path, lines))
    message = str(error.value)
    assert "row 3 (subject 'S1'): duplicate subject" in message and "differ only in case" in message
    assert "row 4 (subject ' s1 '): subject ' s1 ' has leading or trailing spaces" in message


def test_site_ids_name_files_too(tmp_path, demo_rows):
    line = _line(demo_rows.iloc[0]).replace(demo_rows.iloc[0]["site"], "../../server", 1)
    with pytest.raises(ManifestError, match=r"row 2 .*site '\.\./\.\./server' is not a valid id"):
        read_manifest(_manifest(tmp_path, [line]))


@pytest.mark.parametrize("kind", ["device", "folder", "fifo", "empty"])
def test_an_image_that_is_not_a_regular_file_is_refused_at_once(tmp_path, demo_rows, capsys, kind):
    bad = {"device": Path("/dev/zero"), "folder": tmp_path / "scan.nii.gz", "fifo": tmp_path / "pipe.nii.gz",
           "empty": tmp_path / "empty.nii.gz"}[kind]
    if kind == "folder":
        bad.mkdir()
    elif kind == "fifo":
        import os

        os.mkfifo(bad)
    elif kind == "empty":
        bad.write_bytes(b"")
    manifest = _manifest(tmp_path / "in", [_line(demo_rows.iloc[0]), _line(demo_rows.iloc[1], image=bad)])
    out = tmp_path / "out"
    with within(20):
        assert main(["prepare", "--manifest", str(manifest), "--out", str(out)]) == 1
        # The library entry points refuse it too, without hashing or reading it.
        with pytest.raises(InvalidImageError, match=str(bad)):
            load_nifti(bad)
        frame = demo_rows.iloc[1:2].assign(image=str(bad))
        with pytest.raises(InvalidImageError, match="could not be prepared"):
            prepare_manifest(frame, tmp_path / "direct", progress=False)
    error = capsys.readouterr().err
    assert f"row 3 (subject {demo_rows.iloc[1]['subject']!r}): image {bad}" in error
    assert "Traceback" not in error and not out.exists()


def test_a_row_with_more_fields_than_the_header_is_named(tmp_path, demo_rows, capsys):
    lines = [_line(demo_rows.iloc[0]), _line(demo_rows.iloc[1]) + ",extra", _line(demo_rows.iloc[2])]
    assert main(["prepare", "--manifest", str(_manifest(tmp_path, lines)), "--out", str(tmp_path / "out")]) == 1
    error = capsys.readouterr().err
    assert "row 3: 8 fields, the header has 7" in error and "Traceback" not in error


def test_a_header_only_manifest_is_refused(tmp_path, capsys):
    manifest = _manifest(tmp_path, [])
    assert main(["prepare", "--manifest", str(manifest), "--out", str(tmp_path / "out")]) == 1
    assert "no subjects" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_one_image_repeated_ten_thousand_times_is_refused_within_seconds(tmp_path, demo_rows):
    row = demo_rows.iloc[0]
    lines = [_line(row, subject=f"s{i}") for i in range(10_000)]
    started = time.perf_counter()
    with within(60), pytest.raises(ManifestError) as error:
        read_manifest(_manifest(tmp_path, lines))
    elapsed = time.perf_counter() - started
    message = str(error.value)
    assert "9999 bad row(s)" in message and "row 3 (subject 's1'): image" in message
    assert "also the image of row 2 (subject 's0')" in message and "... and 9899 more" in message
    assert elapsed < 20, elapsed  # seconds, not the ~18 min of preparing 10,000 copies


def test_a_copied_or_linked_scan_is_refused(tmp_path, demo_rows):
    copy = tmp_path / "copy.nii"
    shutil.copy(demo_rows.iloc[0]["image"], copy)
    link = tmp_path / "link.nii"
    link.symlink_to(demo_rows.iloc[0]["image"])
    # Same file under another name: refused by the manifest, before anything is hashed.
    with pytest.raises(ManifestError, match=r"row 3 .*link\.nii is also the image of row 2"):
        read_manifest(_manifest(tmp_path, [_line(demo_rows.iloc[0]), _line(demo_rows.iloc[1], image=link)], "a.csv"))
    # A byte-identical copy: refused once hashed, before any subject is prepared.
    frame = read_manifest(_manifest(tmp_path, [_line(demo_rows.iloc[0]), _line(demo_rows.iloc[1], image=copy)], "b.csv"))
    with pytest.raises(ManifestError, match=f"subject {demo_rows.iloc[1]['subject']!r}: image .*copy.nii has the same"):
        prepare_manifest(frame, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_every_bad_image_is_reported_at_once_and_the_good_ones_are_kept(tmp_path, demo_rows):
    def save_like(source: str, name: str, change) -> Path:
        image = nib.load(source)
        path = tmp_path / name
        nib.save(nib.Nifti1Image(change(image.get_fdata(dtype=np.float32)), image.affine), str(path))
        return path

    with_nan = save_like(demo_rows.iloc[0]["image"], "nan.nii.gz", lambda d: np.where(d > d.mean(), np.nan, d))
    constant = save_like(demo_rows.iloc[1]["image"], "flat.nii.gz", lambda d: np.full_like(d, 3.0))
    lines = [_line(demo_rows.iloc[0], image=with_nan), _line(demo_rows.iloc[1], image=constant), _line(demo_rows.iloc[2])]
    frame = read_manifest(_manifest(tmp_path, lines))  # both pass the cheap checks: only loading finds them
    with pytest.raises(InvalidImageError) as error:
        prepare_manifest(frame, tmp_path / "out", progress=False)
    message = str(error.value)
    assert "2 of 3 subject(s) could not be prepared" in message
    assert "nan.nii.gz" in message and "non-finite" in message
    assert "flat.nii.gz" in message and "constant image" in message
    good = demo_rows.iloc[2]["subject"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [f"{good}.json", f"{good}.npz"]


def test_prepare_writes_the_cache_the_other_commands_read(tmp_path, demo_rows, monkeypatch, capsys):
    monkeypatch.setenv("NDAE_CACHE", str(tmp_path / "ndae-cache"))
    manifest = _manifest(tmp_path / "in", [_line(demo_rows.iloc[i]) for i in range(2)])
    assert main(["prepare", "--manifest", str(manifest)]) == 0
    default = default_cache_dir(manifest)
    assert str(default) in capsys.readouterr().out and default.is_relative_to(tmp_path / "ndae-cache")
    assert {p.suffix for p in default.iterdir()} == {".npz", ".json"}
    # What train/encode/the sites read by default (no cache folder given) finds every subject prepared.
    from ndae.data.dataset import load_slice_dataset

    mtimes = {p: p.stat().st_mtime_ns for p in default.iterdir()}
    assert len(load_slice_dataset(manifest, progress=False)) == 2
    assert {p: p.stat().st_mtime_ns for p in default.iterdir()} == mtimes  # reused, not redone
    # Another folder: the command says how to point the other commands at it.
    assert main(["prepare", "--manifest", str(manifest), "--out", str(tmp_path / "elsewhere")]) == 0
    assert f"--cache {tmp_path / 'elsewhere'}" in capsys.readouterr().out


# ---- the site's cache: the node config decides, never the run config ---------------------------
@pytest.fixture(scope="module")
def one_site(tmp_path_factory) -> Path:
    from ndae.testing.synthetic_cohort import make_synthetic_cohort

    root = tmp_path_factory.mktemp("site")
    make_synthetic_cohort(root / "cohort", sites=1, controls_per_site=2, patients_per_site=1, seed=5)
    return root / "cohort" / "sites" / "site1" / "manifest.csv"


def _site_info(manifest: Path, run_config: dict, node_config: dict) -> dict:
    from flwr.app import Message, RecordDict

    from ndae.federation.inprocess import InProcessGrid

    grid = InProcessGrid([manifest], run_config, node_config=node_config)
    node = next(iter(grid.get_node_ids()))
    (reply,) = grid.send_and_receive([Message(RecordDict(), dst_node_id=node, message_type="query.site_info")])
    assert reply.has_content(), reply.error.reason
    return dict(reply.content["info"])


def test_a_hostile_run_config_cannot_choose_where_a_site_writes(one_site, tmp_path, monkeypatch):
    from ndae.federation.site.data import _SITE_CACHE

    _SITE_CACHE.clear()
    monkeypatch.setenv("NDAE_CACHE", str(tmp_path / "ndae-cache"))
    hostile = tmp_path / "server-chosen"
    own = tmp_path / "site-cache"
    info = _site_info(one_site, {"cache-dir": str(hostile)}, {"cache-dir": str(own)})
    assert info["site"] == "site1" and info["controls"] == 2
    assert not hostile.exists()
    assert len(list(own.glob("*.npz"))) == 3  # the node config's folder, as `ndae prepare --out` writes it
    # No cache-dir in the node config: the manifest's own cache (where `ndae prepare` writes).
    _SITE_CACHE.clear()
    _site_info(one_site, {"cache-dir": str(hostile)}, {})
    assert not hostile.exists()
    assert len(list(default_cache_dir(one_site).glob("*.npz"))) == 3


def test_the_run_config_cache_root_still_serves_simulated_nodes(one_site, tmp_path):
    from ndae.federation.site.data import site_cache_dir

    root = tmp_path / "sim-cache"
    simulated = site_cache_dir({"partition-id": 0}, one_site, str(root))
    assert simulated.parent == root  # Flower simulation: one user owns the run config and every node
    assert site_cache_dir({"manifest": str(one_site)}, one_site, str(root)) == default_cache_dir(one_site)
    assert site_cache_dir({"manifest": str(one_site), "cache-dir": str(tmp_path / "x")}, one_site, str(root)) == tmp_path / "x"


def test_a_corrupt_cache_entry_is_redone_or_named(tmp_path, demo_rows):
    frame = demo_rows.iloc[:1]
    subject = frame.iloc[0]["subject"]
    assert prepare_manifest(frame, tmp_path, progress=False) == {"prepared": 1, "cached": 0}
    (tmp_path / f"{subject}.json").write_text("[]")  # valid JSON, not a record: prepared again
    assert prepare_manifest(frame, tmp_path, progress=False) == {"prepared": 1, "cached": 0}
    (tmp_path / f"{subject}.npz").write_bytes(b"not a zip")
    from ndae.errors import NdaeError

    with pytest.raises(NdaeError, match=f"cached files of subject {subject!r} are unreadable"):
        load_prepared(tmp_path, subject)
    with pytest.raises(NdaeError, match="is not prepared"):
        load_prepared(tmp_path, "IXI000-absent")
