"""What runs at a hospital: the ClientApp's Flower handlers and everything that touches a site's rows.

- `handlers`: the Flower message handlers (`client/client_app.py` registers them); they compute.
- `releases`: the release table and the layer wrapping every handler: what of a reply leaves the site.
- `policy`: the site's privacy policy from its node config (the law that the run config may only tighten).
- `privacy`: the site's privacy state (policy limits, ledger, signed head) and its declared releases.
- `private_releases`: the two releases that spend ε (DP-SGD rounds, noised moments).
- the site's task (what the handlers call): `data` (the site's manifest, cache and slices),
  `training` (a local DAE round) and `statistics` (sufficient statistics, deviation scores, Cox
  terms, the risk summary).
- `app_approval`: the list of Flower app bundles the site's SuperNode may run.
"""
