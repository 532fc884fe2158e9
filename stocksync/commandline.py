"""What every stocksync command line shares (`stocksync ...`, `python -m consumers ...`, `python -m
stocksync.api.serve`): options taken anywhere on the line, help that says each option's default, logging
set up before the command runs, and one way to end with an error.

    finish(parser)      --config and --log-level on the parser and on every subcommand's parser (so
                        `stocksync sku get X --config f.toml` works as `stocksync --config f.toml sku get X`),
                        and HelpFormatter everywhere
    start_logging(args) JSON logs (stocksync.logs) at --log-level, else the command's own default
                        (`log_default`: info for the long-running serve and worker, warning otherwise)
    fail(args, text, code)   one line on stderr, then the exit code: a JSON log record for the
                        long-running processes (their stderr is a log stream), `stocksync: <text>` otherwise
    ProgressBar         progress of a long command on stderr: a bar redrawn in place on a terminal, a
                        line a second otherwise (a log file gets lines, not carriage returns)
    main(parser, argv)  parse, set up logging, load the settings, run the command (`args.run(args)`, a
                        coroutine unless `sync`), and turn the errors every command can meet into one line
                        and an exit code

Exit codes: 0 done, 1 refused (insufficient, conflict, unknown SKU) or Redis unreachable, 2 bad input.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from typing import TextIO

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from . import logs, preflight
from .durability import NotDurable
from .errors import InvalidArgument
from .settings import Settings, SettingsError
from .validate import Invalid

OK, REFUSED, BAD_INPUT = 0, 1, 2
log = logging.getLogger("stocksync")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions as written; each option's help ends with its default unless it says it already."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (not action.option_strings or default is None or default is False or default == argparse.SUPPRESS
                or "default" in text):
            return text
        return f"{text} (default: %(default)s)"


def _common(parser: argparse.ArgumentParser, top: bool) -> None:
    # On subcommands the default is SUPPRESS, so that a value given before the subcommand is kept.
    default = None if top else argparse.SUPPRESS
    parser.add_argument("--config", default=default, metavar="FILE",
                        help="TOML settings file (default: $STOCKSYNC_CONFIG); accepted anywhere on the line")
    parser.add_argument("--log-level", default=default, choices=logs.LEVELS, type=str.lower,
                        help="log records at this level and above, as JSON lines on stderr (default: info for "
                        "serve and worker, warning for the other commands)")


def subparsers_of(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    out = []
    for action in parser._actions:
        choices = getattr(action, "choices", None)
        if isinstance(choices, dict):
            out += [p for p in choices.values() if isinstance(p, argparse.ArgumentParser)]
    return out


def finish(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the common options to the parser and every subcommand below it; help shows defaults."""
    seen: set[int] = set()

    def visit(p: argparse.ArgumentParser, top: bool) -> None:
        if id(p) in seen:  # (aliases share a parser)
            return
        seen.add(id(p))
        p.formatter_class = HelpFormatter
        _common(p, top)
        for child in subparsers_of(p):
            visit(child, False)

    visit(parser, True)
    return parser


def start_logging(args: argparse.Namespace) -> None:
    level = getattr(args, "log_level", None) or getattr(args, "log_default", None) or "warning"
    logs.setup(level, access_log=getattr(args, "access_log", False))


def fail(args: argparse.Namespace, text: str, code: int) -> int:
    """Say why in one line (never a traceback), answer the exit code."""
    text = logs.redact(" ".join(str(text).split()))
    if getattr(args, "log_default", None) == "info":
        log.error(text)
    else:
        print(f"stocksync: {text}", file=sys.stderr)
    return code


class ProgressBar:
    """`bar(done, total)` after each step; `bar.end()` once. Redrawn at most ten times a second on a
    terminal, once a second elsewhere."""

    WIDTH = 30

    def __init__(self, what: str, stream: TextIO | None = None) -> None:
        self.what, self.stream = what, stream or sys.stderr
        self.tty = self.stream.isatty()
        self.shown_at, self.last = 0.0, (0, 0)

    def __call__(self, done: int, total: int) -> None:
        self.last = (done, total)
        now = time.monotonic()
        if now - self.shown_at >= (0.1 if self.tty else 1.0):
            self.shown_at = now
            self._show(done, total)

    def _show(self, done: int, total: int) -> None:
        part = done / total if total else 1.0
        filled = int(part * self.WIDTH)
        text = f"[{'#' * filled}{'.' * (self.WIDTH - filled)}] {part:4.0%} {done}/{total} {self.what}"
        print(("\r" + text) if self.tty else text, end="" if self.tty else "\n", file=self.stream, flush=True)

    def end(self) -> None:
        self._show(*self.last)
        if self.tty:
            print(file=self.stream, flush=True)


def main(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> int:
    args = parser.parse_args(argv)
    start_logging(args)
    try:
        args.settings = Settings.load(args.config)
        if getattr(args, "sync", False):
            return args.run(args)
        return asyncio.run(args.run(args))
    except (SettingsError, InvalidArgument, Invalid) as e:
        return fail(args, str(e), BAD_INPUT)
    except (preflight.Unreachable, NotDurable) as e:  # (NotDurable: applied, not yet durable: run it again)
        return fail(args, str(e), REFUSED)
    except (RedisConnectionError, RedisTimeoutError) as e:  # Redis went away after the start
        return fail(args, str(preflight.unreachable(args.settings, e)), REFUSED)
    except KeyboardInterrupt:
        return 130
