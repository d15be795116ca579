"""The harness's own errors. `asyncvla-eval` prints any of them as one line and exits with code 2.

Every error the harness raises on bad input, or on a state a run cannot go on from, derives from
`EvalError`; its message says what was wrong and how to fix it. The packages it drives keep their
own bases (`envs.base.SetupError`, `asyncvla.checkpoint.CheckpointError`: they import nothing of
the harness), and `evalsuite.cli.main` treats those, and operating-system errors naming a path,
the same way.
"""

from __future__ import annotations

import argparse


class EvalError(Exception):
    """Bad input or an unrecoverable state; records already written are kept."""


class UsageError(EvalError, ValueError):
    """Bad command-line input; the message says what to change."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse, whose errors (a missing or malformed argument) are a `UsageError`: one line, exit 2."""

    def error(self, message: str):
        raise UsageError(f"{message} (see {self.prog} --help)")


class UnknownName(EvalError, KeyError):
    """An unknown suite or task name (a KeyError, so lookups may catch it as one)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class FatalPolicyError(EvalError):
    """A policy error that would repeat on every episode (a remote server serving the wrong action
    size, a user policy that breaks the contract): the run stops with the message, records kept."""
