"""Deviation maps of a few example patients, written by each site into its own folder and never sent.

One small site (5 controls, 4 patients), an untrained DAE and a random normative model, as in
`test_attack_site_queries`: what is tested is where the maps go, who decides, and that the reply
carries none of them, not what the maps show.
"""

from __future__ import annotations

import json

import pytest
import torch
from flwr.app import ConfigRecord, Message, RecordDict

from ndae.errors import NdaeError
from ndae.federation.config import FederationConfig
from ndae.federation.inprocess import InProcessGrid
from ndae.federation.records import normative_to_config, record_to_frame
from ndae.federation.site.context import STATE_KEY

CONTROLS, PATIENTS = 5, 4
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from ndae.testing.site_world import untrained_site

    root = tmp_path_factory.mktemp("example-maps")
    world = untrained_site(root, _config(root), controls=CONTROLS, patients=PATIENTS, seed=7)
    return {**world, "maps": world["manifest"].parent / "example_maps"}


def _config(root, **overrides):
    settings = dict(run_dir=str(root / "run"), rounds=1, batch_size=4, seed=3, privacy=False,
                    survival_mode="federated", voxelwise_baseline=False)
    settings.update(overrides)
    return FederationConfig(**settings)


def _ask_deviations(world, node_config=None, run_config_extra=None):
    run_config = {**_config(world["root"]).to_run_config(), **(run_config_extra or {})}
    grid = InProcessGrid([world["manifest"]], run_config, node_config=node_config)
    node = next(iter(grid.contexts))
    content = RecordDict({"dae": world["weights"], "normative": normative_to_config(world["z_sem"]),
                          "config": ConfigRecord({"dae-config": json.dumps(world["dae"]),
                                                  "features": ["cosine", "mahalanobis"], "share-rows": False})})
    (reply,) = grid.send_and_receive([Message(content, dst_node_id=node, message_type="query.deviations")])
    return reply, grid.contexts[node]


def _clear(folder):
    for path in folder.glob("*") if folder.exists() else []:
        path.unlink()


def _reply_contents(reply) -> dict:
    """Every record of a reply, as plain values, to compare two replies."""
    out = {}
    for key, record in reply.content.items():
        if hasattr(record, "to_numpy_ndarrays"):
            out[key] = [a.tolist() for a in record.to_numpy_ndarrays()]
        else:
            out[key] = {k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in record.items()}
    return out


def test_a_simulated_site_writes_its_example_patients_maps_into_its_own_folder_and_sends_none(world):
    folder = world["maps"]
    _clear(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "S9999_prior_residual.png").write_bytes(PNG)  # an earlier run's example: not one of this run's
    reply, context = _ask_deviations(world)
    assert not reply.has_error(), reply.error.reason
    written = sorted(folder.glob("*.png"))
    # the rule: the 3 patients with the largest Mahalanobis deviation of z_sem
    table = record_to_frame(context.state[STATE_KEY])
    expected = table.sort_values(["mahalanobis", "subject"], ascending=[False, True])["subject"].head(3)
    assert [p.name for p in written] == sorted(f"{s}_prior_residual.png" for s in expected)
    assert all(p.read_bytes().startswith(PNG) and p.stat().st_size > 5000 for p in written)
    # nothing of them in the reply: the same records, values and all, as a site that writes no maps
    _clear(folder)
    without, _ = _ask_deviations(world, node_config={"example-maps": "false"})
    assert not list(folder.glob("*.png"))
    assert _reply_contents(reply) == _reply_contents(without)
    assert set(reply.content.keys()) == {"counts", "moments"}


def test_every_example_map_has_a_labelled_colourbar_and_titled_panels(world):
    from ndae.federation.site.data import load_site, site_cache_dir
    from ndae.federation.site.example_maps import example_map_figures

    manifest = world["manifest"]
    site = load_site(manifest, prepared_dir=site_cache_dir({"manifest": str(manifest)}, manifest,
                                                           _config(world["root"]).cache_dir))
    figures = example_map_figures(site, world["weights"], world["dae"], world["z_sem"], ["S1006", "S1005"])
    assert [subject for subject, _ in figures] == ["S1006", "S1005"]
    for subject, figure in figures:
        colourbars = [axis for axis in figure.axes if hasattr(axis, "_colorbar")]
        assert len(colourbars) == 1, subject
        assert "x̂₀" in colourbars[0].get_ylabel() and "intensity" in colourbars[0].get_ylabel()
        panels = [axis for axis in figure.axes if axis not in colourbars]
        assert len(panels) == site.data.images.shape[1] and all("mm" in axis.get_title() for axis in panels)
        assert subject in figure._suptitle.get_text()


