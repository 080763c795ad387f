"""Closed-loop simulation of whole funnels over the synthetic world (see simulator.py)."""

from funnelrec.simulate.config import BehaviourConfig, SimConfig, TrafficConfig, WorldSpec, load_sim_config
from funnelrec.simulate.simulator import (
    SimulationResult,
    Simulator,
    default_metrics,
    funnel_key,
    position_bias,
)

__all__ = [
    "BehaviourConfig",
    "SimConfig",
    "SimulationResult",
    "Simulator",
    "TrafficConfig",
    "WorldSpec",
    "default_metrics",
    "funnel_key",
    "load_sim_config",
    "position_bias",
]
