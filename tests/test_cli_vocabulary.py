"""One spelling per thing on the command line: `--preset` for the DAE preset (the run config's
`dae-preset`), `--run` for a run folder; old spellings kept as aliases, the deprecated ones
saying so in one line."""

from __future__ import annotations

import pytest

from ndae.cli import build_parser, main


def _subparser(name: str):
    parser = build_parser()
    return next(action for action in parser._subparsers._group_actions if action.choices)._name_parser_map[name]


TRAIN = ["train", "--manifest", "m.csv", "--out", "run"]
EVALUATE = ["evaluate", "--manifest", "m.csv", "--out", "out"]


@pytest.mark.parametrize("command", [TRAIN, EVALUATE])
def test_preset_is_the_spelling_and_the_default_stays_tiny(command, capsys):
    assert build_parser().parse_args(command).config == "tiny"
    assert build_parser().parse_args([*command, "--preset", "tiny-age"]).config == "tiny-age"
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("command", [TRAIN, EVALUATE])
def test_config_still_works_and_prints_one_deprecation_line(command, capsys):
    assert build_parser().parse_args([*command, "--config", "tiny-age"]).config == "tiny-age"
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--config" in err and "deprecated" in err and "--preset" in err


@pytest.mark.parametrize("command", ["train", "evaluate"])
def test_help_shows_preset_not_the_deprecated_spelling(command, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "1000")
    with pytest.raises(SystemExit):
        main([command, "--help"])
    out = capsys.readouterr().out
    assert "--preset PRESET" in out and "--config" not in out


def test_audit_takes_the_run_folder_as_run_or_positional(tmp_path, capsys):
    from ndae.io import atomic_write_json

    atomic_write_json(tmp_path / "config.json", {"federation": {"privacy": False}, "sites": {"a": {}}})
    assert main(["audit", "--run", str(tmp_path)]) == 0  # a run that says it is not private: exit 0
    by_flag = capsys.readouterr().out
    assert main(["audit", str(tmp_path)]) == 0
    assert capsys.readouterr().out == by_flag
    assert by_flag.startswith("NOT PRIVATE")


def test_audit_refuses_no_run_folder_and_two_different_ones(tmp_path, capsys):
    assert main(["audit"]) == 1
    assert "--run" in capsys.readouterr().err
    other = tmp_path / "other"
    other.mkdir()
    assert main(["audit", str(tmp_path), "--run", str(other)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "two run folders" in err


def test_demo_offers_the_choices_the_run_config_defines():
    from ndae.federation import config

    actions = {action.dest: action for action in _subparser("demo")._actions}
    assert actions["strategy"].choices is config.STRATEGIES
    assert actions["survival_mode"].choices is config.SURVIVAL_MODES