def test_a_deployed_node_writes_no_example_maps_unless_its_administrator_turns_them_on(world, tmp_path, monkeypatch):
    from ndae.federation.site.policy import SitePolicy

    monkeypatch.delenv("NDAE_SITE_DIR", raising=False)
    assert SitePolicy.from_node_config({"partition-id": 0}).example_maps  # a simulated node
    assert SitePolicy.from_node_config({"manifest": str(world["manifest"])}).example_maps  # InProcessGrid
    deployed = {"site-dir": str(tmp_path / "site"), "require-privacy": "false"}
    assert not SitePolicy.from_node_config(deployed).example_maps
    assert SitePolicy.from_node_config({**deployed, "example-maps": "true"}).example_maps
    # turning them on or off is no privacy policy: a simulated node stays non-private by default
    assert not SitePolicy.from_node_config({"example-maps": "false"}).require_privacy
    with pytest.raises(NdaeError, match="'example-maps'"):
        SitePolicy.from_node_config({"example-maps": "sometimes"})
    _clear(world["maps"])
    reply, _ = _ask_deviations(world, node_config=deployed)
    assert not reply.has_error(), reply.error.reason
    assert not list(world["maps"].glob("*.png"))


def test_a_run_config_cannot_turn_example_maps_on_against_the_node_config(world):
    with pytest.raises(NdaeError, match="'example-maps' is the site's to set"):
        FederationConfig.from_run_config({"example-maps": True})
    _clear(world["maps"])
    reply, _ = _ask_deviations(world, node_config={"example-maps": "false"}, run_config_extra={"example-maps": True})
    assert reply.has_error() and "'example-maps'" in reply.error.reason
    assert not list(world["maps"].glob("*.png"))


def test_the_demo_report_says_where_each_site_wrote_its_maps_and_shows_none(tmp_path):
    from ndae.reporting.site_example_maps import append_example_maps_section

    out = tmp_path / "run"
    for site, count in (("site1", 3), ("site2", 0), ("site3", 2)):
        folder = out / "cohort" / "sites" / site
        folder.mkdir(parents=True)
        (folder / "manifest.csv").write_text("subject\n")
        if count:
            (folder / "example_maps").mkdir()
            for k in range(count):
                (folder / "example_maps" / f"S{k}_prior_residual.png").write_bytes(PNG)
    (out / "report.md").write_text("# Report\n\nBody.\n")
    append_example_maps_section(out, out / "cohort")
    report = (out / "report.md").read_text()
    section = report.split("## Example deviation maps (written at each site, never sent)", 1)[1]
    assert "| site1 | 3 | `cohort/sites/site1/example_maps/` |" in section
    assert "| site3 | 2 | `cohort/sites/site3/example_maps/` |" in section
    assert "| site2 | 0 |" in section
    assert "![" not in section and "S0_" not in section  # no patient image nor id in the report
    assert "Example deviation maps" in (out / "report.html").read_text()


def test_a_runs_copy_of_a_cohort_leaves_out_the_maps_a_site_wrote_into_the_original(tmp_path):
    """A bare `flwr run .` reads the cached cohort itself, so its sites draw into the cache's site
    folders; a later run's copy must not show those maps as its own."""
    from ndae.cohort.cache import link_cohort

    source = tmp_path / "cached"
    (source / "sites" / "site1" / "example_maps").mkdir(parents=True)
    (source / "sites" / "site1" / "manifest.csv").write_text("subject\n")
    (source / "sites" / "site1" / "example_maps" / "S1_prior_residual.png").write_bytes(PNG)
    (source / "cohort.json").write_text("{}")
    link_cohort(source, tmp_path / "copy")
    assert (tmp_path / "copy" / "sites" / "site1" / "manifest.csv").exists()
    assert not (tmp_path / "copy" / "sites" / "site1" / "example_maps").exists()
