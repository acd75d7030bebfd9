"""Input images (img2img's init image, inpainting's mask), kept by content so a run can be made again.

`keep_input(path_or_image)` copies the image into `$HAYAI_HOME/inputs/<sha256>.png` (lossless, once per
content) and returns that path: the request that is logged and embedded in every output names the
kept copy, so `--from OUTPUT` finds the exact input even after the user's file changed or moved.
A1111 cannot re-make an img2img image from its infotext; hayai can.
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

from hayai import paths
from hayai.errors import RequestError

__all__ = ["keep_input", "open_input", "inputs_dir"]

MAX_INPUT_PIXELS = 8192 * 8192


def inputs_dir() -> Path:
    return paths.hayai_home() / "inputs"


def open_input(path: str | os.PathLike, field: str):
    """The image at `path`, loaded; RequestError naming `field` if it is missing or not an image."""
    from PIL import Image

    path = Path(path).expanduser()
    if not path.is_file():
        raise RequestError(f"{field}={str(path)!r}: file not found")
    try:
        with Image.open(path) as image:
            if image.width * image.height > MAX_INPUT_PIXELS:
                raise RequestError(f"{field}={str(path)!r} is {image.width}x{image.height}: larger than 8192x8192 pixels")
            image.load()
            return image.copy()
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise RequestError(f"{field}={str(path)!r} cannot be opened as an image ({error})") from None


def keep_input(source, field: str = "init_image") -> str:
    """Keep a copy of an input image (a path or a PIL image) by content; return the kept file's path."""
    image = open_input(source, field) if not hasattr(source, "save") else source
    if Path(str(source)).parent == inputs_dir() and not hasattr(source, "save"):
        return str(Path(source))  # already kept (a request read back from an image)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    data = buffer.getvalue()
    target = inputs_dir() / f"{hashlib.sha256(data).hexdigest()}.png"
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, target)
    return str(target)
