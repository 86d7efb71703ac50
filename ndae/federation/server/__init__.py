"""What runs at the server: the ServerApp's phases, aggregation and the run directory it writes.

- `phases`: the `Federation` class, the phases of one run read top to bottom (site info, DAE
  rounds, normative sums, deviations and survival); `run_federation` is the ServerApp's body.
- `phase_context`: what the phases after the DAE get instead of the `Federation` (config, DAE
  config, messenger, run files, log, release policy); each returns its result for the summary.
- `release_policy`: what a private run changes at the server, asked by every phase and the
  report instead of the privacy flag (non-DP extras it does without, noised sums to project).
- `prior_residual_phase`, `voxelwise_phase`: the prior residuals' normative model and the
  voxel-wise baseline (its fit, and its Cox model beside the NDAE's).
- `preflight`: a simulation without a cohort stops before any message, naming `ndae demo`.
- `messaging`: one message round to the sites, the sites left out, the `min-sites` rule.
- `strategy`: the DAE config, the Flower strategy (FedAvg, FedAdam on the model half, FedProx)
  and its state in the checkpoint.
- `newton`: the federated Cox fit, one message round per Newton evaluation.
- `survival_phase`: phase 3 (deviations, the Cox model and the covariates-only one, what imaging adds).
- `survival`: the Cox covariates, the pooled table and fit, the `survival/` files, KM curves.
- `run_files`: `status.json`, `metrics.jsonl`, `config.json`, `summary.json`, the checkpoint.
- `report`: `report.md` (and the report of a failed run).
- `privacy`: the server's copies of each site's ledger and signed head.
- `errors`: `FederationError`, and `SimulatedKill` for the test hook.

Nothing here reads a site's rows: it sees only what the sites' handlers chose to send.
"""
