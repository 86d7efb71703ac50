"""A cohort made once: the demo's cohort comes from a cache keyed by its parameters, `--cohort DIR`
reuses an existing one, and each run gets its own hard-linked copy."""

from __future__ import annotations

from pathlib import Path

import pytest

import ndae.cohort
from ndae.cohort import CohortConfig
from ndae.errors import NdaeError


def _fake_generate(calls: list):
    """A stand-in for the simulator that writes the smallest complete cohort and counts its calls."""
    from ndae.cohort.store import cohort_parameters, write_marker

    def generate(healthy, out, config):
        calls.append(Path(out))
        out = Path(out)
        sites = [f"site{i + 1}" for i in range(config.sites)]
        rows = []
        for i, site in enumerate(sites):
            image = out / "images" / site / f"s{i}_T1.nii.gz"
            image.parent.mkdir(parents=True, exist_ok=True)
            image.write_bytes(b"image")
            (out / "images" / site / f"s{i}_labels.nii.gz").write_bytes(b"labels")
            rows.append(f"s{i},{site},images/{site}/s{i}_T1.nii.gz,images/{site}/s{i}_labels.nii.gz")
            (out / "sites" / site).mkdir(parents=True, exist_ok=True)
            (out / "sites" / site / "manifest.csv").write_text("subject,site\n")
        (out / "manifest.csv").write_text("subject,site,image,mask\n" + "\n".join(rows) + "\n")
        (out / "truth.csv").write_text("subject\n")
        return write_marker(out, {"sites": {s: {} for s in sites}, "subjects": len(sites)},
                            cohort_parameters(config, Path(healthy)))

    return generate


@pytest.fixture
def healthy(tmp_path):
    path = tmp_path / "healthy.csv"
    path.write_text("subject,site,image,age,sex,group\n")
    return path


def test_the_second_request_for_the_same_cohort_does_not_simulate(tmp_path, monkeypatch, healthy):
    from ndae.cohort.cache import cached_cohort

    calls = []
    monkeypatch.setattr(ndae.cohort, "generate_cohort", _fake_generate(calls))
    config = CohortConfig(sites=2, seed=3)
    first, made = cached_cohort(healthy, config, root=tmp_path / "cache", log=lambda line: None)
    assert made and len(calls) == 1 and (first / "cohort.json").exists()
    assert calls[0] != first  # simulated into a scratch folder, renamed into place once complete
    lines = []
    again, made = cached_cohort(healthy, CohortConfig(sites=2, seed=3, jobs=7), root=tmp_path / "cache",
                                log=lines.append)
    assert again == first and not made and len(calls) == 1  # --jobs does not make another cohort
    assert "reusing the cached cohort" in lines[0]
    other, made = cached_cohort(healthy, CohortConfig(sites=2, seed=4), root=tmp_path / "cache",
                                log=lambda line: None)
    assert made and other != first and len(calls) == 2  # another seed, another cohort


def test_a_cached_cohort_left_incomplete_is_simulated_again(tmp_path, monkeypatch, healthy):
    from ndae.cohort.cache import cached_cohort

    calls = []
    monkeypatch.setattr(ndae.cohort, "generate_cohort", _fake_generate(calls))
    folder, _ = cached_cohort(healthy, CohortConfig(sites=2), root=tmp_path, log=lambda line: None)
    (folder / "cohort.json").unlink()  # e.g. an older ndae killed mid-write
    again, made = cached_cohort(healthy, CohortConfig(sites=2), root=tmp_path, log=lambda line: None)
    assert made and again == folder and len(calls) == 2 and (folder / "cohort.json").exists()


class _Federation(Exception):
    """Raised where the demo would start the federation: the cohort step is done by then."""


