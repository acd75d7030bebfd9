"""Images over HTTP: base64 in (capped, checked, kept by content), base64 PNG with its infotext out.

An image a client sends becomes a file in `$HAYAI_HOME/inputs` (`hayai.generation.inputs.keep_input`), so
the job that uses it is plain data in the queue and reproducible later, like a CLI run. A client never
names a path: the server reads no file a request points at.
"""

from __future__ import annotations

import base64
import binascii
import io

from hayai.errors import RequestError

__all__ = ["MAX_IMAGE_BYTES", "decode_image", "keep_b64_image", "encode_png", "file_b64"]

MAX_IMAGE_BYTES = 50 * 1024 * 1024  # of one decoded image; the request body is capped as a whole too
MAX_PIXELS = 8192 * 8192


def decode_image(data: str, field: str):
    """A PIL image from base64 text (with or without a `data:image/...;base64,` prefix, as A1111 takes)."""
    from PIL import Image

    if not isinstance(data, str) or not data:
        raise RequestError(f"{field}: expected an image as base64 text")
    if data.startswith("data:"):
        header, _, data = data.partition(",")
        if ";base64" not in header:
            raise RequestError(f"{field}: a data: URL must be base64 ('data:image/png;base64,...')")
    if data.startswith(("http://", "https://", "/", "file:")):
        raise RequestError(f"{field}: send the image itself as base64; hayai's server does not fetch URLs or read paths")
    if len(data) > MAX_IMAGE_BYTES * 4 // 3 + 4:
        raise RequestError(f"{field}: the image is larger than {MAX_IMAGE_BYTES // (1024 * 1024)} MB")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as error:
        raise RequestError(f"{field}: not valid base64 ({error})") from None
    try:
        image = Image.open(io.BytesIO(raw))
        if image.width * image.height > MAX_PIXELS:
            raise RequestError(f"{field}: the image is {image.width}x{image.height}, larger than 8192x8192 pixels")
        image.load()
    except RequestError:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise RequestError(f"{field}: the data is not an image hayai can open ({error})") from None
    return image


def keep_b64_image(data: str, field: str) -> str:
    """Decode an image and keep it in the inputs folder; the kept file's path (what a request names)."""
    from hayai.generation.inputs import keep_input

    return keep_input(decode_image(data, field), field)


def encode_png(image, infotext: str | None) -> str:
    """Base64 of a PNG of `image`, with the infotext as its `parameters` text (as A1111's API sends)."""
    from PIL import PngImagePlugin

    buffer = io.BytesIO()
    info = PngImagePlugin.PngInfo()
    if infotext:
        info.add_text("parameters", infotext)
    image.save(buffer, format="PNG", pnginfo=info)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def file_b64(path) -> str:
    with open(path, "rb") as file:
        return base64.b64encode(file.read()).decode("ascii")
