"""A faithful simulator of Marathon's REST API (1.5-1.10) for tests, demos and benchmarks.

Quick use::

    async with SimulatorServer(executor="none") as sim:
        httpx.get(sim.url + "/v2/apps")

or from synchronous code::

    with SimulatorThread(executor="none") as sim:
        ...

See :mod:`.control` for the test-only ``/_sim/`` endpoints and :mod:`.cli`
for ``servicerouter simulate``.
"""

from .server import SimulatorServer, SimulatorThread

__all__ = ["SimulatorServer", "SimulatorThread"]
