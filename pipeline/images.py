"""Finding and decoding the images of an extraction run.

Discovery: every *.jpg / *.jpeg / *.png below a folder (recursive, case-insensitive suffix,
hidden files and folders skipped), `image_id` = the file name without its extension, sorted
by image_id so shard assignment is stable. Two files with the same stem are an error naming
both, raised before any work starts. Symlinked folders are followed, each real folder once:
a link back to an ancestor (a loop) or to a folder already searched is one warning line.

Decoding: PIL -> (H, W, 3) uint8 RGB, or `ImageDecodeError` with a reason a user can act on.
Real images in unusual formats are decoded, not failed: CMYK (some COCO JPEGs), grayscale,
palette, alpha (dropped), 16-bit PNG (scaled to 8 bits by 1/257, as PIL does for 16-bit RGB).
A photo's EXIF orientation is applied: pixels, regions and the stored image size are in the
upright frame a viewer shows, as the reference extractors' `cv2.imread` gives it (OpenCV
rotates by the EXIF tag since 3.1; an unreadable tag leaves the stored frame).
Failures: empty file, a file that cannot be read (permission denied, ...), not an image,
truncated or corrupt data, zero-sized image, and images over PIL's decompression-bomb limit
(`PIL.Image.MAX_IMAGE_PIXELS` pixels, checked from the header before any pixel is decoded).
"""

from __future__ import annotations

import logging
import os
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from pipeline.errors import PipelineError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")

# The size check below replaces PIL's warning (which would print once per process and
# still decode the image); PIL's own hard error at 2x the limit is caught as well.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


@dataclass(frozen=True)
class ImageEntry:
    image_id: str
    path: str


def discover_images(root: str | os.PathLike) -> list[ImageEntry]:
    root = Path(root)
    if not root.is_dir():
        raise PipelineError("image folder not found", root)
    by_id: dict[str, Path] = {}
    # directory symlinks are followed, so a link to an ancestor (or to a folder already
    # searched) would walk the same files again: each real directory is searched once
    searched: dict[tuple[int, int], str] = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        st = os.stat(dirpath)
        if (st.st_dev, st.st_ino) in searched:
            first = searched[(st.st_dev, st.st_ino)]
            kind = "a symlink loop" if Path(first) in Path(dirpath).parents else "a second path"
            log.warning("skipping %s: %s to %s, already searched", dirpath, kind, first)
            dirnames[:] = []
            continue
        searched[(st.st_dev, st.st_ino)] = dirpath
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith(".") or not name.lower().endswith(IMAGE_SUFFIXES):
                continue
            path = Path(dirpath) / name
            image_id = path.stem
            if image_id in by_id:
                raise PipelineError(f"two images share the image_id {image_id!r}: {by_id[image_id]} and {path} "
                                    f"(image_id is the file name without extension; rename one)", root)
            by_id[image_id] = path
    return [ImageEntry(i, str(by_id[i])) for i in sorted(by_id)]


class ImageDecodeError(Exception):
    """`str(err)` is the reason written to failures.jsonl."""


def _to_rgb(img: Image.Image) -> np.ndarray:
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        arr = np.asarray(img).astype(np.float32)
        arr = np.clip(np.rint(arr / 257.0), 0, 255).astype(np.uint8)
        return np.repeat(arr[:, :, None], 3, axis=2)
    if img.mode == "F":
        raise ImageDecodeError("floating-point image (mode F) has no defined 0-255 range")
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.asarray(img)


def _upright(img: Image.Image) -> Image.Image:
    """`img` turned by its EXIF orientation tag (a phone's portrait photo is stored sideways)."""
    try:
        return ImageOps.exif_transpose(img)
    except (ValueError, TypeError, KeyError, SyntaxError, struct.error, OSError):
        return img   # a malformed tag: the pixels are still good, in the stored frame


def _unreadable(err: OSError) -> ImageDecodeError:
    reason = "permission denied" if isinstance(err, PermissionError) else err.strerror or str(err)
    return ImageDecodeError(f"cannot read file: {reason}")


def decode_image(path: str | os.PathLike, max_pixels: int | None = None, *, upright: bool = True) -> np.ndarray:
    """(H, W, 3) uint8 RGB, turned by the EXIF orientation unless `upright=False` (boxes
    annotated in the stored frame); raises ImageDecodeError(reason)."""
    limit = Image.MAX_IMAGE_PIXELS if max_pixels is None else max_pixels
    try:
        size = os.path.getsize(path)
    except OSError as err:
        raise _unreadable(err) from None
    if size == 0:
        raise ImageDecodeError("empty file (0 bytes)")
    try:
        with Image.open(path) as img:
            w, h = img.size
            if w <= 0 or h <= 0:
                raise ImageDecodeError(f"zero-sized image ({w}x{h})")
            if limit and w * h > limit:
                raise ImageDecodeError(f"{w}x{h} = {w * h} pixels is over PIL's decompression-bomb limit "
                                       f"of {limit} pixels")
            img.load()
            return _to_rgb(_upright(img) if upright else img)
    except ImageDecodeError:
        raise
    except Image.DecompressionBombError as err:
        raise ImageDecodeError(f"over PIL's decompression-bomb limit: {err}") from None
    except UnidentifiedImageError:
        raise ImageDecodeError("not an image PIL can read (unknown format or not an image file)") from None
    except OSError as err:
        if err.errno is not None:   # the file system's (PIL's decoding errors carry no errno)
            raise _unreadable(err) from None
        msg = str(err) or type(err).__name__
        if "truncated" in msg.lower():
            raise ImageDecodeError(f"truncated image data ({msg})") from None
        raise ImageDecodeError(f"corrupt image data ({msg})") from None
    except (ValueError, SyntaxError, EOFError, MemoryError, Image.DecompressionBombError) as err:
        raise ImageDecodeError(f"corrupt image data ({type(err).__name__}: {err})") from None
