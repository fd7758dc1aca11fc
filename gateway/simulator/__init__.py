"""A Webex-compatible stand-in for the list-phone-numbers endpoint (see ``app``)."""

from gateway.simulator.app import (
    CONTROL_PREFIX,
    create_embedded_simulator_app,
    create_simulator_app,
    create_simulator_control_app,
)
from gateway.simulator.dataset import DEMO_TOKEN_DESCRIPTIONS, build_demo_world, world_from_items
from gateway.simulator.faults import FaultPlan, FaultRule

__all__ = [
    "CONTROL_PREFIX",
    "DEMO_TOKEN_DESCRIPTIONS",
    "FaultPlan",
    "FaultRule",
    "build_demo_world",
    "create_embedded_simulator_app",
    "create_simulator_app",
    "create_simulator_control_app",
    "world_from_items",
]