def test_a_second_demo_with_the_same_settings_does_not_simulate_the_cohort(tmp_path, monkeypatch, healthy):
    import ndae.federation.simulation
    from ndae.federation.demo import run_demo

    calls = []
    monkeypatch.setenv("NDAE_CACHE", str(tmp_path / "ndae-cache"))
    monkeypatch.setattr(ndae.cohort, "generate_cohort", _fake_generate(calls))

    def federation(run_config, n_sites):
        assert n_sites == 2 and Path(run_config["cohort-dir"]).name == "cohort"
        raise _Federation

    monkeypatch.setattr(ndae.federation.simulation, "run_simulation", federation)
    for out in ("first", "second"):
        with pytest.raises(_Federation):
            run_demo(tmp_path / out, sites=2, rounds=1, healthy=healthy, log=lambda line: None)
    assert len(calls) == 1
    cached = next((tmp_path / "ndae-cache" / "cohorts").glob("*/cohort.json")).parent
    for out in ("first", "second"):  # each run has its own copy, the images hard-linked to the cache's
        copy = tmp_path / out / "cohort"
        assert (copy / "cohort.json").exists() and (copy / "sites" / "site2" / "manifest.csv").exists()
        image = copy / "images" / "site1" / "s0_T1.nii.gz"
        assert image.stat().st_ino == (cached / "images" / "site1" / "s0_T1.nii.gz").stat().st_ino
    # a run's manifest edited in place (an editor, open(..., "w")) leaves the cached cohort as it was
    with open(tmp_path / "first" / "cohort" / "sites" / "site1" / "manifest.csv", "w") as handle:
        handle.write("edited\n")
    assert (cached / "sites" / "site1" / "manifest.csv").read_text() == "subject,site\n"
    assert (tmp_path / "second" / "cohort" / "sites" / "site1" / "manifest.csv").read_text() == "subject,site\n"


def test_demo_cohort_dir_reuses_an_existing_cohort_and_refuses_an_incomplete_one(tmp_path, monkeypatch, healthy):
    import ndae.federation.simulation
    from ndae.federation.demo import run_demo

    calls = []
    made = _fake_generate([])
    made(healthy, tmp_path / "mine", CohortConfig(sites=2))
    monkeypatch.setattr(ndae.cohort, "generate_cohort", _fake_generate(calls))
    monkeypatch.setattr(ndae.federation.simulation, "run_simulation",
                        lambda run_config, n_sites: (_ for _ in ()).throw(_Federation()))
    with pytest.raises(_Federation):
        run_demo(tmp_path / "run", rounds=1, cohort=tmp_path / "mine", log=lambda line: None)
    assert calls == [] and (tmp_path / "run" / "cohort" / "cohort.json").exists()
    (tmp_path / "mine" / "cohort.json").unlink()
    with pytest.raises(NdaeError, match=r"^--cohort: .*mine.*incomplete cohort"):
        run_demo(tmp_path / "other", rounds=1, cohort=tmp_path / "mine", log=lambda line: None)
    assert not (tmp_path / "other").exists()  # refused before the run folder was claimed


def test_the_demo_command_has_a_cohort_option():
    from ndae.cli import build_parser

    args = build_parser().parse_args(["demo", "--cohort", "/some/cohort"])
    assert args.cohort == "/some/cohort"


