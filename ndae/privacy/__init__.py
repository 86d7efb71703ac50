"""Privacy mechanisms, accounting and audits, called by the site and by the auditor.

- `ledger`: hash-chained `privacy/<site>.jsonl`, one line per release; `verify_ledger`.
- `accountant`: `SiteAccountant` (epsilon of every release ever made, rebuilt from the ledger),
  `PrivacyEvent`, `spend_if_within`; `delta`: the default delta and its check.
- `gaussian_mechanism`: sensitivities, row clipping, Gaussian noise, `NoisyStatistics`.
- `dp_moments`: the site's release of the normative sufficient statistics (`private_moments`);
  `moments_postprocessing`: what the server does with the summed noisy release.
- `opacus_training`: `make_private` for a DP-SGD round that continues the site's history;
  `dp_sgd_loop`: the one DP-SGD loop; `randomness`: the site's CSPRNG-seeded draws.
- `signing`: ledger-head signatures; `head_signatures`: which key checks a head.
- `audit`: `audit_run` (chains, signatures, independent epsilon, budgets).
- `attack`: the attack score of a trained DAE; `empirical`: the membership test and its epsilon
  lower bound; `canaries` + `canary_audit`: one-run auditing with canaries.

Submodules are imported on use (torch and opacus are heavy).
"""
