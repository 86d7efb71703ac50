"""What runs at a hospital: the ClientApp's Flower handlers and everything that touches a site's rows.

- `handlers`: the Flower message handlers (`client/client_app.py` registers them).
- `policy`: the site's privacy policy from its node config (the law that the run config may only tighten).
- `privacy`: the site's private releases (DP-SGD rounds, noised moments, declared releases, its ledger).
- `task`: the site's computations: local training, sufficient statistics, deviation scores, Cox terms.
- `app_approval`: the list of Flower app bundles the site's SuperNode may run.
"""
