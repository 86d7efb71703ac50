"""One-run canary audit (Steinke, Nasr & Jagielski 2023) of federated DAE training, private or not.

Each site adds `--canaries` synthetic canary images to its training controls, each included with
probability 1/2 by the site's secret coin flips (run config `audit-canaries`); after the run,
`ndae audit RUN --canaries` scores every canary with the global DAE and turns the correct
in/out guesses into a 95 %-confidence lower bound on ε. The same schedule runs without DP and
under DP-SGD at the chosen ε, in parallel processes. Two scenarios:

- `federated`: a small federation (2 sites, FedAvg), the setting the product runs in;
- `stress`: one site with many canaries and many epochs, the worst case for memorisation, where
  a non-private DAE should be caught and a private one must not exceed its accounted ε.

Each scenario's numbers go to results/canaries_<scenario>.json; results/canaries.md is rendered
from every scenario measured so far, so one scenario can be re-run alone.

    python -m benchmarks.bench_canaries --scenario federated   # 2 sites × 12 controls, m = 64, 8 × 10 epochs
    python -m benchmarks.bench_canaries --scenario stress      # 1 site × 12 controls, m = 128, 1 × 150 epochs
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from benchmarks.common import RESULTS_DIR, machine_description, write_section
from ndae.io import atomic_write_json
from ndae.privacy.canary_audit import canary_results

SCENARIOS = {
    "federated": {"sites": 2, "controls": 12, "canaries": 64, "rounds": 8, "local_epochs": 10},
    "stress": {"sites": 1, "controls": 12, "canaries": 128, "rounds": 1, "local_epochs": 150},
}


def one_run(root: str, epsilon: float, args: dict) -> dict:
    import torch

    from ndae.federation.config import FederationConfig
    from ndae.federation.inprocess import InProcessGrid
    from ndae.federation.server.phases import run_federation
    from ndae.privacy.canary_audit import canary_audit_run

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    root = Path(root)
    run_dir = root / ("eps-inf" if math.isinf(epsilon) else f"eps-{epsilon:g}")
    settings = dict(run_dir=str(run_dir), cache_dir=str(root / "cache"), rounds=args["rounds"],
                    local_epochs=args["local_epochs"], batch_size=8, seed=args["seed"], survival_mode="federated",
                    resume=False, audit_canaries=args["canaries"],
                    min_sites=min(2, args["sites"]))
    if math.isfinite(epsilon):
        settings.update(privacy=True, target_epsilon=epsilon, budget_epsilon=epsilon,
                        moments_noise_multiplier=max(2.0, 10.0 / epsilon))
    config = FederationConfig(**settings)
    status = run_dir / "status.json"
    if status.exists() and json.loads(status.read_text())["status"] == "completed" and \
            json.loads((run_dir / "config.json").read_text())["federation"].get("audit-canaries") == args["canaries"]:
        summary = json.loads((run_dir / "summary.json").read_text())  # --work kept a finished run: audit it again
        from ndae.federation.server.privacy import load_heads

        summary["privacy"] = load_heads(run_dir)
        seconds = summary["timings"]["total_s"]
    else:
        manifests = sorted((root / "cohort" / "sites").glob("*/manifest.csv"))
        started = time.perf_counter()
        # Each site keeps its ledger and canary record in the run folder (its node config), where the audit reads them.
        grid = InProcessGrid(manifests, config.to_run_config(), node_config={"privacy-dir": str(run_dir / "privacy")})
        summary = run_federation(grid, config, log=lambda _: None)
        seconds = time.perf_counter() - started
    audits = {weights: canary_audit_run(run_dir, weights=weights, write=False) for weights in ("model", "ema")}
    return {"epsilon": epsilon, "seconds": seconds, "audits": audits,
            "accounted": max((h["epsilon"] for h in summary.get("privacy", {}).values()), default=math.inf)}


def _rows(scenario: dict) -> list[str]:
    lines = []
    for result in scenario["results"]:
        epsilon = math.inf if result["epsilon"] is None else result["epsilon"]
        label = "no DP" if math.isinf(epsilon) else f"DP-SGD, target ε = {epsilon:g}"
        for weights, audit in result["audits"].items():
            for site, r in canary_results(audit):
                accounted = math.inf if r["epsilon_accounted"] is None else r["epsilon_accounted"]
                lines.append(f"| {label} | {weights} | {site} | {'∞' if math.isinf(accounted) else f'{accounted:.2f}'} | "
                             f"{r['canaries']} ({r['included']}) | {r['auc']:.3f} | {r['correct']} / {r['guesses']} | "
                             f"{r['epsilon_lower_bound']:.2f} | {result['seconds']:.0f} |")
    return lines


def render() -> Path:
    lines = ["Each site adds m canaries (blocky mirror-symmetric uniform noise, `ndae.privacy.canaries`), each included "
             "with probability 1/2 by the site's own coin flips; FedAvg of the tiny DAE, batch 8 (Poisson rate 8/n "
             "under DP). Audit (`ndae audit RUN --canaries`): −denoising loss of the global DAE at 32 fixed (t, noise) "
             "draws with t in [0.02, 0.2]·T; the auditor guesses 'in' for the top k and 'out' for the bottom k scores "
             "(k = m/16, m/8, m/4, m/2, Bonferroni over the four); ε lower bound at 95 % confidence, δ = the site's "
             "ledger δ (1e-5 without DP). Synthetic cohort (`ndae.testing.synthetic_cohort`).", ""]
    for name in SCENARIOS:
        path = RESULTS_DIR / f"canaries_{name}.json"
        if not path.exists():
            continue
        scenario = json.loads(path.read_text())
        s = scenario["settings"]
        lines += [f"### Scenario `{name}`: {s['sites']} site(s) × {s['controls']} controls, m = {s['canaries']} canaries "
                  f"per site, {s['rounds']} round(s) × {s['local_epochs']} local epochs (each included canary seen "
                  f"about {s['rounds'] * s['local_epochs']} times)", "",
                  f"*Measured:* {scenario['date']} on {scenario['machine']}; `{scenario['command']}`; "
                  f"{scenario['wall_seconds'] / 60:.1f} min wall, runs in parallel processes.", "",
                  "| run | weights | site | accounted ε | canaries (in) | AUC | correct / guesses | ε lower bound | run s |",
                  "|---|---|---|---|---|---|---|---|---|", *_rows(scenario), ""]
    lines += ["A lower bound holds with 95 % confidence whatever the model: under DP it must stay below the accounted ε "
              "(`ndae audit --canaries` fails the run otherwise). How far above 0 the non-private run gets measures how "
              "much the DAE memorised in this many passes; a bound of 0 never proves privacy. With m canaries the bound "
              "cannot exceed about 2.3 (m = 32) to 3.5 (m = 200) even with every guess right."]
    return write_section("canaries", "One-run canary audit: empirical vs accounted ε", "\n".join(lines))


def main() -> None:
    import datetime

    from ndae.io import finite_or_null

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", choices=sorted(SCENARIOS), default="federated")
    parser.add_argument("--canaries", type=int, default=None, help="canaries per site (scenario default)")
    parser.add_argument("--sites", type=int, default=None)
    parser.add_argument("--controls", type=int, default=None, help="controls per site")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--local-epochs", type=int, default=None)
    parser.add_argument("--epsilons", type=float, nargs="+", default=[math.inf, 8.0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", default=None, help="keep the runs here (default: a temporary folder)")
    parser.add_argument("--render-only", action="store_true", help="rewrite canaries.md from the saved scenarios")
    args = parser.parse_args()
    if args.render_only:
        print(render().read_text())
        return
    from ndae.testing.synthetic_cohort import make_synthetic_cohort

    settings = dict(SCENARIOS[args.scenario])
    for key in settings:
        if getattr(args, key) is not None:
            settings[key] = getattr(args, key)
    settings["seed"] = args.seed
    with tempfile.TemporaryDirectory(prefix="ndae-bench-canaries-") as scratch:
        root = Path(args.work or scratch)
        if not (root / "cohort" / "manifest.csv").exists():
            make_synthetic_cohort(root / "cohort", sites=settings["sites"], controls_per_site=settings["controls"],
                                  patients_per_site=10, seed=args.seed)
        started = time.perf_counter()
        with ProcessPoolExecutor(max_workers=min(2, len(args.epsilons))) as pool:
            results = list(pool.map(one_run, [str(root)] * len(args.epsilons), args.epsilons,
                                    [settings] * len(args.epsilons)))
        wall = time.perf_counter() - started
    atomic_write_json(RESULTS_DIR / f"canaries_{args.scenario}.json", finite_or_null({
        "settings": settings, "results": results, "wall_seconds": wall, "machine": machine_description(),
        "command": "python -m benchmarks." + " ".join([Path(sys.argv[0]).stem, *sys.argv[1:]]),
        "date": f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC"}))
    print(render().read_text())


if __name__ == "__main__":
    main()
