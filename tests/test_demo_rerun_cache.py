"""A rerun of the demo prepares nothing: the simulated sites' prepared subjects live in one cache
shared by every run of the same cohort (outside the run folders), and a changed scan is prepared
again."""

from __future__ import annotations

from pathlib import Path

import pytest

import ndae.cohort
import ndae.data.cache
import ndae.data.preprocess


def _synthetic_generate(healthy, out, config):
    """The cohort simulator's stand-in: a tiny cohort already on the output grid (fast to prepare)."""
    from ndae.cohort.store import cohort_parameters, write_marker
    from ndae.testing.synthetic_cohort import make_synthetic_cohort

    make_synthetic_cohort(out, sites=config.sites, controls_per_site=1, patients_per_site=1, seed=config.seed)
    survival = {"oracle_c_index": 0.7, "censoring_fraction": 0.3, "kaplan_meier_median_months": 20.0}
    return write_marker(Path(out), {"sites": {f"site{i + 1}": {} for i in range(config.sites)},
                                    "subjects": 2 * config.sites, "controls": config.sites,
                                    "patients": config.sites, "survival": survival},
                        cohort_parameters(config, Path(healthy)))


@pytest.fixture
def demo_setup(tmp_path, monkeypatch):
    """`run_demo` with the synthetic cohort and a federation whose simulated nodes only load their
    site as the ClientApp does; returns the list of subjects prepared (by the sites or the demo)."""
    import ndae.federation.simulation
    from ndae.federation.site.data import _SITE_CACHE

    monkeypatch.setenv("NDAE_CACHE", str(tmp_path / "ndae-cache"))
    monkeypatch.setattr(ndae.cohort, "generate_cohort", _synthetic_generate)
    prepared: list[str] = []

    def counting(real):
        def prepare(image, mask, subject, *args, **kwargs):
            prepared.append(subject)
            return real(image, mask, subject, *args, **kwargs)
        return prepare

    monkeypatch.setattr(ndae.data.cache, "prepare_subject", counting(ndae.data.cache.prepare_subject))
    monkeypatch.setattr(ndae.data.preprocess, "prepare_subject", counting(ndae.data.preprocess.prepare_subject))

    def federation(run_config, n_sites):
        from flwr.app import Context, RecordDict

        from ndae.federation.site.context import site_of
        from ndae.federation.site.data import site_info

        for node in range(n_sites):  # a site's first message (site_info) reads its prepared slices
            site_info(site_of(Context(run_id=1, node_id=node, node_config={"partition-id": node, "num-partitions": n_sites},
                                      state=RecordDict(), run_config=dict(run_config)))[2])
        (Path(run_config["run-dir"]) / "report.md").write_text("# report\n")

    monkeypatch.setattr(ndae.federation.simulation, "run_simulation", federation)
    healthy = tmp_path / "healthy.csv"
    healthy.write_text("subject,site,image,age,sex,group\n")
    _SITE_CACHE.clear()
    yield prepared, healthy
    _SITE_CACHE.clear()


def _site_folders(run: Path, requested: str = "") -> list[Path]:
    """Where each simulated node of the run's cohort keeps its prepared subjects."""
    from ndae.federation.site.data import site_cache_dir

    manifests = sorted((run / "cohort" / "sites").glob("*/manifest.csv"))
    return [site_cache_dir({"partition-id": i}, manifest, requested) for i, manifest in enumerate(manifests)]


def test_a_second_demo_of_the_same_cohort_prepares_nothing_and_a_changed_scan_is_prepared_again(tmp_path, demo_setup):
    import gzip

    import nibabel as nib

    from ndae.federation.demo import run_demo

    prepared, healthy = demo_setup
    run_demo(tmp_path / "first", sites=2, rounds=1, healthy=healthy, log=lambda line: None)
    subjects = ["S1000", "S1001", "S2000", "S2001"]
    assert sorted(prepared) == subjects  # each subject once: the demo's example figure is read from the cache

    prepared.clear()
    run_demo(tmp_path / "second", sites=2, rounds=1, healthy=healthy, log=lambda line: None)
    assert prepared == []  # a rerun into a new run folder prepares nothing
    assert (tmp_path / "second" / "prepared_subject.png").exists()

    folders = _site_folders(tmp_path / "second")
    assert folders == _site_folders(tmp_path / "first") and len(set(folders)) == 2
    for folder in folders:  # outside every run folder, private as every prepared cache
        assert not folder.is_relative_to(tmp_path / "first") and not folder.is_relative_to(tmp_path / "second")
        assert folder.stat().st_mode & 0o777 == 0o700
        assert {path.stat().st_mode & 0o777 for path in folder.iterdir()} == {0o600}
    assert not (tmp_path / "first" / "cache").exists() and not (tmp_path / "second" / "cache").exists()
    # `flwr run .` on a demo's cohort (no cache-dir in its run config) finds the same subjects
    assert _site_folders(tmp_path / "first", requested="") == folders

    # A scan of the cached cohort changes: only that subject is prepared again.
    cached = next((tmp_path / "ndae-cache" / "cohorts").glob("*/cohort.json")).parent
    scan = cached / "images" / "site1" / "S1000_T1.nii.gz"
    image = nib.load(scan)
    changed = nib.Nifti1Image(image.get_fdata().astype("float32") * 1.05, image.affine, image.header)
    scan.write_bytes(gzip.compress(changed.to_bytes()))
    prepared.clear()
    run_demo(tmp_path / "third", sites=2, rounds=1, healthy=healthy, log=lambda line: None)
    assert prepared == ["S1000"]


