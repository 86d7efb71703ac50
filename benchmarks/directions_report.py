"""The section of `benchmarks/bench_directions.py`: per DAE preset and disease setting, whether the
NDAE finds the disease, stated from the saved numbers (every cell's `bench_survival` raw results, <cell>.json).

Goal points, each decided here from the numbers, never typed:
1. the best single NDAE score's |ρ| with the true severity ≥ 0.6, and above every baseline's
   (the precentral score and the out-of-fold risk of both voxel-wise baselines, on the raw images
   and on their within-brain high-pass, and the out-of-fold risk of the regional normative
   model; multi-feature models count by their risk);
2. covariates + the best NDAE model above covariates alone, above covariates + the voxel-wise
   baseline and above covariates + the high-pass voxel-wise baseline, in risk concordance and in
   expected C, each paired 95 % t-interval over cohort seeds above 0;
3. the paper's cosine score with the expected sign (higher similarity → lower hazard) and a
   hazard-ratio CI that excludes 1, in every run.

The NDAE candidates are every model whose name starts with "NDAE" (alone for goal 1, with
covariates for goal 2), so new NDAE scores count without a change here. A cell saved before the
high-pass voxel-wise baseline existed has no numbers for it: its columns show "–" and goals 1
and 2 are "not judged" there (unless the numbers it has already miss them: "not met").
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from ndae.io import atomic_write_text

COVARIATES = "covariates | alone"
VOXELWISE_COV = "voxel-wise normative z | with covariates"
HIGHPASS_COV = "voxel-wise normative z (high-pass) | with covariates"
NDAE_PREFIX = "NDAE"  # the NDAE candidates: every model so named (goal 1: alone; goal 2: with covariates)
ALONE, WITH = " | alone", " | with covariates"
# baselines' ρ: a single score's own ρ, a multi-feature model's out-of-fold risk's ρ
BASELINE_RHO = (("voxel-wise normative z precentral | alone", "severity_spearman"),
                ("voxel-wise normative z | alone", "risk_severity_spearman"),
                ("voxel-wise normative z (high-pass) precentral | alone", "severity_spearman"),
                ("voxel-wise normative z (high-pass) | alone", "risk_severity_spearman"),
                ("regional normative z | alone", "risk_severity_spearman"))
# goal 1 is judged only where both voxel-wise baselines have a ρ (cells saved before the
# high-pass one have none for it)
VOXELWISE_RHO = {"voxel-wise": BASELINE_RHO[0:2], "high-pass voxel-wise": BASELINE_RHO[2:4]}
# goal 2's references: what covariates + the best NDAE model must beat
GAIN_REFERENCES = {"covariates": COVARIATES, "voxel-wise + covariates": VOXELWISE_COV,
                   "high-pass voxel-wise + covariates": HIGHPASS_COV}
RHO_GOAL = 0.6


def _f(value, digits: int = 3, sign: bool = False) -> str:
    if value is None or not isinstance(value, (int, float)) or not math.isfinite(value):
        return "–"
    return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"


def _interval(entry: dict | None) -> str:
    if not entry:
        return "–"
    return f"{_f(entry.get('d'), sign=True)} [{_f(entry.get('low'), sign=True)}, {_f(entry.get('high'), sign=True)}]"


def _above_zero(entry: dict | None) -> bool:
    low = (entry or {}).get("low")
    return isinstance(low, (int, float)) and math.isfinite(low) and low > 0


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def ndae_rho_candidates(rows: dict[str, dict]) -> list[tuple[str, str, dict]]:
    """(model, which ρ, row) of every NDAE model alone with that ρ: a single score's own ρ with
    the severity, a multi-feature model's out-of-fold risk's (as for the multi-feature baselines)."""
    candidates = []
    for name, row in rows.items():
        if not (name.startswith(NDAE_PREFIX) and name.endswith(ALONE)):
            continue
        features = row.get("features")
        single = len(features) == 1 if isinstance(features, list) and features else _finite(row.get("severity_spearman"))
        key = "severity_spearman" if single else "risk_severity_spearman"
        if _finite(row.get(key)):
            candidates.append((name, key, row))
    return candidates


def load_cells(folder: Path) -> list[dict]:
    cells = []
    for path in sorted(Path(folder).glob("*.json")):
        raw = json.loads(path.read_text())
        if "truth_summary" in raw and "runs" in raw:
            raw["_file"] = path.name
            cells.append(raw)
    return cells


def cell_summary(raw: dict) -> dict:
    """The goal's three points for one (preset, disease setting) from its raw results."""
    rows = {row["model"]: row for row in raw["truth_summary"]}
    runs = raw["runs"]
    best_name, best_key, best = max(ndae_rho_candidates(rows), key=lambda item: abs(item[2][item[1]]),
                                    default=(None, None, {}))
    best_rho = best.get(best_key) if best_key else None
    baselines = {name: rows[name].get(key) for name, key in BASELINE_RHO if name in rows}
    finite = [abs(v) for v in baselines.values() if _finite(v)]
    judged = all(any(_finite(baselines.get(name)) for name, _ in group) for group in VOXELWISE_RHO.values())
    # met, not met, or None: not judged (no numbers for a voxel-wise baseline, and none missed yet)
    if best_rho is None or abs(best_rho) < RHO_GOAL or (finite and abs(best_rho) <= max(finite)):
        rho_met = False
    else:
        rho_met = True if judged else None

    with_cov = [(name, row) for name, row in rows.items() if name.startswith(NDAE_PREFIX) and name.endswith(WITH)]
    top_name, top = max(with_cov, key=lambda item: item[1].get("expected_c") or -1.0, default=(None, {}))
    versus = top.get("versus") or {}
    against = {label: {"expected_c": versus.get(reference),
                       "risk_concordance": (versus.get(reference) or {}).get("risk_concordance")}
               for label, reference in GAIN_REFERENCES.items()}
    entries = [v for pair in against.values() for v in pair.values()]
    if top_name is None or any(v is not None and not _above_zero(v) for v in entries):
        gain_met = False
    else:
        gain_met = True if all(v is not None for v in entries) else None

    hazards = [r.get("cosine_hr_per_sd") or {} for r in runs]
    expected_side = [h for h in hazards if isinstance(h.get("upper_95"), (int, float)) and h["upper_95"] < 1]
    cosine_met = bool(hazards) and len(expected_side) == len(hazards)
    cosine_rho = rows.get("NDAE cosine | alone", {}).get("severity_spearman")
    timings = [r.get("timings", {}) for r in runs]
    mean = lambda key: sum(t.get(key, 0.0) for t in timings) / max(len(timings), 1)
    image = raw.get("image_deviation_steps") or 0
    steps = runs[0].get("dae_steps") if runs else None
    label = raw["preset"] + (f"+image{image}" if image else "") + ("" if steps in (None, 200) else f"@{steps}")
    return {"preset": label, "disease": raw.get("disease", "als"),
            "seeds": len(runs),
            "patients": runs[0]["subjects"]["patients"] if runs else None, "dae_steps": runs[0].get("dae_steps") if runs else None,
            "dae_training_s": mean("dae_training_s"), "encoding_s": mean("encoding_s"), "total_s": mean("total_s"),
            "best_score": best_name, "best_rho_kind": "risk" if best_key == "risk_severity_spearman" else "score",
            "best_rho": best_rho, "best_rho_sd": best.get(f"{best_key}_seeds_sd") if best_key else None,
            "baseline_rho": baselines, "rho_met": rho_met,
            "ndae_multi_risk_rho": rows.get("NDAE deviation scores | alone", {}).get("risk_severity_spearman"),
            "top_with_covariates": top_name, "top_expected_c": top.get("expected_c"),
            "top_risk_concordance": top.get("risk_concordance"),
            "covariates_expected_c": rows.get(COVARIATES, {}).get("expected_c"),
            "covariates_risk_concordance": rows.get(COVARIATES, {}).get("risk_concordance"),
            "voxelwise_cov_expected_c": rows.get(VOXELWISE_COV, {}).get("expected_c"),
            "voxelwise_cov_risk_concordance": rows.get(VOXELWISE_COV, {}).get("risk_concordance"),
            "highpass_cov_expected_c": rows.get(HIGHPASS_COV, {}).get("expected_c"),
            "highpass_cov_risk_concordance": rows.get(HIGHPASS_COV, {}).get("risk_concordance"),
            "oracle_expected_c": rows.get("oracle (true risk) | alone", {}).get("expected_c"),
            "against": against, "gain_met": gain_met,
            "cosine_hr": hazards, "cosine_rho": cosine_rho, "cosine_met": cosine_met,
            "cosine_expected_side": len(expected_side), "file": raw.get("_file")}


