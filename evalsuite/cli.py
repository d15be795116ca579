"""`asyncvla-eval`: evaluate a policy on a suite (or a family of suites), rebuild tables, record demos.

    asyncvla-eval SUITE_OR_FAMILY [--ckpt PATH | --policy scripted|random] [--mode ...] ...
    asyncvla-eval report RUN_DIR
    asyncvla-eval export RUN_DIR --format vla-eval [--out DIR]
    asyncvla-eval record-demos SUITE --out DIR ...
    asyncvla-eval ablations SUITE --ckpt UNIFIED --sfm-ckpt SFM_TRAINED ...

Exit codes of an evaluation: 0 every planned episode has an outcome; 2 bad input, a missing
simulator or asset, or an error that would repeat on every episode (the run stops; records written
so far are kept); 3 the run finished but some episodes are recorded as errors (they crashed on
every attempt and are left out of the rates); 130 / 143 stopped by Ctrl-C / SIGTERM (records written
so far are whole; the same command resumes).

This module only dispatches: the evaluation's arguments and their checks are evalsuite/eval_args.py,
each subcommand's its own module (imported when it runs).
"""

from __future__ import annotations

import gc
import logging
import signal
import sys
import threading
from pathlib import Path

from envs.base import SetupError
from evalsuite.errors import ArgumentParser, EvalError, UsageError
from evalsuite.eval_args import config_from_args, eval_parser, evaluate_args, resolve_suites
from evalsuite.evaluate import dry_run, report
from evalsuite.page import PAGE
from evalsuite.run.runner_base import RunAborted
from evalsuite.store import RunStore
from evalsuite.suites import registry, unavailable_suites

log = logging.getLogger("asyncvla-eval")
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a Ctrl-C
EXIT_SIGTERM = 143  # 128 + SIGTERM


def cmd_evaluate(argv: list[str]) -> int:
    args = eval_parser().parse_args(argv)
    if args.dry_run:
        config = config_from_args(args, argv)
        print(f"episode plan for {', '.join(s.name for s in config.suites)} ({config.policy.episode_mode}):")
        print(dry_run(config))
        return 0
    summary = evaluate_args(args, argv, show_progress=not args.quiet)
    print(summary.markdown)
    print(f"run directory: {summary.run_dir}")
    errors = summary.errors
    if errors:
        print(
            f"asyncvla-eval: {errors} of {len(summary.records)} episodes are recorded as errors (they "
            "crashed on every attempt; the tables count them apart). Their messages are in "
            f"{summary.run_dir / 'episodes.jsonl'}; re-run the same command with --retry-errors to "
            "run them again.",
            file=sys.stderr,
        )
        return summary.exit_code
    return 0


def cmd_report(argv: list[str]) -> int:
    p = ArgumentParser(
        prog="asyncvla-eval report", description="Rebuild the tables (and the page) of a run directory."
    )
    p.add_argument("run_dir")
    p.add_argument("--html", action="store_true", help="print the path of the run's page, RUN_DIR/index.html")
    args = p.parse_args(argv)
    manifest = RunStore(args.run_dir).read_manifest()
    suites = registry()
    missing = [n for n in manifest["suites"] if n not in suites]
    if missing:
        raise UsageError(f"run uses suites this installation does not know: {', '.join(missing)}")
    summary = report(Path(args.run_dir), [suites[n] for n in manifest["suites"]])
    print(summary.run_dir / PAGE if args.html else summary.markdown)
    return 0


def cmd_record_demos(argv: list[str]) -> int:
    from evalsuite import demos

    return demos.main(argv)


def cmd_ablations(argv: list[str]) -> int:
    from evalsuite import ablations

    return ablations.main(argv)


def cmd_serve(argv: list[str]) -> int:
    from evalsuite.serving.server import cmd_serve as serve  # websockets and Ray: only when serving

    return serve(argv)


def cmd_export(argv: list[str]) -> int:
    from evalsuite.export import cmd_export as export

    return export(argv)


def cmd_nightly(argv: list[str]) -> int:
    from evalsuite.regression.nightly import cmd_nightly as nightly  # matplotlib: only for this job

    return nightly(argv)


def cmd_compare(argv: list[str]) -> int:
    from evalsuite.regression.nightly import cmd_compare as compare

    return compare(argv)


