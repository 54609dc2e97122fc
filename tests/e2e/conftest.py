"""End-to-end fixtures: a real multi-host testbed (see tests/testbed/testbed.py).

- `testbed`: 3 Docker hosts (h1, h2, h3; user root), shared by the whole session
  (session scope: module fixtures can use it) and closed at its end.  After each
  test that used it, faults it left (stopped, paused or disconnected hosts) are
  undone, so tests can stop/pause hosts freely.
- `fresh_testbed`: per test, a new fresh host (fresh1, user `deploy` with passwordless
  sudo, root works too; no Docker) and an unsupported one (unsupported1, /etc/os-release
  says Fedora).  Started only by the tests that ask for it.
- `make_testbed(hosts=..., fresh=..., unsupported=...)`: any other shape, per test.

A testbed that cannot start makes the run fail (an error, never a skip).
Every test under tests/e2e/ carries the `e2e` marker (`-m "not e2e"` leaves them out).
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import pytest

from tests.testbed import Testbed

_HERE = Path(__file__).resolve().parent
# Names of this run's own: several runs (developers on one machine, xdist workers) can
# share one engine.  Testbeds of runs that died are removed by the next Testbed.start.
PREFIX = f"infra-tb-e2e-{os.getpid()}"


def pytest_configure(config):
    config.addinivalue_line("markers", "e2e: end-to-end test on the real multi-host testbed (tests/testbed)")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if _HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def testbed():
    """The session's 3 Docker hosts."""
    with Testbed.start(hosts=3, prefix=PREFIX) as tb:
        yield tb


@pytest.fixture(autouse=True)
def _heal_testbed(request):
    """After a test that used `testbed`, undo the faults it left."""
    yield
    if "testbed" in request.fixturenames:
        request.getfixturevalue("testbed").heal()


@pytest.fixture
def make_testbed():
    """Start extra testbeds inside one test: make_testbed(hosts=0, fresh=2)."""
    made = []
    counter = itertools.count(1)

    def make(hosts: int = 0, fresh: int = 0, unsupported: int = 0, **kw) -> Testbed:
        kw.setdefault("prefix", f"{PREFIX}-x{next(counter)}")
        tb = Testbed.start(hosts=hosts, fresh=fresh, unsupported=unsupported, **kw)
        made.append(tb)
        return tb

    yield make
    errors = []
    for tb in reversed(made):
        try:
            tb.close()
        except Exception as exc:  # close all of them, then report
            errors.append(exc)
    if errors:
        raise errors[0]


@pytest.fixture
def fresh_testbed():
    """A new fresh host and a new unsupported host, for this test only."""
    with Testbed.start(hosts=0, fresh=1, unsupported=1, prefix=f"{PREFIX}-fresh") as tb:
        yield tb
