"""Decoding image files into rows of a uint8 (N, C, S, S) array file: the worker side of the
imagefolder cache build (adr_scale.data.generic). No torch here, so a spawned worker process
starts in a fraction of a second (it imports NumPy and Pillow only).
"""

from __future__ import annotations

import warnings

import numpy as np
from PIL import Image

# The extensions read from a class folder (lower-cased): torchvision's ImageFolder list, minus
# the rare .ppm / .pgm, plus .tiff.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def first_size(path: str) -> tuple[int, int]:
    """(width, height) from the file's header alone."""
    with Image.open(path) as img:
        return img.size


def decode_image(path: str, size: int, channels: int, strict: bool) -> np.ndarray:
    """One file as uint8 (C, size, size).

    strict (data.image_size unset): an image of another size is an error (ValueError naming
    data.image_size). Otherwise the shorter side is resized to `size` (bilinear, antialiased)
    and the centre square cut, as torchvision's Resize(size) + CenterCrop(size).
    Modes: channels 3 -> RGB (alpha dropped, palette expanded), 1 -> L (ITU-R 601 luma).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(path) as img:
            img.load()  # decodes now: a truncated or corrupt file raises here (OSError)
            w, h = img.size
            if (w, h) != (size, size):
                if strict:
                    raise ValueError(f"data.image_size: image {path!r} is {w}x{h}, the first "
                                     f"is {size}x{size}; set data.image_size to resize them all")
                short = min(w, h)
                nw, nh = (size, int(size * h / w)) if w == short else (int(size * w / h), size)
                img = img.convert("RGB" if channels == 3 else "L").resize(
                    (nw, nh), Image.BILINEAR)
                left, top = int(round((nw - size) / 2.0)), int(round((nh - size) / 2.0))
                img = img.crop((left, top, left + size, top + size))
            pixels = np.asarray(img.convert("RGB" if channels == 3 else "L"), dtype=np.uint8)
    if channels == 1:
        return pixels[None]  # (1, S, S)
    return pixels.transpose(2, 0, 1)  # (3, S, S)


def decode_task(task: dict) -> list[tuple[int, str]]:
    """Decode task["paths"] into rows task["row"] ... of the array file task["images_file"]
    (shape task["shape"]); returns [(row, why)] of the images that could not be read."""
    n_total, c, s, _ = task["shape"]
    out = np.memmap(task["images_file"], np.uint8, "r+", shape=(n_total, c, s, s))
    bad = []
    for i, path in enumerate(task["paths"]):
        row = task["row"] + i
        try:
            out[row] = decode_image(path, s, c, task["strict"])
        except ValueError as exc:
            if str(exc).startswith("data.image_size"):
                raise  # not a bad file: the set needs data.image_size
            bad.append((row, _why(exc)))
        except (OSError, SyntaxError, Image.DecompressionBombWarning,
                Image.DecompressionBombError) as exc:  # Pillow's errors for corrupt files
            bad.append((row, _why(exc)))
    out.flush()
    del out
    return bad


def _why(exc: BaseException) -> str:
    return ((str(exc).strip().splitlines() or [""])[0][:100] or type(exc).__name__)
