"""A tiny RGB raster with lines, boxes and 5x7 text, written out as PNG with stdlib zlib.

Why not matplotlib or Pillow: the operator CLI draws one line chart per `alerts show --png`,
and a plotting stack of tens of megabytes is not worth that. This module knows nothing about
alerts (cloud.ops.views lays the chart out); it only rasterises and encodes.

>>> c = Canvas(4, 3, (255, 255, 255))
>>> c.fill_rect(1, 1, 2, 2, (255, 0, 0))
>>> c.pixel(1, 1), c.pixel(0, 0)
((255, 0, 0), (255, 255, 255))
>>> encode_png(c)[:8] == PNG_SIGNATURE
True
"""

from __future__ import annotations

import struct
import zlib
from typing import Final

RGB = tuple[int, int, int]

PNG_SIGNATURE: Final = b"\x89PNG\r\n\x1a\n"

GLYPH_W: Final = 5
GLYPH_H: Final = 7
_ROW_DIGITS: Final = "0123456789abcdefghijklmnopqrstuv"
# Printable ASCII 32..126, seven rows of five bits per glyph, one base-32 digit per row
# (bit 4 is the leftmost pixel). Drawn for this module; anything else renders as "?".
_FONT: Final = (
    "00000004444404aa00000aavavaa4fke5u4op248j3cik8lid44000002488842842224804lel40044v4400000c48000v000"
    "00000cc01248g0ehjlphe4c4444eeh1248vv2421he26aiv22vgu11he68guhhev124888ehhehheehhf12c0cc0cc00cc0c48"
    "248g84200v0v008421248eh12404eh1dlleehhvhhhuhhuhhuehggghesihhhisvgguggvvggugggehgnhhfhhhvhhhe44444e"
    "72222ichikokihggggggvhrllhhhhhpljhhehhhhheuhhugggehhhliduhhukihfgge11uv444444hhhhhhehhhhha4hhhllla"
    "hha4ahhhhha444v1248gve88888e0g84210e22222e4ah0000000000v840000000e1fhfggmphhu00egghe11djhhf00ehvge"
    "698s8880fhhf1eggmphhh40c444e20622icggikokic44444e00qllhh00mphhh00ehhhe00uhugg00djf1100mpggg00ege1u"
    "88s889600hhhjd00hhha400hhlla00ha4ah00hhf1e00v248v244844244444448442448008l200"
)


def _glyph(ch: str) -> tuple[int, ...]:
    code = ord(ch)
    if not 32 <= code <= 126:
        code = ord("?")
    start = (code - 32) * GLYPH_H
    return tuple(_ROW_DIGITS.index(d) for d in _FONT[start : start + GLYPH_H])


def text_width(text: str, scale: int = 1) -> int:
    """Pixels `text` takes at `scale` (one pixel column of spacing between glyphs)."""
    return max(0, len(text) * (GLYPH_W + 1) - 1) * scale


class Canvas:
    """An RGB image in memory; coordinates outside it are clipped, never an error."""

    def __init__(self, width: int, height: int, background: RGB = (255, 255, 255)) -> None:
        if width <= 0 or height <= 0:
            raise ValueError(f"canvas size must be positive, got {width}x{height}")
        self.width = width
        self.height = height
        self.data = bytearray(bytes(background) * (width * height))

    def pixel(self, x: int, y: int) -> RGB:
        i = (y * self.width + x) * 3
        return (self.data[i], self.data[i + 1], self.data[i + 2])

    def set(self, x: int, y: int, color: RGB) -> None:
        if 0 <= x < self.width and 0 <= y < self.height:
            i = (y * self.width + x) * 3
            self.data[i : i + 3] = bytes(color)

    def fill_rect(self, x0: int, y0: int, x1: int, y1: int, color: RGB) -> None:
        """Fill the inclusive box between two corners."""
        xa, xb = sorted((x0, x1))
        ya, yb = sorted((y0, y1))
        if xb < 0 or xa >= self.width or yb < 0 or ya >= self.height:
            return
        xa, xb = max(0, xa), min(self.width - 1, xb)
        ya, yb = max(0, ya), min(self.height - 1, yb)
        row = bytes(color) * (xb - xa + 1)
        for y in range(ya, yb + 1):
            i = (y * self.width + xa) * 3
            self.data[i : i + len(row)] = row

    def line(self, x0: int, y0: int, x1: int, y1: int, color: RGB, *, dash: int = 0) -> None:
        """Bresenham; `dash` > 0 draws that many pixels on, then as many off."""
        dx, dy = abs(x1 - x0), -abs(y1 - y0)
        sx, sy = (1 if x0 < x1 else -1), (1 if y0 < y1 else -1)
        err, n = dx + dy, 0
        while True:
            if not dash or (n // dash) % 2 == 0:
                self.set(x0, y0, color)
            n += 1
            if x0 == x1 and y0 == y1:
                return
            e2 = 2 * err
            if e2 >= dy:
                err += dy
                x0 += sx
            if e2 <= dx:
                err += dx
                y0 += sy

    def text(self, x: int, y: int, text: str, color: RGB, *, scale: int = 1) -> None:
        """Draw `text` with its top-left corner at (x, y)."""
        for k, ch in enumerate(text):
            gx = x + k * (GLYPH_W + 1) * scale
            for row, bits in enumerate(_glyph(ch)):
                for col in range(GLYPH_W):
                    if bits & (1 << (GLYPH_W - 1 - col)):
                        self.fill_rect(
                            gx + col * scale,
                            y + row * scale,
                            gx + (col + 1) * scale - 1,
                            y + (row + 1) * scale - 1,
                            color,
                        )


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def encode_png(canvas: Canvas) -> bytes:
    """8-bit truecolour, no interlace, filter type 0 on every row."""
    stride = canvas.width * 3
    raw = b"".join(b"\x00" + bytes(canvas.data[y * stride : (y + 1) * stride]) for y in range(canvas.height))
    header = struct.pack(">IIBBBBB", canvas.width, canvas.height, 8, 2, 0, 0, 0)
    return (
        PNG_SIGNATURE
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(raw, 9))
        + _chunk(b"IEND", b"")
    )


__all__ = ["GLYPH_H", "GLYPH_W", "PNG_SIGNATURE", "RGB", "Canvas", "encode_png", "text_width"]
