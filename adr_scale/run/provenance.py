"""Where a result came from: the git revision of the source tree and installed versions."""

from __future__ import annotations

import contextlib
from pathlib import Path


def dist_version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def git_revision() -> str | None:
    """The commit of the source tree this package runs from, read from .git (no git process)."""
    root = Path(__file__).resolve().parents[2]
    git = root / ".git"
    with contextlib.suppress(OSError, IndexError):
        if git.is_file():  # a worktree: "gitdir: <path>"
            git = (root / git.read_text().split(":", 1)[1].strip()).resolve()
        head = (git / "HEAD").read_text().strip()
        if not head.startswith("ref: "):
            return head
        ref = head[5:]
        common = git / (git / "commondir").read_text().strip() if (git / "commondir").exists() else git
        for base in (git, common):
            if (base / ref).exists():
                return (base / ref).read_text().strip()
            packed = base / "packed-refs"
            if packed.exists():
                for line in packed.read_text().splitlines():
                    if line.endswith(" " + ref):
                        return line.split()[0]
    return None


def short_revision() -> str:
    """The revision as benchmark records carry it: 12 hex digits, or 'unknown' outside a checkout."""
    return (git_revision() or "unknown")[:12]