def _met(flag: bool | None) -> str:
    return "not judged" if flag is None else "met" if flag else "not met"


ARCHIVE_NOTE = {
    "directions_old_sampler": ("## NDAE directions before the sampler and cosine fixes (old sampler, centred cosine; "
                               "kept for comparison)",
                               "These cells were measured with the DDIM sampler that kept the network's ε after "
                               "clamping x̂₀ and never clipped the inversion, and with the cosine computed on centred "
                               "latents (both since found wrong: docs/dae.md); they are not re-run. The current cells "
                               "are in 'NDAE directions'."),
}


def render(cells: list[dict], archive: str | None = None) -> str:
    title, note = ARCHIVE_NOTE.get(archive, ("## NDAE directions: which DAE finds the disease "
                                             "(`benchmarks/bench_directions.py`)", None))
    lines = [title, ""] + ([note, ""] if note else [])
    if not cells:
        return "\n".join(lines + ["No cell has finished yet (run `python -m benchmarks.bench_directions`).", ""])
    first = cells[0]
    lines += [
        f"Each cell is one `benchmarks.bench_survival` run ({first['seeds']} cohort seed(s), {first['patients']} "
        f"patients each, DAE {first['dae_steps']} steps unless the preset says `@steps`); its whole section is in `benchmarks/results/{archive or 'directions'}/`. Cells of one preset and step count share the DAE of a cohort seed across disease settings where it was run with `--share-dae` (the controls are byte-identical, so the DAE is the same network): their 'DAE s' is the resume's, not a training's. "
        "ρ: Spearman with the true severity, mean over cohort seeds: a single score's own; for a model of many "
        "features (marked 'risk': all NDAE scores, the image-space regions, the voxel-wise and regional normative "
        "models) the ρ of its out-of-fold Cox risk. `+imageN`: with the image-space NDAE features (N DDIM steps). "
        "High-pass: the voxel-wise baseline on each image minus its within-brain Gaussian blur (σ 8 mm), so that a "
        "gain that is only spatial filtering shows. Paired differences: covariates + the NDAE model with the highest "
        "expected C, against covariates alone, covariates + the voxel-wise baseline and covariates + the high-pass "
        "voxel-wise baseline, 95 % t-interval over cohort seeds. '–': not in the cell's saved numbers (cells saved "
        "before the high-pass baseline: goals 1 and 2 'not judged' unless already missed). Cosine HR: per SD of the "
        "patients' cosine, per run (cohort seed).", "",
        "| preset | disease | DAE s (per run) | best NDAE score: ρ (sd) | voxel-wise precentral ρ | voxel-wise risk ρ "
        "| high-pass precentral ρ | high-pass risk ρ | regional risk ρ | goal 1 (size of ρ ≥ 0.6, above the baselines) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in cells:
        b = c["baseline_rho"]
        name = (c["best_score"] or "–").split(" | ")[0] + (" (risk)" if c.get("best_rho_kind") == "risk" else "")
        lines.append(
            f"| `{c['preset']}` | {c['disease']} | {_f(c['dae_training_s'], 0)} | {name} {_f(c['best_rho'], 2)} "
            f"({_f(c['best_rho_sd'], 2)}) | "
            + " | ".join(_f(b.get(name), 2) for name, _ in BASELINE_RHO) + f" | {_met(c['rho_met'])} |")
    lines += ["", "| preset | disease | model | expected C (covariates; voxel-wise + cov.; high-pass + cov.; oracle) "
              "| Δ expected C vs covariates | Δ vs voxel-wise + cov. | Δ vs high-pass + cov. | risk concordance (covariates) "
              "| Δ risk conc. vs covariates | Δ vs voxel-wise + cov. | Δ vs high-pass + cov. | goal 2 |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in cells:
        a = {label: c["against"].get(label) or {} for label in GAIN_REFERENCES}
        lines.append(
            f"| `{c['preset']}` | {c['disease']} | {(c['top_with_covariates'] or '–').split(' | ')[0]} + cov. | "
            f"{_f(c['top_expected_c'])} ({_f(c['covariates_expected_c'])}; {_f(c['voxelwise_cov_expected_c'])}; "
            f"{_f(c.get('highpass_cov_expected_c'))}; {_f(c['oracle_expected_c'])}) | "
            + " | ".join(_interval(a[label].get("expected_c")) for label in GAIN_REFERENCES)
            + f" | {_f(c['top_risk_concordance'])} ({_f(c['covariates_risk_concordance'])}) | "
            + " | ".join(_interval(a[label].get("risk_concordance")) for label in GAIN_REFERENCES)
            + f" | {_met(c['gain_met'])} |")
    lines += ["", "| preset | disease | cosine ρ with severity | cosine HR per SD (95 % CI), per run | goal 3 |", "|---|---|---|---|---|"]
    for c in cells:
        hr = "; ".join(f"{_f(h.get('hazard_ratio'), 2)} ({_f(h.get('lower_95'), 2)}–{_f(h.get('upper_95'), 2)})"
                       for h in c["cosine_hr"])
        lines.append(f"| `{c['preset']}` | {c['disease']} | {_f(c['cosine_rho'], 2)} | {hr} | "
                     f"{_met(c['cosine_met'])} ({c['cosine_expected_side']} of {len(c['cosine_hr'])} runs below 1) |")
    met = {key: [f"`{c['preset']}`/{c['disease']}" for c in cells if c[key]] for key in ("rho_met", "gain_met", "cosine_met")}
    unjudged = {key: [f"`{c['preset']}`/{c['disease']}" for c in cells if c[key] is None] for key in ("rho_met", "gain_met")}
    reading = "Reading (computed): " + " ".join(
        f"goal {i}: " + (f"met in {', '.join(met[key])}." if met[key] else f"met in none of the {len(cells)} cells.")
        + (f" Not judged in {', '.join(unjudged[key])} (a voxel-wise baseline has no numbers there)." if unjudged.get(key) else "")
        for i, key in enumerate(("rho_met", "gain_met", "cosine_met"), start=1))
    best = [abs(c["best_rho"]) for c in cells if c.get("best_rho") is not None]
    if best:
        reading += f" Best NDAE |ρ| with severity per cell: {min(best):.2f}–{max(best):.2f}."
    # the verdict opens the section (after its title and any archive note), the tables follow
    head = 4 if note else 2
    return "\n".join(lines[:head] + [reading, ""] + lines[head:] + [""])


def write(folder: Path, out: Path) -> Path:
    """directions.md and directions.json (the per-cell summaries) from the cells in `folder`
    (an archived folder, `ARCHIVE_NOTE`, renders under its own title)."""
    cells = [cell_summary(raw) for raw in load_cells(folder)]
    order = {"als": 0}
    cells.sort(key=lambda c: (order.get(c["disease"], 1), c["disease"], c["preset"]))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out.with_suffix(".json"), json.dumps(cells, indent=2, default=str) + "\n")
    atomic_write_text(out, render(cells, Path(folder).name))
    return out
