"""python -m data_pipeline.verify DIR: recompute every shard's checksum, count and class histogram.

Exit 0 when every shard the manifest promises is present and matches; otherwise one line per bad,
missing or unlisted shard and exit 1.
"""

from __future__ import annotations

import sys
from pathlib import Path

from adr_scale.config import ConfigError
from data_pipeline.cli import Parser, run_main
from data_pipeline.shards import MANIFEST, read_manifest, scan_shard, shard_name


def problems(directory: str | Path) -> tuple[list[str], int, int]:
    """(one line per problem, shards checked, images checked)."""
    directory = Path(directory)
    manifest = read_manifest(directory) if directory.is_dir() else None
    if manifest is None:
        raise ConfigError(f"DIR: {str(directory)!r} has no {MANIFEST}; allowed: a directory "
                          "written by data_pipeline.generate_ddpm or data_pipeline.shard_npz")
    meta, found = manifest.meta, []
    shards = images = 0
    for k in range(meta["num_shards"]):
        name = shard_name(k)
        row, path = manifest.rows.get(name), directory / name
        if row is None:
            found.append(f"missing: {name}: not finished (rerun the command that made {directory} "
                         "to resume)" + ("; an unlisted file of that name exists" if path.exists()
                                         else ""))
            continue
        if not path.is_file():
            found.append(f"missing: {name}: listed in the manifest but the file is absent")
            continue
        try:
            got = scan_shard(path, meta["num_classes"])
        except ValueError as exc:
            found.append(f"bad: {name}: {exc}")
            continue
        for what, want, have in (("sha256", row["sha256"], got.sha256),
                                 ("size", row["bytes"], got.bytes),
                                 ("sample count", row["count"], got.count),
                                 ("class histogram", row["class_hist"], got.class_hist)):
            if want != have:
                found.append(f"bad: {name}: {what} is {have}, the manifest says {want}")
                break
        else:
            shards, images = shards + 1, images + got.count
    listed = {shard_name(k) for k in range(meta["num_shards"])}
    for path in sorted(directory.glob("shard-*.tar")):
        if path.name not in listed:
            found.append(f"unlisted: {path.name}: not part of the manifest's "
                         f"{meta['num_shards']} shards")
    return found, shards, images


def main(argv: list[str] | None = None) -> int:
    p = Parser(prog="python -m data_pipeline.verify",
               description="Recompute checksums, sample counts and class histograms of a shard "
                           "directory against its manifest; exit 1 naming every bad or missing shard.",
               example="python -m data_pipeline.verify shards/c100-ddpm")
    p.add_argument("directory", metavar="DIR", help="a shard directory with manifest.parquet")
    args = p.parse_args(argv)
    found, shards, images = problems(args.directory)
    for line in found:
        print(line, file=sys.stderr)
    if found:
        print(f"{args.directory}: {len(found)} problem(s); {shards} shards verified",
              file=sys.stderr)
        return 1
    print(f"{args.directory}: ok, {shards} shards, {images} images verified")
    return 0


if __name__ == "__main__":
    sys.exit(run_main("verify", main))
