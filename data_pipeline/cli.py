"""What the three commands share: one-line errors and an argument parser that keeps to them."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from adr_scale.config import ConfigError


class Parser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line (argparse prints the usage block first)."""

    def __init__(self, *, example: str, **kwargs) -> None:
        super().__init__(formatter_class=argparse.RawDescriptionHelpFormatter,
                         epilog=f"example:\n  {example}", **kwargs)

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an integer; allowed: an integer >= 1") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is too small; allowed: an integer >= 1")
    return value


def run_main(prog: str, main: Callable[[list[str] | None], int],
             argv: list[str] | None = None) -> int:
    """Run `main`; a ConfigError (bad input the user can fix) becomes one line and exit code 2."""
    try:
        return main(argv)
    except ConfigError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
