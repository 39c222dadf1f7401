"""Read one array of an .npz front to back in row chunks, in memory that does not grow with the file.

np.load(mmap_mode="r") cannot map a member of a zip archive (it reads the whole array), so we parse
the member ourselves: zipfile.ZipFile.open returns a stream that reads a stored (np.savez) member
as is and inflates a deflated (np.savez_compressed) one incrementally; on that stream we read the
.npy header (magic, version, dict) and then fixed-size rows.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator

import numpy as np

from adr_scale.config import ConfigError


class NpyStream:
    """Array `key` of the .npz at `path`: `shape`, `dtype`, and `chunks(rows)` front to back."""

    def __init__(self, archive: zipfile.ZipFile, path: str, key: str) -> None:
        member = f"{key}.npy"
        if member not in archive.namelist():
            found = ", ".join(n.removesuffix(".npy") for n in archive.namelist()) or "none"
            raise ConfigError(f"--npz: {path} has no array {key!r} (it has: {found}); allowed: "
                              "an .npz with 'image' (uint8 N x H x W x C) and 'label' (int, N)")
        self.key, self.path = key, path
        self.compressed = archive.getinfo(member).compress_type != zipfile.ZIP_STORED
        self._fp = archive.open(member)
        version = np.lib.format.read_magic(self._fp)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(self._fp)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(self._fp)
        else:
            raise ConfigError(f"--npz: {path}: array {key!r} uses .npy format {version}; "
                              "allowed: versions 1.0 and 2.0 (what np.savez writes)")
        if fortran and len(shape) > 1:
            raise ConfigError(f"--npz: {path}: array {key!r} is stored in Fortran order; "
                              "allowed: C order (np.savez of a C-contiguous array)")
        if dtype.hasobject:
            raise ConfigError(f"--npz: {path}: array {key!r} holds Python objects; allowed: "
                              "plain numeric arrays")
        self.shape: tuple[int, ...] = tuple(shape)
        self.dtype: np.dtype = dtype
        self.row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
        self.position = 0  # rows consumed

    def __len__(self) -> int:
        return self.shape[0]

    def read(self, rows: int) -> np.ndarray:
        """The next `rows` rows, shape (rows, *shape[1:])."""
        rows = min(rows, len(self) - self.position)
        want = rows * self.row_bytes
        buf = bytearray(want)
        view, got = memoryview(buf), 0
        while got < want:  # a zip stream may return fewer bytes than asked
            n = self._fp.readinto(view[got:])
            if not n:
                raise ConfigError(f"--npz: {self.path}: array {self.key!r} ends after "
                                  f"{self.position + got // self.row_bytes} of {len(self)} rows "
                                  "(truncated file)")
            got += n
        self.position += rows
        return np.frombuffer(buf, dtype=self.dtype).reshape(rows, *self.shape[1:])

    def chunks(self, rows: int, chunk: int) -> Iterator[np.ndarray]:
        """The next `rows` rows, at most `chunk` at a time."""
        while rows > 0:
            part = self.read(min(chunk, rows))
            rows -= len(part)
            yield part

    def skip(self, rows: int) -> None:
        """Move past `rows` rows (a forward seek; a deflated member inflates and discards)."""
        rows = min(rows, len(self) - self.position)
        self._fp.seek(rows * self.row_bytes, 1)
        self.position += rows

    def close(self) -> None:
        self._fp.close()
