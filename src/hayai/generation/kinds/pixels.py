"""Pixel work around image-to-image passes, as A1111 does it (modules/images.py, modules/masking.py,
processing.py; ../shared/reference/wave2-ecosystem.md §3): resize modes, masks, mask blur, the crop of
"only masked" inpainting, the "fill" pre-fill, and pasting a result back through the blurred mask.
"""

from __future__ import annotations

import numpy as np

__all__ = ["resize_image", "binary_mask", "blur_mask", "crop_region", "prefill", "paste_back"]


def resize_image(mode: str, image, width: int, height: int):
    """A1111's `resize_image`: "Just resize" stretches, "Crop and resize" fills and crops the overflow,
    "Resize and fill" fits inside and stretches the edge rows or columns into the borders."""
    from PIL import Image

    lanczos = Image.Resampling.LANCZOS
    if mode in ("Just resize", "Just resize (latent upscale)") or image.size == (width, height):
        return image.resize((width, height), lanczos)
    ratio, src_ratio = width / height, image.width / image.height
    if mode == "Crop and resize":
        src_w = width if ratio > src_ratio else image.width * height // image.height
        src_h = height if ratio <= src_ratio else image.height * width // image.width
        resized = image.resize((src_w, src_h), lanczos)
        out = Image.new(image.mode, (width, height))
        out.paste(resized, (width // 2 - src_w // 2, height // 2 - src_h // 2))
        return out
    src_w = width if ratio < src_ratio else image.width * height // image.height
    src_h = height if ratio >= src_ratio else image.height * width // image.width
    resized = image.resize((src_w, src_h), lanczos)
    out = Image.new(image.mode, (width, height))
    left, top = width // 2 - src_w // 2, height // 2 - src_h // 2
    out.paste(resized, (left, top))
    if ratio < src_ratio and top > 0:
        out.paste(resized.resize((width, top), box=(0, 0, width, 0)), (0, 0))
        out.paste(resized.resize((width, height - top - src_h), box=(0, src_h, width, src_h)), (0, top + src_h))
    elif ratio > src_ratio and left > 0:
        out.paste(resized.resize((left, height), box=(0, 0, 0, height)), (0, 0))
        out.paste(resized.resize((width - left - src_w, height), box=(src_w, 0, src_w, height)), (left + src_w, 0))
    return out


def binary_mask(mask, init_image=None, invert: bool = False):
    """An "L" mask, 255 = redraw: a mask image's alpha when it has transparency (A1111's create_binary_mask),
    else its grey levels; `mask` "alpha" takes the init image's transparent pixels."""
    from PIL import ImageOps

    if mask == "alpha":
        alpha = init_image.convert("RGBA").getchannel("A")
        result = alpha.point(lambda a: 255 if a <= 128 else 0)
    elif mask.mode in ("RGBA", "LA") and mask.getextrema()[-1] != (255, 255):
        result = mask.getchannel("A").point(lambda a: 255 if a > 128 else 0)
    else:
        result = mask.convert("L")
    return ImageOps.invert(result) if invert else result


def _gaussian_kernel(sigma: float) -> np.ndarray:
    size = 2 * int(2.5 * sigma + 0.5) + 1  # A1111's kernel size for cv2.GaussianBlur
    x = np.arange(size) - size // 2
    kernel = np.exp(-(x**2) / (2 * sigma**2))
    return kernel / kernel.sum()


def blur_mask(mask, sigma: float):
    """Gaussian blur of an "L" mask with A1111's kernel size, reflecting at the border as cv2 does."""
    from PIL import Image

    if sigma <= 0:
        return mask
    kernel = _gaussian_kernel(sigma)
    pad = len(kernel) // 2
    data = np.asarray(mask, dtype=np.float64)
    for axis in (1, 0):
        widths = [(0, 0), (0, 0)]
        widths[axis] = (pad, pad)
        padded = np.pad(data, widths, mode="reflect")
        data = np.apply_along_axis(lambda line: np.convolve(line, kernel, mode="valid"), axis, padded)
    return Image.fromarray(np.clip(np.rint(data), 0, 255).astype(np.uint8), "L")


def crop_region(mask, padding: int, width: int, height: int) -> tuple[int, int, int, int]:
    """The box around the mask's non-zero pixels, `padding` wider, grown to the aspect ratio of
    width x height and kept inside the image (A1111's get_crop_region + expand_crop_region)."""
    box = mask.getbbox()
    if box is None:
        return (0, 0, mask.width, mask.height)
    x1, y1, x2, y2 = box
    x1, y1 = max(x1 - padding, 0), max(y1 - padding, 0)
    x2, y2 = min(x2 + padding, mask.width), min(y2 + padding, mask.height)
    ratio = width / height
    w, h = x2 - x1, y2 - y1
    if w / h < ratio:  # too narrow: widen
        grow = min(int(h * ratio) - w, mask.width - w)
        x1 = max(0, min(x1 - grow // 2, mask.width - w - grow))
        x2 = x1 + w + grow
    elif w / h > ratio:  # too flat: heighten
        grow = min(int(w / ratio) - h, mask.height - h)
        y1 = max(0, min(y1 - grow // 2, mask.height - h - grow))
        y2 = y1 + h + grow
    return (x1, y1, x2, y2)


def prefill(image, mask):
    """A1111's "fill": the masked area painted with ever less blurred colours of what surrounds it."""
    from PIL import Image, ImageFilter, ImageOps

    keep = ImageOps.invert(mask.convert("L"))
    premultiplied = Image.new("RGBa", image.size)
    premultiplied.paste(image.convert("RGBA").convert("RGBa"), mask=keep)
    out = Image.new("RGBA", image.size)
    for radius, repeats in ((256, 1), (64, 1), (16, 2), (4, 4), (2, 2), (0, 1)):
        blurred = premultiplied.filter(ImageFilter.GaussianBlur(radius)).convert("RGBA")
        for _ in range(repeats):
            out.alpha_composite(blurred)
    return out.convert("RGB")


def paste_back(original, result, blurred_mask, box: tuple[int, int, int, int] | None = None):
    """`result` over `original` through the blurred mask: where the mask is 0 the original's pixels come
    back exactly. With `box` ("only masked"), the result is scaled into that box first."""
    from PIL import Image

    original = original.convert("RGB")
    if box is not None:
        x1, y1, x2, y2 = box
        placed = original.copy()
        placed.paste(result.convert("RGB").resize((x2 - x1, y2 - y1), Image.Resampling.LANCZOS), (x1, y1))
        result = placed
    return Image.composite(result.convert("RGB"), original, blurred_mask)
