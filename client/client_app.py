"""Flower ClientApp of ndae-fed: one hospital. The work is in `ndae.federation.site` (its handlers).

The site's manifest comes from the SuperNode's node config (`manifest = "/path/manifest.csv"`);
in simulation, node i reads `cohort-dir/sites/<i-th site>/manifest.csv`.
"""

from ndae.federation.site.handlers import build_client_app

app = build_client_app()
