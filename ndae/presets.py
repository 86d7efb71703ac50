"""The DAE preset names (`ndae.model.config.preset` builds them), importable without torch so the
command line can list them in its help."""

PRESETS = ("tiny", "tiny-age", "tiny-native", "tiny-ventricle", "paper", "paper3d")