# ---- a bare `flwr run .`: the small demo cohort, cached ------------------------------------------
def test_a_bare_flwr_run_simulation_runs_the_small_demo_cohort_and_names_its_report(tmp_path, monkeypatch, caplog):
    import logging

    from flwr.app import Context, RecordDict
    from flwr.superlink.grid.inmemory_grid import InMemoryGrid

    import server.server_app as server_app
    from ndae.federation.config import FederationConfig
    from ndae.federation.default_cohort import SMALL_COHORT_SUBJECTS, simulated_node_cohort

    class Grid(InMemoryGrid):
        def __init__(self):  # two simulated SuperNodes, nothing else
            pass

        def get_node_ids(self):
            return [11, 12]

    calls, ran = [], []
    monkeypatch.setattr(ndae.cohort, "generate_cohort", _fake_generate(calls))
    monkeypatch.setattr(server_app, "run_federation", lambda grid, config, log: ran.append(config))
    monkeypatch.delenv("FLWR_HOME", raising=False)
    # Its own cache: the stand-in cohort must not be found later by a real bare `flwr run .`.
    monkeypatch.setenv("NDAE_CACHE", str(tmp_path / "ndae-cache"))
    config = {**FederationConfig(run_dir=str(tmp_path / "run")).to_run_config(), "cohort-dir": ""}
    context = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=config)
    with caplog.at_level(logging.INFO, logger="flwr"):
        server_app.main(Grid(), context)
        server_app.main(Grid(), context)  # the second run reuses the cohort
    assert len(calls) == 1 and len(ran) == 2
    cohort = Path(ran[0]["cohort-dir"])
    assert cohort.is_relative_to(tmp_path / "ndae-cache")
    assert (cohort / "sites" / "site2" / "manifest.csv").exists() and ran[1]["cohort-dir"] == str(cohort)
    text = caplog.text
    assert f"{SMALL_COHORT_SUBJECTS} subjects, 2 sites" in text
    assert f"report: {tmp_path / 'run' / 'report.md'}" in text and "flower-superlink" in text
    assert text.rstrip().splitlines()[-1].endswith("pkill -f 'flower-superlink --insecure --simulation'")
    # each simulated ClientApp finds the same folder from its node config
    node = {"partition-id": 1, "num-partitions": 2}
    assert simulated_node_cohort(node, "", int(config["seed"])) == str(cohort)
    assert simulated_node_cohort(node, "/given", 0) == "/given"
    assert simulated_node_cohort({"manifest": "/site/manifest.csv"}, "", 0) == ""  # a deployment's site


def test_the_demos_own_superlink_gets_no_stop_hint(tmp_path, monkeypatch, caplog):
    import logging

    from flwr.app import Context, RecordDict

    import server.server_app as server_app
    from ndae.federation.config import FederationConfig

    monkeypatch.setattr(server_app, "run_federation", lambda grid, config, log: None)
    monkeypatch.setattr(server_app, "is_simulation", lambda grid: True)
    monkeypatch.setattr(server_app, "check_simulation_cohort", lambda grid, config: None)
    config = FederationConfig(run_dir=str(tmp_path / "run"), cohort_dir=str(tmp_path)).to_run_config()
    context = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=config)
    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "ndae-flwr-home-abc"))  # what `ndae demo` runs it under
    with caplog.at_level(logging.INFO, logger="flwr"):
        server_app.main(object(), context)
    assert "report: " in caplog.text and "pkill" not in caplog.text


def test_an_unwritable_cohort_cache_is_one_clear_error(tmp_path, healthy):
    from ndae.cohort.cache import cached_cohort

    blocked = tmp_path / "file"
    blocked.write_text("")  # a file where the cache folder should be
    with pytest.raises(NdaeError, match=r"^cohort cache .*file.*NDAE_CACHE"):
        cached_cohort(healthy, CohortConfig(sites=2), root=blocked / "cohorts", log=lambda line: None)


def test_a_cohort_cached_by_another_version_of_the_simulator_is_not_reused(tmp_path, monkeypatch, healthy):
    import ndae.cohort.cache as cache

    source = tmp_path / "simulator"
    source.mkdir()
    (source / "render.py").write_text("GAIN = 1\n")
    before = cache.simulator_fingerprint(source)
    (source / "render.py").write_text("GAIN = 2\n")
    assert cache.simulator_fingerprint(source) != before  # any edit of the simulator's code
    assert cache.simulator_fingerprint() == cache.simulator_fingerprint(Path(cache.__file__).parent)

    calls = []
    monkeypatch.setattr(ndae.cohort, "generate_cohort", _fake_generate(calls))
    cache.cached_cohort(healthy, CohortConfig(sites=2), root=tmp_path / "cache", log=lambda line: None)
    monkeypatch.setattr(cache, "simulator_fingerprint", lambda package=None: "another-version")
    _, made = cache.cached_cohort(healthy, CohortConfig(sites=2), root=tmp_path / "cache", log=lambda line: None)
    assert made and len(calls) == 2
