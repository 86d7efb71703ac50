"""The run directory's bookkeeping files: `status.json`, `metrics.jsonl`, `config.json`,
`summary.json` and the DAE checkpoint a restarted server resumes from.

Every file is written atomically (`ndae.io`), so a server killed mid-write leaves the previous
version, never half a file.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from ndae.io import atomic_write_json, atomic_write_text, finite_or_null

__all__ = ["CHECKPOINT", "RunFiles"]

CHECKPOINT = Path("dae") / "checkpoint.pt"


class RunFiles:
    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.checkpoint = self.run_dir / CHECKPOINT

    # ---- status.json, config.json, summary.json ---------------------------------------------
    def write_status(self, status: str, missing: list[dict], error: str | None = None) -> None:
        atomic_write_json(self.run_dir / "status.json", {"status": status, "error": error, "time": time.time(),
                                                         "missing": missing})

    def write_config(self, config: dict) -> None:
        atomic_write_json(self.run_dir / "config.json", config)

    def write_summary(self, summary: dict) -> None:
        atomic_write_json(self.run_dir / "summary.json", summary)

    # ---- metrics.jsonl: one line per DAE round and per later phase ---------------------------
    def metrics(self) -> list[dict]:
        path = self.run_dir / "metrics.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []

    def append_metrics(self, entry: dict) -> None:
        self._write_metrics(self.metrics() + [finite_or_null({"time": round(time.time(), 3), **entry})])

    def truncate_metrics(self, last_round: int) -> None:
        """Keep the DAE rounds up to `last_round` (what the checkpoint holds); a resumed run
        writes the later rounds and phases again."""
        self._write_metrics([x for x in self.metrics() if x.get("phase") == "dae" and x.get("round", 0) <= last_round])

    def _write_metrics(self, lines: list[dict]) -> None:
        atomic_write_text(self.run_dir / "metrics.jsonl", "".join(json.dumps(x, sort_keys=True) + "\n" for x in lines))

    # ---- dae/checkpoint.pt -------------------------------------------------------------------
    def save_checkpoint(self, model, ema, optimizer, global_step: int, federation: dict) -> None:
        """The global DAE (+ EMA) and, under `extra["federation"]`, what resuming needs (round,
        step, strategy state, participation, missing sites)."""
        from ndae.model import save_checkpoint

        save_checkpoint(self.checkpoint, model, ema, optimizer, global_step, extra={"federation": federation})

    def load_checkpoint(self):
        """(the saved `Checkpoint`, its `federation` extra), or None if there is none yet."""
        if not self.checkpoint.exists():
            return None
        from ndae.model import load_checkpoint

        saved = load_checkpoint(self.checkpoint)
        return saved, saved.extra.get("federation", {})
