"""Deployment helpers: consortium credentials (`pki`), the site-control launch wrapper
(`approved_clientapp`) and a whole consortium on 127.0.0.1 (`loopback`). See deploy/README.md."""
