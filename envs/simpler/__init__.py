"""SimplerEnv (WidowX / Bridge and Google robot) adapter; the simulator is imported lazily.

So is the adapter (scipy, 0.3 s): the suite registry reads only `envs.simpler.sweep`, on the
start-up path of every run, SimplerEnv's or not."""

__all__ = ["make_env", "preflight"]


def __getattr__(name: str):
    if name in __all__:
        from envs.simpler import adapter

        return getattr(adapter, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
