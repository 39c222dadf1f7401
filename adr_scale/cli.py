"""What the entry points share: an argument parser whose errors are one line."""

from __future__ import annotations

import argparse


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad flag is one `error:` line and exit status 2 (argparse prints the
    usage block first), like every other input error of the CLIs."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")
