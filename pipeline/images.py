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

Decoding on a GPU (`jpeg_for_device`, `decode_jpegs_on_device`): nvJPEG through
`torchvision.io.decode_jpeg`, for the JPEGs it decodes to what PIL gives up to the two
decoders' IDCT/upsampling rounding (torchvision's own test bound: mean |difference| < 2 of
255): complete files (ending in the EOI marker) in YCbCr or grayscale, within the size
limit. Everything else (CMYK/YCCK, Adobe RGB-coded, truncated, PNG, ...) and every JPEG
nvJPEG refuses takes the PIL path, so its decoding and its failure reasons are PIL's. EXIF
orientation is applied on the device with the transposes PIL's `exif_transpose` uses.
"""

from __future__ import annotations

import io
import logging
import os
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from pipeline.errors import PipelineError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")

# The size check below replaces PIL's warning (which would print once per process and
# still decode the image); PIL's own hard error at 2x the limit is caught as well.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
# torchvision 0.29 deprecates its image codecs in favour of TorchCodec; decode_jpeg still works
warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torchvision\.io\.image")


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


def read_image_file(path: str | os.PathLike) -> bytes:
    """The file's bytes; ImageDecodeError (the reason decode_image would give) if it cannot be read or is empty."""
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as err:
        raise _unreadable(err) from None
    if not data:
        raise ImageDecodeError("empty file (0 bytes)")
    return data


def decode_image(path: str | os.PathLike, max_pixels: int | None = None, *, upright: bool = True) -> np.ndarray:
    """(H, W, 3) uint8 RGB, turned by the EXIF orientation unless `upright=False` (boxes
    annotated in the stored frame); raises ImageDecodeError(reason)."""
    try:
        size = os.path.getsize(path)
    except OSError as err:
        raise _unreadable(err) from None
    if size == 0:
        raise ImageDecodeError("empty file (0 bytes)")
    return _decode(path, max_pixels, upright)


def decode_image_data(data: bytes, max_pixels: int | None = None, *, upright: bool = True) -> np.ndarray:
    """`decode_image` of a file's bytes (already read, e.g. by `read_image_file`)."""
    if not data:
        raise ImageDecodeError("empty file (0 bytes)")
    return _decode(io.BytesIO(data), max_pixels, upright)


def _decode(source, max_pixels: int | None, upright: bool) -> np.ndarray:
    limit = Image.MAX_IMAGE_PIXELS if max_pixels is None else max_pixels
    try:
        with Image.open(source) as img:
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


# -- decoding on a GPU -------------------------------------------------------------------------

@dataclass(frozen=True)
class DeviceJpeg:
    """A JPEG that nvJPEG can take as it is: its bytes (a uint8 CPU tensor, what
    `torchvision.io.decode_jpeg` reads) and what its header says."""
    data: object                  # torch.Tensor (1-D uint8); typed loosely to keep torch out of imports
    height: int                   # the stored frame
    width: int
    orientation: int              # EXIF orientation 1-8; 1 = as stored


def _orientation(img: Image.Image) -> int:
    """The EXIF orientation `_upright` would apply: 1 wherever `ImageOps.exif_transpose`
    would fail (a malformed tag; `_upright` then keeps the stored frame)."""
    try:
        exif = img.getexif()
        value = exif.get(ExifTags.Base.Orientation, 1)
        if value in (2, 3, 4, 5, 6, 7, 8):
            del exif[ExifTags.Base.Orientation]     # what exif_transpose does next; it must succeed too
            exif.tobytes()
            return int(value)
    except (ValueError, TypeError, KeyError, SyntaxError, struct.error, OSError):
        pass
    return 1


def jpeg_for_device(data: bytes, max_pixels: int | None = None) -> DeviceJpeg | None:
    """`data` ready for nvJPEG when it is a complete JPEG in YCbCr or grayscale within the
    size limit (header only: no pixel is decoded here); None when the PIL path must decode
    it (other formats and colour spaces, truncated or trailing data, over the limit, ...)."""
    import torch

    limit = Image.MAX_IMAGE_PIXELS if max_pixels is None else max_pixels
    if not (data.startswith(b"\xff\xd8") and data.endswith(b"\xff\xd9")):
        return None
    try:
        with Image.open(io.BytesIO(data)) as img:
            w, h = img.size
            if (img.format != "JPEG" or img.mode not in ("RGB", "L") or img.info.get("adobe_transform") == 0
                    or w <= 0 or h <= 0 or (limit and w * h > limit)):
                return None
            orientation = _orientation(img)
    except Exception:  # noqa: BLE001 - anything odd goes to the PIL path, which names the problem
        return None
    return DeviceJpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), h, w, orientation)


def apply_orientation(chw, orientation: int):
    """(C, H, W) tensor (any device) turned as `ImageOps.exif_transpose` turns an image with
    this EXIF orientation (PIL's rotations are counter-clockwise)."""
    import torch

    if orientation == 2:
        return chw.flip(-1)                                  # FLIP_LEFT_RIGHT
    if orientation == 3:
        return chw.flip(-2, -1)                              # ROTATE_180
    if orientation == 4:
        return chw.flip(-2)                                  # FLIP_TOP_BOTTOM
    if orientation == 5:
        return chw.transpose(-2, -1)                         # TRANSPOSE
    if orientation == 6:
        return torch.rot90(chw, k=-1, dims=(-2, -1))         # ROTATE_270
    if orientation == 7:
        return chw.transpose(-2, -1).flip(-2, -1)            # TRANSVERSE
    if orientation == 8:
        return torch.rot90(chw, k=1, dims=(-2, -1))          # ROTATE_90
    return chw


def decode_jpegs_on_device(jpegs: list[DeviceJpeg], device) -> list:
    """nvJPEG decodes of `jpegs` in one batched call: per image a (3, H, W) uint8 RGB tensor
    on `device` in the upright frame, or None where nvJPEG failed or disagreed with the
    header (decode that one with PIL). A failed batch is retried image by image, since the
    batched call returns nothing when one image fails."""
    from torchvision.io import ImageReadMode, decode_jpeg

    if not jpegs:
        return []
    try:
        decoded = decode_jpeg([j.data for j in jpegs], mode=ImageReadMode.RGB, device=device)
    except RuntimeError:
        decoded = []
        for j in jpegs:
            try:
                decoded.append(decode_jpeg(j.data, mode=ImageReadMode.RGB, device=device))
            except RuntimeError:
                decoded.append(None)
    return [None if t is None or tuple(t.shape) != (3, j.height, j.width) else apply_orientation(t, j.orientation)
            for j, t in zip(jpegs, decoded)]
