"""LIBERO adapter (PROTOCOL.md): `make_env` for the suite registry, the demo-data readers beside it."""

from envs.libero.env import ACTION_DIM, CAMERAS, NOOP_ACTION, STATE_DIM, LiberoConfig, LiberoEnv, make_env

__all__ = ["ACTION_DIM", "CAMERAS", "NOOP_ACTION", "STATE_DIM", "LiberoConfig", "LiberoEnv", "make_env"]
