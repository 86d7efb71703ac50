"""The pipeline-modes benchmark (`python -m benchmarks.bench_modes`), one job per module:

- `names`       the modes and scores compared (one spelling for tables, figures and prose);
- `runs`        orchestration: cohorts, one run spec per mode, the runs in worker processes;
- `evaluation`  finished runs through the project's evaluation: every mode's scores through the
                same CV folds (`ndae.survival.metrics.cross_validate_cox`) and the truth-aware
                metrics (`ndae.evaluation.truth_aware` via `benchmarks.truth_eval`), the
                pooled-vs-federated checks;
- `calibration` the normative model's calibration on held-out controls;
- `figures`     the C-vs-ε figure;
- `raw`         the raw results file (results/modes.json + the per-seed / per-fold CSVs) the
                section is rendered from, so `--render-only` rewrites it without rerunning;
- `report`      the RESULTS section: tables, and prose computed from the numbers.
"""