def test_the_in_process_demo_shares_the_same_prepared_subjects(tmp_path, demo_setup, monkeypatch):
    import ndae.federation.server.phases
    from ndae.federation.demo import run_demo

    prepared, healthy = demo_setup

    def federation(grid, config, log):  # every site answers one query, loading its data
        from flwr.app import Message, RecordDict

        replies = grid.send_and_receive([Message(RecordDict(), dst_node_id=node, message_type="query.site_info")
                                         for node in grid.get_node_ids()])
        assert all(reply.has_content() for reply in replies), [reply.error.reason for reply in replies]
        (Path(config.run_dir) / "report.md").write_text("# report\n")

    monkeypatch.setattr(ndae.federation.server.phases, "run_federation", federation)
    run_demo(tmp_path / "simulated", sites=2, rounds=1, healthy=healthy, log=lambda line: None)
    assert len(prepared) == 4
    prepared.clear()
    run_demo(tmp_path / "in-process", sites=2, rounds=1, healthy=healthy, in_process=True, log=lambda line: None)
    assert prepared == []


def test_a_simulated_sites_cache_is_named_by_its_cohort_not_its_folder(tmp_path):
    import shutil

    from ndae.federation.site.data import site_cache_dir
    from ndae.testing.synthetic_cohort import make_synthetic_cohort

    for name, seed in (("a", 1), ("b", 2)):
        make_synthetic_cohort(tmp_path / name, sites=1, controls_per_site=1, patients_per_site=1, seed=seed)
        (tmp_path / name / "cohort.json").write_text(f'{{"seed": {seed}}}')
    shutil.copytree(tmp_path / "a", tmp_path / "copy-of-a")
    folder = {name: site_cache_dir({"partition-id": 0}, tmp_path / name / "sites" / "site1" / "manifest.csv", "")
              for name in ("a", "b", "copy-of-a")}
    assert folder["a"] == folder["copy-of-a"] and folder["a"] != folder["b"]
    (tmp_path / "copy-of-a" / "cohort.json").write_text('{"seed": 3}')  # another cohort, same site manifest
    assert site_cache_dir({"partition-id": 0}, tmp_path / "copy-of-a" / "sites" / "site1" / "manifest.csv", "") \
        != folder["a"]
    # A real site (its node config names its manifest) keeps its own cache, whatever the run config says.
    from ndae.data.cache import default_cache_dir

    manifest = tmp_path / "a" / "sites" / "site1" / "manifest.csv"
    assert site_cache_dir({"manifest": str(manifest)}, manifest, "") == default_cache_dir(manifest)


def test_a_changed_preprocessing_setting_is_prepared_again_in_a_shared_folder(tmp_path):
    from ndae.data.cache import prepare_manifest
    from ndae.data.manifest import read_manifest
    from ndae.data.preprocess import PrepareConfig
    from ndae.testing.synthetic_cohort import make_synthetic_cohort

    make_synthetic_cohort(tmp_path / "cohort", sites=1, controls_per_site=1, patients_per_site=0, seed=4)
    rows = read_manifest(tmp_path / "cohort" / "manifest.csv")
    assert prepare_manifest(rows, tmp_path / "shared", progress=False) == {"prepared": 1, "cached": 0}
    assert prepare_manifest(rows, tmp_path / "shared", progress=False) == {"prepared": 0, "cached": 1}
    other = PrepareConfig(percentiles=(2.0, 98.0))
    assert prepare_manifest(rows, tmp_path / "shared", other, progress=False) == {"prepared": 1, "cached": 0}
