"""Image files of every awkward kind a user may hand to textsam (written on demand into a folder)."""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` RGB pixels, with almost no pixel data (a
    decompression-bomb probe: decoding it fully would need width*height*3 bytes)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def scene(size: tuple[int, int] = (96, 72)) -> Image.Image:
    """A small RGB picture of a red disc and a blue square on grey."""
    from PIL import ImageDraw

    w, h = size
    im = Image.new("RGB", size, (200, 200, 200))
    d = ImageDraw.Draw(im)
    d.ellipse([w * 0.1, h * 0.2, w * 0.45, h * 0.7], fill=(220, 40, 40))
    d.rectangle([w * 0.55, h * 0.25, w * 0.9, h * 0.75], fill=(40, 80, 220))
    return im


def good_png(path: Path, size: tuple[int, int] = (96, 72)) -> Path:
    scene(size).save(path)
    return path


def write(kind: str, folder: Path) -> Path:
    """Write a file of ``kind`` into ``folder`` and return its path. Kinds: see :data:`KINDS`."""
    folder.mkdir(parents=True, exist_ok=True)
    base = scene()
    if kind == "zero_byte":
        p = folder / "empty.png"
        p.write_bytes(b"")
    elif kind == "truncated_png":
        buf = io.BytesIO()
        scene((200, 150)).save(buf, format="PNG")
        p = folder / "truncated.png"
        p.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    elif kind == "truncated_jpeg":
        buf = io.BytesIO()
        scene((200, 150)).save(buf, format="JPEG")
        p = folder / "truncated.jpg"
        p.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 3])
    elif kind == "text_as_png":
        p = folder / "notes.png"
        p.write_text("these are my notes, not a picture\n")
    elif kind == "html_as_jpg":
        p = folder / "page.jpg"
        p.write_text("<!doctype html><html><body>404 Not Found</body></html>\n")
    elif kind == "bomb_png":
        p = folder / "bomb.png"
        p.write_bytes(png_header_only(30000, 30000))
    elif kind == "big_150mp_png":  # between our limit (120 MP) and PIL's own bomb check (179 MP)
        p = folder / "big150.png"
        p.write_bytes(png_header_only(15000, 10000))
    elif kind == "sixteen_bit_png":
        p = folder / "depth16.png"
        arr = (np.linspace(0, 65535, 96 * 72).reshape(72, 96)).astype(np.uint16)
        Image.fromarray(arr).save(p)
    elif kind == "cmyk_jpeg":
        p = folder / "cmyk.jpg"
        base.convert("CMYK").save(p)
    elif kind == "palette_transparent_png":
        p = folder / "palette.png"
        pal = base.convert("P")
        pal.info["transparency"] = 0
        pal.save(p, transparency=0)
    elif kind == "grayscale_png":
        p = folder / "grey.png"
        base.convert("L").save(p)
    elif kind == "exif_rotated_jpeg":
        p = folder / "rotated.jpg"
        exif = Image.Exif()
        exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed
        base.save(p, exif=exif)
    elif kind == "animated_gif":
        p = folder / "anim.gif"
        frames = [base, base.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
        frames[0].save(p, save_all=True, append_images=frames[1:], duration=100, loop=0)
    elif kind == "webp":
        p = folder / "photo.webp"
        base.save(p, format="WEBP")
    elif kind == "tiff":
        p = folder / "photo.tiff"
        base.save(p, format="TIFF")
    elif kind == "one_pixel":
        p = folder / "dot.png"
        Image.new("RGB", (1, 1), (255, 0, 0)).save(p)
    elif kind == "rgba_png":
        p = folder / "alpha.png"
        base.convert("RGBA").save(p)
    elif kind == "fifo":
        p = folder / "pipe.png"
        os.mkfifo(p)
    elif kind == "good_png":
        p = good_png(folder / "good.png")
    else:
        raise KeyError(kind)
    return p


# kinds a reader must reject with a message, and kinds it must read
BAD_KINDS = ("zero_byte", "truncated_png", "truncated_jpeg", "text_as_png", "html_as_jpg", "bomb_png",
             "big_150mp_png", "fifo")
GOOD_KINDS = ("sixteen_bit_png", "cmyk_jpeg", "palette_transparent_png", "grayscale_png", "exif_rotated_jpeg",
              "animated_gif", "webp", "tiff", "one_pixel", "rgba_png", "good_png")
KINDS = BAD_KINDS + GOOD_KINDS
