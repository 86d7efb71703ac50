"""The README's one set-up command, `bash run.sh`: what a first-time user sees while it installs."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_the_install_step_shows_pips_progress_not_minutes_of_silence(tmp_path):
    """A stand-in python records how run.sh calls pip: the project's install must not be --quiet
    (a 2.5-minute silent install reads as a hang), and run.sh must announce it first."""
    log = tmp_path / "calls.log"
    fake = tmp_path / "python3"
    venv = tmp_path / "venv"
    # `python3 -m venv DIR` makes DIR/bin/python (this same stand-in); pip calls are logged.
    fake.write_text(f"""#!/usr/bin/env bash
echo "$@" >> {log}
if [ "$1" = "-m" ] && [ "$2" = "venv" ]; then mkdir -p "$3/bin"; cp "$0" "$3/bin/python"; fi
if [ "$1" = "-m" ] && [ "$2" = "pip" ] && [ "$3" = "install" ] && [ "$4" = "-e" ]; then
  printf '#!/usr/bin/env bash\\necho ndae-ran "$@"\\n' > "{venv}/bin/ndae"; chmod +x "{venv}/bin/ndae"; fi
""")
    fake.chmod(0o755)
    env = {**os.environ, "PYTHON": str(fake), "NDAE_VENV": str(venv)}
    done = subprocess.run(["bash", str(REPO / "run.sh"), "demo", "--help"], env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "== installing ndae-fed" in done.stdout and "ndae-ran demo --help" in done.stdout
    project_install = [line for line in log.read_text().splitlines() if line.startswith("-m pip install") and "-e" in line]
    assert project_install and not any("--quiet" in line or " -q" in line for line in project_install), project_install