def cmd_list(argv: list[str]) -> int:
    """Every suite; with a suite or family name, its tasks with their indices (for --tasks)."""
    refused = unavailable_suites()  # suites whose files are missing (LIBERO-PRO's), with why
    if argv:
        for suite in resolve_suites(argv[0], None):
            print(f"{suite.name}:" + (f"  {refused[suite.name]}" if suite.name in refused else ""))
            for index, task in enumerate(suite.tasks):
                print(f"  {index:>3}  {task.name}  ({task.episodes} episodes)")
        return 0
    for name, suite in sorted(registry().items()):
        episodes = sum(t.episodes for t in suite.tasks)
        line = f"{name:<24} family={suite.family or '-':<16} tasks={len(suite.tasks):<4} episodes={episodes}"
        print(f"{line:<72} {refused[name]}" if name in refused else line)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    handlers = {
        "serve": cmd_serve,  # an AsyncVLA checkpoint (or module:Class) behind openpi's websocket protocol
        "report": cmd_report,
        "record-demos": cmd_record_demos,
        "list": cmd_list,
        "ablations": cmd_ablations,
        "nightly": cmd_nightly,  # exit 0 nothing significantly worse, 1 something worse, 2 bad input
        "compare": cmd_compare,
        "export": cmd_export,  # a run in vla-eval's result layout (evalsuite/export.py)
    }
    # commands that write a run directory: a stop (Ctrl-C, SIGTERM) leaves it whole and resumable
    resumable = not argv or argv[0] not in handlers or argv[0] in ("nightly", "ablations")
    sigterm = _Sigterm.install() if resumable else None
    try:
        if argv and argv[0] in handlers:
            return handlers[argv[0]](argv[1:])
        return cmd_evaluate(argv)
    except KeyboardInterrupt:
        print(
            f"asyncvla-eval: interrupted{'; run the same command to resume' if resumable else ''}",
            file=sys.stderr,
        )
        return EXIT_SIGTERM if sigterm is not None and sigterm.received else EXIT_INTERRUPTED
    except RunAborted as e:
        return _fail(f"{e} (recorded episodes are kept; fix the cause and re-run the same command to resume)")
    except (EvalError, SetupError) as e:
        return _fail(str(e))
    except OSError as e:  # permissions, a read-only or full file system: name the path
        where = f"{e.filename}: " if e.filename else ""
        return _fail(f"{where}{e.strerror or e} (records already written are kept)")
    except Exception as e:
        if _is_checkpoint_error(e):
            return _fail(str(e))
        raise
    finally:
        if sigterm is not None:
            sigterm.restore()


class _Sigterm:
    """SIGTERM (a scheduler's stop, `kill`) raises KeyboardInterrupt in the main thread, as Ctrl-C
    does: the run unwinds, stops Ray and marks run.json stopped. KeyboardInterrupt rather than an
    exception of our own: Ray's blocking calls turn only that one (and SystemExit) back into a
    Python exception when a signal handler raises inside them (another one ends as a SystemError).
    `received` tells the two signals apart for the exit code."""

    def __init__(self):
        self.received = False
        self.previous = signal.signal(signal.SIGTERM, self)

    @classmethod
    def install(cls) -> _Sigterm | None:
        """None where handlers cannot be set (not the main thread: `main` called by an application)."""
        return cls() if threading.current_thread() is threading.main_thread() else None

    def __call__(self, signum, frame):
        self.received = True
        raise KeyboardInterrupt(f"signal {signum}")

    def restore(self) -> None:
        signal.signal(signal.SIGTERM, self.previous)


def _is_checkpoint_error(e: Exception) -> bool:
    """asyncvla.checkpoint imports torch: look the class up only if a checkpoint was ever read."""
    module = sys.modules.get("asyncvla.checkpoint")
    return module is not None and isinstance(e, module.CheckpointError)


def _fail(message: str) -> int:
    print(f"asyncvla-eval: error: {message}", file=sys.stderr)
    return 2


def console_main() -> int:
    """The `asyncvla-eval` command: `main`, then the objects it leaves are frozen out of the
    interpreter's last garbage collection (`gc.freeze`). That collection walks everything a run
    imported (Ray, pandas, scipy) looking for cycles to free in a process that is ending anyway,
    a cost every run would pay (results/bench/startup.json measures it). Files are closed and Ray is
    stopped before `main` returns, and atexit handlers still run. Not for `main` called in-process
    (tests)."""
    code = main()
    gc.freeze()
    return code


if __name__ == "__main__":
    sys.exit(console_main())
