"""ManiSkill3 backend for SimplerEnv's Bridge (WidowX) tasks; `mani-skill` is imported lazily."""

from envs.maniskill3.adapter import make_env

__all__ = ["make_env"]
