"""The command line's help lists what the code accepts, read from the registries, not typed."""

from __future__ import annotations

import pytest

from ndae.cli import main
from ndae.presets import PRESETS


@pytest.mark.parametrize("command", ["evaluate", "train"])
def test_config_help_names_every_preset(command, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "1000")  # argparse wraps at hyphens ("tiny-" / "ventricle")
    with pytest.raises(SystemExit):
        main([command, "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    for name in PRESETS:
        assert f"{name}," in help_text or f"{name} (" in help_text, name


def test_every_listed_preset_builds():
    from ndae.model.config import preset

    assert [preset(name).name for name in PRESETS] == list(PRESETS)
