"""The matplotlib Figures a module saves (through its `atomic_save_figure`), kept by file name so a
test can read their axes, labels and legends."""

from __future__ import annotations


def capture_figures(monkeypatch, module) -> dict:
    saved = {}
    original = module.atomic_save_figure

    def capture(path, figure, **kwargs):
        saved[str(path).rsplit("/", 1)[-1]] = figure
        original(path, figure, **kwargs)

    monkeypatch.setattr(module, "atomic_save_figure", capture)
    return saved
