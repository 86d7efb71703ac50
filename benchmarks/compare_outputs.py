"""Before/after check of a refactor: the same three in-process federations on two versions of
the code give the same files, up to timings, timestamps, fresh signing keys and the hashes and
signatures chained over ledger times.

    PYTHONPATH=OLD_CHECKOUT python -m benchmarks.compare_outputs run /tmp/cmp/runs && mv /tmp/cmp/runs /tmp/cmp/before
    PYTHONPATH=$PWD        python -m benchmarks.compare_outputs run /tmp/cmp/runs && mv /tmp/cmp/runs /tmp/cmp/after
    python -m benchmarks.compare_outputs diff /tmp/cmp/before /tmp/cmp/after

Both versions must write into the same folder (`run` with the same path, then move it): the sites
derive the run id, and with it their seeded noise, from the run folder's path. The runs: a
non-private pooled run (voxel-wise baseline, a prior feature in the Cox model, age probe, held-out
calibration), a private federated run and a private pooled run with the sites' consent, the private
ones with `insecure-reproducible-seed` so that their noise repeats.
"""

from __future__ import annotations

import difflib
import json
import re
import sys
from pathlib import Path


def run(out: Path) -> None:
    """The three runs, under `out` (with their cohort and cache)."""
    import torch

    from ndae.federation.config import FederationConfig
    from ndae.federation.inprocess import InProcessGrid
    from ndae.federation.server.phases import Federation
    from ndae.testing.synthetic_cohort import make_synthetic_cohort

    torch.set_num_threads(1)
    out.mkdir(parents=True, exist_ok=True)
    make_synthetic_cohort(out / "cohort", sites=3, controls_per_site=7, patients_per_site=6, seed=1)
    manifests = [out / "cohort" / "sites" / s / "manifest.csv" for s in ("site1", "site2", "site3")]

    def one(name, node_config=None, **settings):
        config = FederationConfig(run_dir=str(out / name), cache_dir=str(out / "cache"), rounds=1, batch_size=4,
                                  seed=3, **settings)
        lines = []
        grid = InProcessGrid(manifests, config.to_run_config(), node_config=node_config)
        Federation(grid, config, log=lines.append).run()
        (out / f"{name}.log").write_text("\n".join(lines) + "\n")

    one("open", survival_mode="pooled", survival_features="mahalanobis,z_prior_precentral", voxelwise_baseline=True,
        voxelwise_regions="precentral")
    # private: the voxel-wise baseline is asked for and refused by the server's release policy
    policy = {"privacy-dir": str(out / "private" / "privacy"), "budget-epsilon": 50.0, "max-epsilon-per-run": 50.0,
              "insecure-reproducible-seed": 7}
    one("private", node_config=policy, privacy=True, voxelwise_baseline=True)
    # private and pooled: the sites consent to pooled rows (the report's pooled-rows clause)
    consent = {**policy, "privacy-dir": str(out / "private_pooled" / "privacy"), "allow-pooled-scores": "true",
               "public-counts": "true"}
    one("private_pooled", node_config=consent, privacy=True, survival_mode="pooled", min_sites=2)


VOLATILE = re.compile(r"(time|seconds|_s$|timestamp|hash|signature|public_key|created|started|finished|duration|date)", re.I)


def _scrub(obj):
    if isinstance(obj, dict):
        return {k: ("<v>" if VOLATILE.search(k) else _scrub(v)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_scrub(v) for v in obj]
    return obj


def _lines(path: Path, roots: tuple[Path, Path]) -> list[str]:
    text = path.read_text(errors="replace")
    for root in roots:
        text = text.replace(str(root), "<ROOT>")
    if path.suffix == ".json":
        return json.dumps(_scrub(json.loads(text)), indent=1, sort_keys=True).splitlines()
    if path.suffix == ".jsonl":
        return [json.dumps(_scrub(json.loads(line)), sort_keys=True) for line in text.splitlines() if line.strip()]
    text = re.sub(r"[0-9a-f]{64}", "<hash>", text)
    text = re.sub(r"wall time: [^\n]*", "wall time: <t>", text)
    text = re.sub(r"\| (\d+) \| (\d+) \| ([^|]+) \| [0-9.]+ \|", r"| \1 | \2 | \3 | <s> |", text)  # DAE round seconds
    text = re.sub(r"elapsed [^,\n]*", "elapsed <t>", text)
    return text.splitlines()


def diff(a: Path, b: Path) -> int:
    """Print what differs between two run trees; the number of problems (0: the same outputs)."""
    files_a = {p.relative_to(a) for p in a.rglob("*") if p.is_file()}
    files_b = {p.relative_to(b) for p in b.rglob("*") if p.is_file()}
    problems = 0
    for rel in sorted(files_a ^ files_b):
        print("only in", "A" if rel in files_a else "B", rel)
        problems += 1
    checked = 0
    for rel in sorted(files_a & files_b):
        if "cache" in rel.parts or "cohort" in rel.parts:
            continue
        pa, pb = a / rel, b / rel
        if pa.suffix in (".json", ".jsonl", ".md", ".log", ".csv", ".txt"):
            checked += 1
            ta, tb = _lines(pa, (a, b)), _lines(pb, (a, b))
            if ta != tb:
                problems += 1
                print(f"DIFF {rel}:")
                print("\n".join(list(difflib.unified_diff(ta, tb, lineterm="", n=0))[:40]))
        elif pa.suffix in (".npz", ".npy", ".pt", ".png", ".nii", ".gz"):
            checked += 1
            if pa.read_bytes() != pb.read_bytes():
                print("bytes differ", rel, f"({pa.suffix})")
                problems += pa.suffix != ".pt"  # a checkpoint also stores torch's pickling details
    print(f"checked {checked} files, {problems} problem(s)")
    return problems


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "run":
        run(Path(sys.argv[2]))
    elif len(sys.argv) == 4 and sys.argv[1] == "diff":
        sys.exit(1 if diff(Path(sys.argv[2]), Path(sys.argv[3])) else 0)
    else:
        sys.exit("usage: python -m benchmarks.compare_outputs run OUT | diff BEFORE AFTER")
