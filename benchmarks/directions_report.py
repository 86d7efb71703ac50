"""The section of `benchmarks/bench_directions.py`: per DAE preset and disease setting, the goal of
issue 16 stated from the saved numbers (every cell's `bench_survival` raw results, <cell>.json).

Goal points, each decided here from the numbers, never typed:
1. the best single NDAE score's |ρ| with the true severity ≥ 0.6, and above every baseline's
   (the voxel-wise precentral score, and the out-of-fold risk of the voxel-wise and regional
   normative models, which have many features);
2. covariates + the best NDAE model above covariates alone and above covariates + the voxel-wise
   baseline, in risk concordance and in expected C, each paired 95 % t-interval over cohort
   seeds above 0;
3. the paper's cosine score with the expected sign (higher similarity → lower hazard) and a
   hazard-ratio CI that excludes 1, in every run.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from ndae.io import atomic_write_text

COVARIATES = "covariates | alone"
VOXELWISE_COV = "voxel-wise normative z | with covariates"
# NDAE candidates for goal 1: (model, which ρ): a single score's own, a multi-feature model's
# out-of-fold risk's (as for the multi-feature baselines)
NDAE_RHO = (("NDAE cosine | alone", "severity_spearman"), ("NDAE Mahalanobis | alone", "severity_spearman"),
            ("NDAE image mean abs z | alone", "severity_spearman"),
            ("NDAE deviation scores | alone", "risk_severity_spearman"),
            ("NDAE image-space deviation | alone", "risk_severity_spearman"))
NDAE_WITH_COV = ("NDAE cosine | with covariates", "NDAE Mahalanobis | with covariates",
                 "NDAE deviation scores | with covariates", "NDAE image mean abs z | with covariates",
                 "NDAE image-space deviation | with covariates")
# baselines' ρ: a single score's own ρ, a multi-feature model's out-of-fold risk's ρ
BASELINE_RHO = (("voxel-wise normative z precentral | alone", "severity_spearman"),
                ("voxel-wise normative z | alone", "risk_severity_spearman"),
                ("regional normative z | alone", "risk_severity_spearman"))
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
    candidates = [(name, key, rows[name]) for name, key in NDAE_RHO
                  if name in rows and isinstance(rows[name].get(key), (int, float)) and math.isfinite(rows[name][key])]
    best_name, best_key, best = max(candidates, key=lambda item: abs(item[2][item[1]]), default=(None, None, {}))
    best_rho = best.get(best_key) if best_key else None
    baselines = {name: rows[name].get(key) for name, key in BASELINE_RHO if name in rows}
    finite = [abs(v) for v in baselines.values() if isinstance(v, (int, float)) and math.isfinite(v)]
    rho_met = best_rho is not None and abs(best_rho) >= RHO_GOAL and bool(finite) and abs(best_rho) > max(finite)

    with_cov = [(name, rows[name]) for name in NDAE_WITH_COV if name in rows]
    top_name, top = max(with_cov, key=lambda item: item[1].get("expected_c") or -1.0, default=(None, {}))
    versus = top.get("versus", {})
    against = {
        "covariates": {"expected_c": versus.get(COVARIATES), "risk_concordance": (versus.get(COVARIATES) or {}).get("risk_concordance")},
        "voxel-wise + covariates": {"expected_c": versus.get(VOXELWISE_COV),
                                    "risk_concordance": (versus.get(VOXELWISE_COV) or {}).get("risk_concordance")},
    }
    gain_met = all(_above_zero(v) for pair in against.values() for v in pair.values())

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
            "oracle_expected_c": rows.get("oracle (true risk) | alone", {}).get("expected_c"),
            "against": against, "gain_met": gain_met,
            "cosine_hr": hazards, "cosine_rho": cosine_rho, "cosine_met": cosine_met,
            "cosine_expected_side": len(expected_side), "file": raw.get("_file")}


def _met(flag: bool) -> str:
    return "met" if flag else "not met"


def render(cells: list[dict]) -> str:
    lines = ["## NDAE directions: which DAE finds the disease (`benchmarks/bench_directions.py`)", ""]
    if not cells:
        return "\n".join(lines + ["No cell has finished yet (run `python -m benchmarks.bench_directions`).", ""])
    first = cells[0]
    lines += [
        f"Each cell is one `benchmarks.bench_survival` run ({first['seeds']} cohort seed(s), {first['patients']} "
        f"patients each, DAE {first['dae_steps']} steps unless the preset says `@steps`); its whole section is in `benchmarks/results/directions/`. "
        "ρ: Spearman with the true severity, mean over cohort seeds: a single score's own; for a model of many "
        "features (marked 'risk': all NDAE scores, the image-space regions, the voxel-wise and regional normative "
        "models) the ρ of its out-of-fold Cox risk. `+imageN`: with the image-space NDAE features (N DDIM steps). Paired differences: "
        "covariates + the NDAE model with the highest expected C, against covariates alone and against covariates + "
        "the voxel-wise baseline, 95 % t-interval over cohort seeds. Cosine HR: per SD of the patients' cosine, "
        "per run (cohort seed).", "",
        "| preset | disease | DAE s (per run) | best NDAE score: ρ (sd) | voxel-wise precentral ρ | voxel-wise risk ρ "
        "| regional risk ρ | goal 1 (size of ρ ≥ 0.6, above the baselines) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in cells:
        b = c["baseline_rho"]
        name = (c["best_score"] or "–").split(" | ")[0] + (" (risk)" if c.get("best_rho_kind") == "risk" else "")
        lines.append(
            f"| `{c['preset']}` | {c['disease']} | {_f(c['dae_training_s'], 0)} | {name} {_f(c['best_rho'], 2)} "
            f"({_f(c['best_rho_sd'], 2)}) | {_f(b.get(BASELINE_RHO[0][0]), 2)} | {_f(b.get(BASELINE_RHO[1][0]), 2)} | "
            f"{_f(b.get(BASELINE_RHO[2][0]), 2)} | {_met(c['rho_met'])} |")
    lines += ["", "| preset | disease | model | expected C (covariates; voxel-wise + cov.; oracle) | Δ expected C vs covariates "
              "| Δ vs voxel-wise + cov. | risk concordance (covariates) | Δ risk conc. vs covariates | Δ vs voxel-wise + cov. "
              "| goal 2 |", "|---|---|---|---|---|---|---|---|---|---|"]
    for c in cells:
        a = c["against"]
        lines.append(
            f"| `{c['preset']}` | {c['disease']} | {(c['top_with_covariates'] or '–').split(' | ')[0]} + cov. | "
            f"{_f(c['top_expected_c'])} ({_f(c['covariates_expected_c'])}; {_f(c['voxelwise_cov_expected_c'])}; "
            f"{_f(c['oracle_expected_c'])}) | {_interval(a['covariates']['expected_c'])} | "
            f"{_interval(a['voxel-wise + covariates']['expected_c'])} | {_f(c['top_risk_concordance'])} "
            f"({_f(c['covariates_risk_concordance'])}) | {_interval(a['covariates']['risk_concordance'])} | "
            f"{_interval(a['voxel-wise + covariates']['risk_concordance'])} | {_met(c['gain_met'])} |")
    lines += ["", "| preset | disease | cosine ρ with severity | cosine HR per SD (95 % CI), per run | goal 3 |", "|---|---|---|---|---|"]
    for c in cells:
        hr = "; ".join(f"{_f(h.get('hazard_ratio'), 2)} ({_f(h.get('lower_95'), 2)}–{_f(h.get('upper_95'), 2)})"
                       for h in c["cosine_hr"])
        lines.append(f"| `{c['preset']}` | {c['disease']} | {_f(c['cosine_rho'], 2)} | {hr} | "
                     f"{_met(c['cosine_met'])} ({c['cosine_expected_side']} of {len(c['cosine_hr'])} runs below 1) |")
    met = {key: [f"`{c['preset']}`/{c['disease']}" for c in cells if c[key]] for key in ("rho_met", "gain_met", "cosine_met")}
    lines += ["", "Reading (computed): " + " ".join(
        f"goal {i}: " + (f"met in {', '.join(met[key])}." if met[key] else f"met in none of the {len(cells)} cells.")
        for i, key in enumerate(("rho_met", "gain_met", "cosine_met"), start=1)), ""]
    return "\n".join(lines)


def write(folder: Path, out: Path) -> Path:
    """directions.md and directions.json (the per-cell summaries) from the cells in `folder`."""
    cells = [cell_summary(raw) for raw in load_cells(folder)]
    order = {"als": 0}
    cells.sort(key=lambda c: (order.get(c["disease"], 1), c["disease"], c["preset"]))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out.with_suffix(".json"), json.dumps(cells, indent=2, default=str) + "\n")
    atomic_write_text(out, render(cells))
    return out
