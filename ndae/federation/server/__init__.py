"""What runs at the server: the ServerApp's phases, aggregation and the run directory it writes.

- `phases`: the phases of one run (site info, FedAvg rounds, normative sums, deviations, survival).
- `privacy`: the server's copies of each site's ledger and signed head.
- `report`: survival outputs and `report.md`.

Nothing here reads a site's rows: it sees only what the sites' handlers chose to send.
"""
