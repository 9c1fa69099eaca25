"""Virtual-time simulation: a clock and a deterministic network for sans-IO endpoints."""

from .clock import VirtualClock
from .network import (
    DatagramEndpoint,
    Fate,
    LinkProfile,
    SimNetwork,
    SimStats,
    SimulationError,
    TraceHook,
)

__all__ = [
    "DatagramEndpoint",
    "Fate",
    "LinkProfile",
    "SimNetwork",
    "SimStats",
    "SimulationError",
    "TraceHook",
    "VirtualClock",
]
