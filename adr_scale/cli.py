"""What the entry points share: an argument parser whose errors are one line, its head built from
the entry's docstring (`entry_parser`), and the checks of the scaling flags and the Ray address
that the drivers take before Ray is imported or started."""

from __future__ import annotations

import argparse
import os
import socket
import sys

from adr_scale.config import ConfigError, RunConfig


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad flag is one `error:` line and exit status 2 (argparse prints the
    usage block first), like every other input error of the CLIs."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def entry_parser(prog: str, doc: str, *, epilog_from: int = 1) -> OneLineParser:
    """The parser head of an entry point, from its module docstring: the first paragraph is the
    description, the paragraphs from `epilog_from` on (the examples) the epilog, shown as written
    under the flags; errors are one line."""
    return OneLineParser(prog=prog, description=doc.split("\n\n")[0],
                         epilog=doc.split("\n\n", epilog_from)[epilog_from],
                         formatter_class=argparse.RawDescriptionHelpFormatter)


def print_listing(text: str) -> None:
    """Print `text` to stdout; a reader that stops early (`| head`) is not an error: Python's
    advice for SIGPIPE, stdout pointed at /dev/null so the exit flush does not fail either."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def check_scaling(cfg: RunConfig, workers: int, gpus: float, max_failures: int) -> None:
    if workers < 0:
        raise ConfigError(f"--workers: invalid value {workers}; allowed: an integer >= 0")
    if gpus < 0:
        raise ConfigError(f"--gpus-per-worker: invalid value {gpus}; allowed: a number >= 0")
    if max_failures < 0:
        raise ConfigError(f"--max-failures: invalid value {max_failures}; allowed: an integer >= 0")
    batch = cfg.train.batch_size
    if workers > 1 and batch % workers:
        lower, upper = batch - batch % workers, batch + workers - batch % workers
        raise ConfigError(f"train.batch_size: {batch} does not split evenly across {workers} "
                          f"workers; use a multiple of {workers}, e.g. "
                          + (f"{lower} or {upper}" if lower else f"{upper}"))
    if cfg.train.sync_batchnorm and workers > 1 and gpus == 0:
        raise ConfigError("train.sync_batchnorm: true needs GPUs (PyTorch's SyncBatchNorm has no "
                          "CPU kernel); set --gpus-per-worker or train.sync_batchnorm=false")


CONNECT_TIMEOUT_S = 3.0  # for a Ray head's GCS port to accept a TCP connection


def check_address(address: str) -> None:
    """Refuse, in one line and within seconds, a Ray address where no cluster answers (`ray.init`
    would retry it for minutes): host:port (or ray://host:port) must accept a TCP connection;
    'auto' must find a running cluster (RAY_ADDRESS or the last `ray start` on this machine)
    that does. Writes nothing. For the train and tune drivers, before anything is written."""
    target = address.removeprefix("ray://")
    if address == "auto":
        target = _auto_address()
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"--address: invalid value {address!r}; allowed: auto or host:port "
                          "(e.g. 10.0.0.1:6379)")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
        raise ConfigError(f"--address: nothing answers at {host}:{port} ({why}); start the cluster "
                          "(`ray start --head`) or leave --address out to start a local Ray"
                          ) from None


def _auto_address() -> str:
    """host:port of the cluster `ray.init(address="auto")` would join, or a ConfigError."""
    from ray._private.services import canonicalize_bootstrap_address

    try:
        found = canonicalize_bootstrap_address("auto")
        why = "no RAY_ADDRESS, no `ray start`"
    except ConnectionError as exc:  # e.g. several clusters run here and none was named
        found, why = None, (str(exc).strip().splitlines() or ["?"])[0][:120]
    if not found:
        raise ConfigError(f"--address: auto finds no Ray cluster to join on this machine ({why});"
                          " name one as host:port, start one with `ray start --head`, or leave "
                          "--address out to start a local Ray")
    return found
