"""PNG images of reconstructions: one pixel per object pixel, a labelled colour bar, a scale bar."""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

import numpy as np

from ptychopinn.io.atomic import atomic_path
from ptychopinn.io.units import format_length

#: Images lower than this many pixels get no tick labels (the text would not fit).
MIN_LABELLED_HEIGHT = 40
#: A phase image whose display range spans at least this much is shown on a cyclic map.
CYCLIC_SPAN_RAD = 0.95 * 2 * math.pi


def save_image(
    path: Path,
    image: np.ndarray,
    cmap: str,
    mask: np.ndarray | None = None,
    unit: str = "",
    pixel_size_m: float | None = None,
) -> None:
    """Write :func:`render_png` of ``image`` to ``path`` (atomic)."""
    data = render_png(image, cmap, mask, unit, pixel_size_m, title=path.stem.replace("_", " "))
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def render_png(
    image: np.ndarray,
    cmap: str,
    mask: np.ndarray | None = None,
    unit: str = "",
    pixel_size_m: float | None = None,
    title: str = "",
    compress_level: int = 6,
) -> bytes:
    """``image`` as PNG bytes, one pixel per object pixel, with a colour bar.

    ``compress_level`` is zlib's (0-9): the live page, redrawn for every batch of files,
    takes 1 (about 3x faster to encode, a somewhat larger image).

    ``cmap="phase"`` picks the colour map for a phase: the cyclic ``twilight`` when the
    display range spans a full turn (at least :data:`CYCLIC_SPAN_RAD`), where wrapped values
    meet; ``viridis`` otherwise, whose two ends look different (on a cyclic map the lowest
    and highest phases of a small range would share one colour).

    The display range is the 0.5 to 99.5 percentile of the pixels in ``mask`` (pass the
    well-lit ones: a barely lit border would set the range and leave the object dark). The
    colour bar on the right is labelled with the top, middle and bottom of the range (in
    ``unit``); with ``pixel_size_m`` a scale bar with its length sits in the lower left
    corner. The range also goes into the PNG's text chunks (``Title``, ``Comment``). No
    figure is drawn: this is about 20x faster than a matplotlib figure and keeps every pixel
    of a large object.

    Shapes
    ------
    image : (H, W) real; mask : (H, W) bool, the pixels that set the display range
    """
    from matplotlib import colormaps
    from PIL import Image, PngImagePlugin

    values = image[mask] if mask is not None and mask.any() else image
    vmin, vmax = (float(v) for v in np.percentile(values, [0.5, 99.5])) if values.size else (0, 1)
    scaled = np.clip((image - vmin) / ((vmax - vmin) or 1.0), 0.0, 1.0)
    if cmap == "phase":
        cmap = "twilight" if vmax - vmin >= CYCLIC_SPAN_RAD else "viridis"
    colour = colormaps[cmap]
    rgb = colour(scaled, bytes=True)[..., :3]  # (H, W, 3) uint8
    h, w = image.shape
    bar_width = max(4, w // 24)
    bar = colour(np.linspace(1.0, 0.0, h)[:, None].repeat(bar_width, axis=1), bytes=True)
    gap = np.full((h, max(2, bar_width // 3), 3), 255, dtype=np.uint8)
    labels = [_label(v, unit, vmax - vmin) for v in (vmax, (vmin + vmax) / 2, vmin)]
    font = _font(h)
    label_width = max(_text_width(font, t) for t in labels) + 6 if font is not None else 0
    column = np.full((h, label_width, 3), 255, dtype=np.uint8)
    canvas = Image.fromarray(np.concatenate([rgb, gap, bar[..., :3], column], axis=1))
    if font is not None:
        _draw_ticks(canvas, font, labels, w + gap.shape[1] + bar_width)
        if pixel_size_m is not None and pixel_size_m > 0:
            _draw_scale_bar(canvas, font, w, h, pixel_size_m)
    info = PngImagePlugin.PngInfo()
    info.add_text("Title", title)
    suffix = f" {unit}" if unit else ""
    info.add_text(
        "Comment",
        f"colour map {cmap}, range {vmin:.6g} to {vmax:.6g}{suffix} "
        "(colour bar on the right, top = max)"
        + (f", pixel size {pixel_size_m:.4g} m" if pixel_size_m else ""),
    )
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG", pnginfo=info, compress_level=compress_level)
    return buffer.getvalue()


def _label(value: float, unit: str, span: float) -> str:
    """``value`` with the decimals its range needs (three significant digits of the span)."""
    decimals = max(0, 2 - math.floor(math.log10(span))) if span > 0 else 3
    return f"{value:.{decimals}f} {unit}".strip()


def _font(height: int) -> Any:
    """A small font for the labels (None: the image is too low for them)."""
    if height < MIN_LABELLED_HEIGHT:
        return None
    from pathlib import Path

    import matplotlib
    from PIL import ImageFont

    size = max(10, min(16, height // 30))
    # matplotlib's DejaVu Sans has the micro sign of "µm"; Pillow's built-in font draws a box
    dejavu = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    if dejavu.is_file():
        return ImageFont.truetype(str(dejavu), size=size)
    return ImageFont.load_default(size=size)


def _text_width(font: Any, text: str) -> int:
    left, _, right, _ = font.getbbox(text)
    return int(right - left)


def _draw_ticks(canvas: Any, font: Any, labels: list[str], x_bar_end: int) -> None:
    """Tick marks at the top, middle and bottom of the bar, each with its value."""
    from PIL import ImageDraw

    draw = ImageDraw.Draw(canvas)
    h = canvas.height
    _, top, _, bottom = font.getbbox("0")
    text_h = bottom - top
    for label, y in zip(labels, (0, (h - 1) // 2, h - 1), strict=True):
        draw.line([(x_bar_end, y), (x_bar_end + 2, y)], fill=(0, 0, 0))
        ty = min(max(y - text_h // 2 - top, 0), h - text_h - top - 1)
        draw.text((x_bar_end + 4, ty), label, fill=(0, 0, 0), font=font)


def _draw_scale_bar(canvas: Any, font: Any, w: int, h: int, pixel_size_m: float) -> None:
    """A white bar of a round length (about a fifth of the width), labelled, lower left."""
    from PIL import ImageDraw

    length_m, text = _round_length(0.2 * w * pixel_size_m)
    length_px = int(round(length_m / pixel_size_m))
    if length_px < 4:
        return
    draw = ImageDraw.Draw(canvas)
    x0, y1 = max(4, w // 20), h - max(4, h // 20)
    thick = max(2, h // 100)
    draw.rectangle([x0, y1 - thick, x0 + length_px, y1], fill=(255, 255, 255), outline=(0, 0, 0))
    _, top, _, bottom = font.getbbox(text)
    draw.text(
        (x0, y1 - thick - 3 - (bottom - top) - top), text, fill=(255, 255, 255), font=font,
        stroke_width=1, stroke_fill=(0, 0, 0),
    )  # fmt: skip


def _round_length(target_m: float) -> tuple[float, str]:
    """The largest 1, 2 or 5 x 10^k metres not above ``target_m``, and its label."""
    exponent = math.floor(math.log10(target_m))
    mantissa = max(m for m in (1, 2, 5) if m * 10.0**exponent <= target_m * (1 + 1e-9))
    length = mantissa * 10.0**exponent
    return length, format_length(length)
