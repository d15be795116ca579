"""Simulator adapters. Each imports its simulator lazily and knows nothing about Ray or models."""

from envs.base import Env, Observation, SimulatorMissing

__all__ = ["Env", "Observation", "SimulatorMissing"]
