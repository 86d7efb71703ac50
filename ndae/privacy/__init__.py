"""Privacy for the site-side steps: ledger, accountant, DP mechanisms, audit, app approval.

- `ledger`: hash-chained `privacy/<site>.jsonl`, one line per release; `verify_ledger`.
- `accountant`: `SiteAccountant` (epsilon of every release ever made, rebuilt from the ledger),
  `PrivacyEvent`, `spend_if_within`.
- `dp_moments`: clipping + Gaussian noise on the normative sufficient statistics.
- `opacus_training`: `make_private` for a DP-SGD round that continues the site's history.
- `audit`: `audit_run` (chains, independent epsilon, budgets), `empirical_epsilon_lower_bound`.
- `site_policy`: the site's approved Flower app hashes.

Submodules are imported on use (torch and opacus are heavy).
"""
