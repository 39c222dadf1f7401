"""Guards of a run directory: one writer at a time (a lock naming its holder) and a diverged run's
error. Standard library only, so a CLI can take the lock (or refuse) before importing torch.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import time
from pathlib import Path

from adr_scale.config import ConfigError

LOCK_FILE = ".lock"


def no_space(flag: str, directory: str | Path, name: str, *, resume: bool) -> ConfigError:
    """The one line for a full disk or quota while writing `name` in `directory`."""
    return ConfigError(f"{flag}: no space left on {str(directory)!r} (writing {name}); free some "
                       "space and rerun the same command" + (" to resume" if resume else ""))


def is_no_space(exc: BaseException | None) -> bool:
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


class TrainingDiverged(RuntimeError):
    """The training loss or weights became non-finite; the message is one line for the user."""


def kept_detail(kept: int, num_epochs: int) -> str:
    """What a stopped training run kept, for the driver's one line: its newest checkpoint holds
    `kept` of `num_epochs` epochs (0: none yet)."""
    if kept == 0:
        return f"no checkpoint yet of {num_epochs} epochs"
    return f"the latest checkpoint, after epoch {kept} of {num_epochs}, is kept"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


class RunLock:
    """An exclusive lock on a run directory: OUT/.lock holds {"pid", "host"} of its holder.

    Created with O_EXCL, so of two runs started together exactly one wins; the other raises a
    ConfigError naming the holder. A lock left by a killed run on this host (its pid is gone)
    is taken over; one held from another host is respected, since its pid cannot be checked
    from here (delete the file if that run is known to be dead). Released on exit of the
    `with` block, so also after an error.
    """

    def __init__(self, directory: str | Path, flag: str = "--out") -> None:
        self.directory = Path(directory)
        self.path = self.directory / LOCK_FILE
        self.flag = flag
        self.held = False
        self.created = False

    def acquire(self) -> RunLock:
        if self.directory.exists() and not self.directory.is_dir():
            raise ConfigError(f"{self.flag}: {str(self.directory)!r} is a file; allowed: a "
                              "directory (new, or a run directory to resume)")
        me = {"pid": os.getpid(), "host": socket.gethostname()}
        self.created = not self.directory.exists()
        for attempt in range(4):  # a stale lock is removed, then the create is retried
            try:
                self.directory.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder()
                if holder is None and attempt == 0:  # maybe created but not yet written
                    time.sleep(0.2)
                    continue
                if holder is None or self._stale(holder):
                    self.path.unlink(missing_ok=True)
                    continue
                raise ConfigError(
                    f"{self.flag}: {str(self.directory)!r} is in use by pid {holder['pid']} on "
                    f"host {holder['host']} (lock {self.path}); wait for that run to end, or "
                    "delete the lock file if it is dead") from None
            except OSError as exc:  # under a file, read-only, full, no permission: the first write
                raise ConfigError(f"{self.flag}: cannot write to {str(self.directory)!r} "
                                  f"({exc.strerror or exc}); allowed: a writable directory") from None
            try:
                with os.fdopen(fd, "w") as f:
                    json.dump(me, f)
            except OSError as exc:  # a full disk takes the empty file, not its contents
                self.path.unlink(missing_ok=True)
                if self.created:
                    self.directory.rmdir()
                if is_no_space(exc):
                    raise no_space(self.flag, self.directory, LOCK_FILE, resume=False) from None
                raise ConfigError(f"{self.flag}: cannot write to {str(self.directory)!r} "
                                  f"({exc.strerror or exc}); allowed: a writable directory") from None
            self.held = True
            return self
        raise ConfigError(f"{self.flag}: could not take the lock {self.path}; another run keeps "
                          "replacing it")

    def _holder(self) -> dict | None:
        """The holder, or None for a lock file that is unreadable (torn by a crash mid-write)."""
        try:
            holder = json.loads(self.path.read_text())
            return holder if isinstance(holder, dict) and {"pid", "host"} <= set(holder) else None
        except FileNotFoundError:
            return {"pid": -1, "host": ""}  # released meanwhile: counts as stale, retry
        except (OSError, ValueError):
            return None

    @staticmethod
    def _stale(holder: dict) -> bool:
        if holder["pid"] == -1:
            return True
        same_host = holder["host"] == socket.gethostname()
        return same_host and isinstance(holder["pid"], int) and not _alive(holder["pid"])

    def release(self) -> None:
        if not self.held:
            return
        self.held = False
        try:
            self.path.unlink()
        except OSError as exc:  # already gone (deleted by hand): nothing to release
            if exc.errno != errno.ENOENT:
                raise
        if self.created and not any(self.directory.iterdir()):
            self.directory.rmdir()  # a start that failed before writing anything leaves nothing

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def check_writable(path: str | Path, flag: str) -> None:
    """Refuse an output directory that cannot be created or written, without writing anything:
    a file, a path under a file, a read-only file system or a directory without permission."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{flag}: {str(path)!r} is a file; allowed: a directory")
    probe = path
    while not probe.exists():  # the nearest existing ancestor is where the first write lands
        probe = probe.parent
    if not probe.is_dir():
        raise ConfigError(f"{flag}: cannot write to {str(path)!r} ({str(probe)!r} is a file); "
                          "allowed: a writable directory")
    if not os.access(probe, os.W_OK | os.X_OK):  # also false on a read-only mount, even as root
        raise ConfigError(f"{flag}: cannot write to {str(path)!r} ({str(probe)!r} is read-only "
                          "or not writable by this user); allowed: a writable directory")
