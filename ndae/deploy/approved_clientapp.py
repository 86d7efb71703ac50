"""Site-side launch wrapper for `flwr-clientapp`: run only app bundles the site approved.

Flower 1.42 has no allow-list by bundle hash (`--trusted-entities` accepts only bundles signed
through Flower Hub; a bundle sent with `flwr run .` carries no signature), so the check lives
here, in the process the SuperNode starts for every task, and not in the app being checked.

How it hooks in: the SuperNode starts `flower-superexec`, which starts `flwr-clientapp` by name
from PATH. `deploy/bin/flwr-clientapp` (first on the SuperNode's PATH, set by
`deploy/start-supernode.sh`) runs this module. Inside Flower's `run_clientapp` the bundle is
known after `pull_task_input` and is handed to `install_from_fab(fab.content, ...)` before any of
its code is unpacked or imported; we replace that one call with a version that first compares
`sha256(fab.content)` with the site's approved list (`ndae site approve HASH --site-dir DIR`).
A refusal is raised inside Flower's task `try`, so the server receives a reply with error code
CLIENT_APP_RAISED_EXCEPTION whose reason carries our message.

Fails closed: no site folder configured, an unreadable approved list, or a Flower version
without the expected hook all refuse the task.

Environment: NDAE_SITE_DIR (required: the folder holding approved_apps.json),
NDAE_SITE_NAME (optional: the name shown in messages; default: the folder's name).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from ndae.federation.site.app_approval import AppNotApprovedError, ApprovedApps, fab_hash

SITE_DIR_ENV = "NDAE_SITE_DIR"
SITE_NAME_ENV = "NDAE_SITE_NAME"


def check_app_bundle(fab_content: bytes, environ: dict | None = None) -> str:
    """Return the bundle's sha256 if this site approved it; raise AppNotApprovedError otherwise."""
    environ = os.environ if environ is None else environ
    site_dir = environ.get(SITE_DIR_ENV, "")
    app_hash = fab_hash(fab_content)
    if not site_dir:
        raise AppNotApprovedError(
            f"this SuperNode has no site folder configured ({SITE_DIR_ENV} is unset), so no app "
            f"is approved; refusing app {app_hash}")
    site = environ.get(SITE_NAME_ENV) or Path(site_dir).name
    if not ApprovedApps(site_dir).is_approved(app_hash):
        raise AppNotApprovedError(
            f"site {site} has not approved app {app_hash}; approve with: "
            f"ndae site approve {app_hash} --site-dir {site_dir}")
    return app_hash


def install_hook():
    """Replace `install_from_fab` as seen by Flower's ClientApp runner with a checking version."""
    from flwr.supernode.runtime import run_clientapp as runner

    original = getattr(runner, "install_from_fab", None)
    if original is None or not callable(getattr(runner, "run_clientapp", None)):
        raise RuntimeError(
            "ndae site control: this Flower version has no `install_from_fab` hook in "
            "flwr.supernode.runtime.run_clientapp; refusing to run unchecked apps (pin flwr 1.42)")
    if getattr(original, "_ndae_checked", False):
        return original

    def install_if_approved(fab_content, *args, **kwargs):
        app_hash = check_app_bundle(fab_content)
        print(f"ndae site control: app {app_hash} is approved for this site", file=sys.stderr)
        return original(fab_content, *args, **kwargs)

    install_if_approved._ndae_checked = True
    runner.install_from_fab = install_if_approved
    return install_if_approved


def _flower_clientapp_command():
    """Flower's own `flwr_clientapp` entry point, read from its module file without running its
    package's `__init__`: that imports the SuperNode's server side (its SQL object store through
    sqlalchemy), which a ClientApp process never uses and which is paid on every message at every
    site (measured: benchmarks/RESULTS.md, "A site's ClientApp process per message"). Falls back to the
    plain import where the file is not where flwr 1.42 keeps it."""
    import importlib.util

    import flwr.supernode

    path = Path(flwr.supernode.__file__).parent / "cli" / "flwr_clientapp.py"
    spec = importlib.util.spec_from_file_location("flwr.supernode.cli.flwr_clientapp", path) if path.is_file() else None
    if spec is None or spec.loader is None:
        from flwr.supernode.cli.flwr_clientapp import flwr_clientapp

        return flwr_clientapp
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    from flwr.supernode.runtime import run_clientapp as runner

    if module.__dict__.get("run_clientapp") is not runner.run_clientapp:  # fail closed: the hooked runner only
        raise RuntimeError("ndae site control: Flower's flwr_clientapp does not call the runner whose "
                           "install_from_fab is checked; refusing to run unchecked apps (pin flwr 1.42)")
    return module.flwr_clientapp


def main() -> None:
    install_hook()
    _flower_clientapp_command()()


if __name__ == "__main__":
    main()
