"""Fake `simpler_env` (see ../README.md): only what the adapter imports."""
