"""``automl-kd``: the command line, thin over the Python API.

A user error (bad config, missing data, unknown plugin) prints one line ``error: ...`` and exits with the error's
code (2 for configs); never a traceback. The commands live in :mod:`.search`, :mod:`.results`, :mod:`.distill`
and :mod:`.starter` (and ``compare`` in :mod:`automl_kd.compare.cli`); plugins add their own through the
``register_commands`` hook.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import sys
import traceback
from collections.abc import Sequence

import optuna

from automl_kd.compare.cli import add_compare_arguments, compare_main
from automl_kd.errors import AutomlKdError, raised_by_ctrl_c
from automl_kd.storage.outage import is_storage_error, storage_fault

from . import distill, results, search, starter
from .common import plugin_manager

log = logging.getLogger("automl_kd")


def _setup_logging(verbose: bool) -> None:
    level = logging.DEBUG if verbose else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    root = logging.getLogger("automl_kd")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
    # our progress lines report each trial and its failure reason; Optuna's own lines would repeat them
    optuna.logging.set_verbosity(optuna.logging.ERROR)


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The whole command line: the host's commands, then the plugins' (``--disable-plugin`` in ``argv`` applies)."""
    p = argparse.ArgumentParser(prog="automl-kd", description="Find small, fast students and distil them.")
    p.add_argument(
        "--disable-plugin",
        action="append",
        metavar="NAME",
        help="block a plugin by name (repeatable); also AUTOML_KD_DISABLE_PLUGINS=a,b",
    )
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)
    search.add_commands(sub)
    sp = sub.add_parser(
        "compare", help="compare proposers on NAS table benchmarks (seeds x budget, statistics)"
    )
    add_compare_arguments(sp)
    sp.set_defaults(func=compare_main)
    results.add_commands(sub)
    distill.add_commands(sub)
    starter.add_commands(sub)
    # the plugins' commands. Loading the plugins takes seconds (timm, entry points), so a host command starts
    # without them (a worker opens its storage first); any other word, or none (help, usage), loads them.
    # --disable-plugin is read first, so that a blocked plugin adds no command.
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--disable-plugin", action="append")
    pre.add_argument("-v", "--verbose", action="store_true")
    pre.add_argument("command", nargs="?")
    known, _ = pre.parse_known_args(argv)
    if known.command not in sub.choices:
        pm = plugin_manager(known)
        pm.register_commands(sub)
        p.set_defaults(_pm=pm)
    return p


def _interrupted(args: argparse.Namespace) -> int:
    """Ctrl-C: say so in one line; exit 130 (for ``run``/``demo``/``worker`` at once, as after SIGTERM)."""
    print("interrupted (SIGINT); a running trial was recorded and queued to run again", file=sys.stderr)
    if getattr(args, "command", None) in ("run", "demo", "worker"):  # as after SIGTERM: no slow teardown
        sys.stdout.flush()
        sys.stderr.flush()
        logging.shutdown()
        os._exit(130)
    return 130


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    _setup_logging(args.verbose)
    try:
        return int(args.func(args) or 0)
    except AutomlKdError as exc:
        if raised_by_ctrl_c(exc):
            return _interrupted(args)
        _error(str(exc))
        return exc.exit_code
    except KeyboardInterrupt:
        return _interrupted(args)
    except BrokenPipeError:
        os._exit(0)
    except Exception as exc:  # never a traceback: the fault in one line (-v adds the traceback)
        if raised_by_ctrl_c(exc):  # a second Ctrl-C inside a library's own error handling
            return _interrupted(args)
        if args.verbose:
            traceback.print_exc()
        message, code = _unexpected(exc)
        _error(message)
        return code


def _error(message: str) -> None:
    """``error: ...`` on one line, whatever the message holds."""
    print("error: " + " ".join(message.split()), file=sys.stderr, flush=True)


def _unexpected(exc: BaseException) -> tuple[str, int]:
    """The one-line message and exit code of an exception that no command turned into an AutomlKdError."""
    fault = storage_fault(exc)
    if fault is not None:
        return str(fault), fault.exit_code
    first = (str(exc).strip().splitlines() or [""])[0]
    if is_storage_error(exc):
        return f"storage unreachable: {type(exc).__name__}: {first}", 5
    if isinstance(exc, OSError):
        where, reason = exc.filename or "", exc.strerror or first
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT):
            return f"cannot write {where}: {reason}", 6
        return (f"{where}: {reason}" if where else reason), 6
    return (
        f"internal error: {type(exc).__name__}: {first} (a bug in automl-kd or a plugin; run with -v for "
        "the traceback)",
        1,
    )
