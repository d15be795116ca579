"""SimplerEnv (WidowX / Bridge and Google robot) adapter; the simulator is imported lazily."""

from envs.simpler.adapter import make_env, preflight

__all__ = ["make_env", "preflight"]
