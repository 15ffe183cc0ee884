"""What the HTTP layer needs: the state, the scheduler, the bus and the options."""

from __future__ import annotations

from dataclasses import dataclass

from .events import EventBus
from .scheduler import Scheduler
from .state import MarathonState


@dataclass
class SimContext:
    state: MarathonState
    scheduler: Scheduler
    heartbeat_interval: float = 10.0
    advertised: str = "127.0.0.1:8080"  # this instance's host:port (the leader value)
    standby_of: str | None = None  # leader base URL when this instance is a standby
    credentials: str | None = None  # "user:pass" enables HTTP basic auth

    @property
    def bus(self) -> EventBus:
        return self.state.bus

    @property
    def is_leader(self) -> bool:
        return self.standby_of is None
