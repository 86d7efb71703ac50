"""Fixtures for the test suite and the benchmarks — not the product.

Nothing in `ndae`, `client/`, `server/` or `deploy/` imports this package; a site or a server
never runs it. It lives in the library (not under `tests/`) only because `benchmarks/` use the
same fixtures as the tests:

- `synthetic_cohort`: a small multi-site cohort already on the output grid, to exercise the
  federation plumbing (`make_synthetic_cohort`).
- `toy_cohort`: a tiny ALS cohort of ellipsoid brains with known severity and survival, for
  `ndae evaluate` and the baselines (`write_toy_cohort`, `toy_subject`).
- `site_world`: one site with an untrained DAE and a random normative model (`untrained_site`), for the
  tests of what a single site answers.
- `signal_check`: does the NDAE chain carry the disease on such a cohort (`ndae_signal`): the
  test that fails on a chain without signal and the benchmark that sets its threshold.

Survival-only simulations with a known Cox truth are in `tests/survival_simulation.py`.
"""
