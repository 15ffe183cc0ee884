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
