from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from .harness import Simulator

needs_haproxy = pytest.mark.skipif(shutil.which("haproxy") is None,
                                   reason="haproxy is not installed (make install does it)")


@pytest.fixture
def simulator(tmp_path: Path) -> Iterator[Simulator]:
    sim = Simulator(tmp_path).start()
    try:
        yield sim
    finally:
        sim.stop()


@pytest.fixture(scope="session", autouse=True)
def port_claims(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """One folder of port claims (procs.claim) for every worker of this run: beside the
    workers' own base folders under xdist (``<basetemp>/popen-gwN``), removed with them.
    A folder already named in $SERVICEROUTER_PORT_CLAIMS is used instead: test runs side
    by side (two checkouts, a loop of one test beside the suite) then claim from one
    folder too; their simulators' task-port ranges collided otherwise, and a task of one
    run answered for the other's."""
    import os

    from servicerouter.demo.procs import PORT_CLAIMS

    if os.environ.get(PORT_CLAIMS):
        yield
        return
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    folder = shared / "port-claims"
    folder.mkdir(exist_ok=True)
    before = os.environ.get(PORT_CLAIMS)
    os.environ[PORT_CLAIMS] = str(folder)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(PORT_CLAIMS, None)
        else:
            os.environ[PORT_CLAIMS] = before
