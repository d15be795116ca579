"""The evaluation harness: suites, episode plans, the Ray runner, the run store, tables, videos, CLI.

`evalsuite.evaluate_suite` runs an evaluation from Python (evalsuite/api.py)."""

__all__ = ["evaluate_suite"]


def __getattr__(name: str):
    # lazily: importing a submodule (every Ray worker does) must not import the CLI
    if name == "evaluate_suite":
        from evalsuite.api import evaluate_suite

        return evaluate_suite
    raise AttributeError(f"module 'evalsuite' has no attribute {name!r}")
