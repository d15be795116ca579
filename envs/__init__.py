"""Simulator adapters. Each imports its simulator lazily and knows nothing about Ray or models."""

from envs.base import Env, InvalidAction, Observation, SetupError, SimulatorMissing

__all__ = ["Env", "InvalidAction", "Observation", "SetupError", "SimulatorMissing"]
