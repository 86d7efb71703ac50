"""`bash run.sh test` runs two pytest-xdist workers with `--dist loadgroup`: the grouping in
tests/conftest.py must keep a module's tests, and the modules sharing an expensive session
fixture, on one worker, or module fixtures (the TLS deployment, a trained DAE) run twice at once."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

CONFTEST = Path(__file__).with_name("conftest.py")

SHARED = '''

@pytest.fixture(scope="session")
def shared(tmp_path_factory):
    with open(os.environ["GROUPS_LOG"] + ".fixture", "a") as log:
        log.write("made\\n")
    return 1


@pytest.fixture(scope="module")
def per_module(request):
    with open(os.environ["GROUPS_LOG"] + ".module", "a") as log:
        log.write(request.module.__name__ + "\\n")
    return 1
'''

MODULE = '''
import os
import pytest


@pytest.mark.parametrize("i", range(4))
def test_where({fixtures}, i):
    with open(os.environ["GROUPS_LOG"], "a") as log:
        log.write(__name__ + " " + os.environ["PYTEST_XDIST_WORKER"] + "\\n")
'''


def test_a_module_and_the_modules_sharing_its_session_fixture_run_on_one_worker(tmp_path):
    section = CONFTEST.read_text().split("# ---- two workers", 1)[1]
    package = tmp_path / "tests"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "conftest.py").write_text("import os\n\nimport pytest\n" + SHARED + "\n# ---- two workers" + section)
    for name, fixtures in (("test_a", "shared, per_module"), ("test_b", "shared, per_module"),
                           ("test_c", "per_module"), ("test_d", "per_module")):
        (package / f"{name}.py").write_text(MODULE.format(fixtures=fixtures))
    log = tmp_path / "groups.log"
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "2", "--dist", "loadgroup",
                           "--no-loadscope-reorder", "tests"], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={**__import__("os").environ, "GROUPS_LOG": str(log)})
    assert done.returncode == 0, done.stdout + done.stderr
    workers: dict[str, set[str]] = {}
    for line in log.read_text().splitlines():
        module, worker = line.split()
        workers.setdefault(module, set()).add(worker)
    assert sorted(workers) == ["tests.test_a", "tests.test_b", "tests.test_c", "tests.test_d"]
    assert all(len(w) == 1 for w in workers.values()), workers  # a module on one worker
    assert workers["tests.test_a"] == workers["tests.test_b"], workers  # they share `shared`
    assert (tmp_path / "groups.log.fixture").read_text().count("made") == 1
    assert sorted((tmp_path / "groups.log.module").read_text().split()) == [
        "tests.test_a", "tests.test_b", "tests.test_c", "tests.test_d"]  # each module fixture once
