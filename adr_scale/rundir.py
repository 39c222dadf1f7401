"""The run directory: config.yaml, metrics.jsonl, checkpoints/, best.pt, final.pt, summary.json.

Every file is written to a temporary name and renamed, so a killed run never leaves a torn file;
a rerun of the same command finds the latest checkpoint and continues from it.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import torch

from adr_scale.config import ConfigError, RunConfig, dump_yaml, to_dict

# Settings that change how a run is executed, not what it computes: a resume may change them.
OPERATIONAL_KEYS = {("train", "device"), ("train", "log_every"), ("train", "keep_checkpoints")}
_EPOCH_FILE = re.compile(r"epoch-(\d+)\.pt$")


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def atomic_torch_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def config_differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    keys = []
    for section in sorted(set(a) | set(b)):
        va, vb = a.get(section), b.get(section)
        if isinstance(va, dict) and isinstance(vb, dict):
            keys += [f"{section}.{k}" for k in sorted(set(va) | set(vb))
                     if (section, k) not in OPERATIONAL_KEYS and va.get(k) != vb.get(k)]
        elif va != vb:
            keys.append(section)
    return keys


class RunDir:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.checkpoints = self.path / "checkpoints"
        self.metrics_file = self.path / "metrics.jsonl"

    def prepare(self, cfg: RunConfig) -> None:
        """Create the directory, or check that an existing run was made with the same config."""
        config_file = self.path / "config.yaml"
        if config_file.exists():
            import yaml

            old = yaml.safe_load(config_file.read_text()) or {}
            changed = config_differences(old, to_dict(cfg))
            if changed:
                raise ConfigError(f"--out: {str(self.path)!r} holds a run with another config "
                                  f"(differs in {', '.join(changed)}); use another --out "
                                  "or delete that directory")
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_text(config_file, dump_yaml(cfg))

    def latest_checkpoint(self) -> Path | None:
        found = sorted(self._epoch_checkpoints())
        return found[-1][1] if found else None

    def _epoch_checkpoints(self) -> list[tuple[int, Path]]:
        if not self.checkpoints.is_dir():
            return []
        return [(int(m.group(1)), p) for p in self.checkpoints.iterdir()
                if (m := _EPOCH_FILE.search(p.name))]

    def save_epoch(self, state: dict[str, Any], epoch: int, keep: int) -> Path:
        self.checkpoints.mkdir(exist_ok=True)
        path = self.checkpoints / f"epoch-{epoch:04d}.pt"
        atomic_torch_save(state, path)
        for _, old in sorted(self._epoch_checkpoints())[:-keep]:
            old.unlink(missing_ok=True)
        return path

    def save(self, state: dict[str, Any], name: str) -> Path:
        path = self.path / name
        atomic_torch_save(state, path)
        return path

    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics_file.exists():
            return []
        return [json.loads(line) for line in self.metrics_file.read_text().splitlines() if line]

    def truncate_metrics(self, last_epoch: int) -> None:
        """Drop rows after `last_epoch` (written before a crash that lost their checkpoint)."""
        rows = [r for r in self.read_metrics() if r["epoch"] <= last_epoch]
        atomic_write_text(self.metrics_file, "".join(json.dumps(r) + "\n" for r in rows))

    def append_metrics(self, row: dict[str, Any]) -> None:
        with self.metrics_file.open("a") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def write_summary(self, summary: dict[str, Any]) -> None:
        atomic_write_text(self.path / "summary.json", json.dumps(summary, indent=2) + "\n")
