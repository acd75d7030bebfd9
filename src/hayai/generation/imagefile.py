"""Saving generated images with their metadata, and reading it back.

Every image carries two records of how it was made:
- the A1111 infotext (see `infotext.py`), where A1111 puts it, so A1111, Forge, civitai and
  third-party readers understand it: the PNG text chunk `parameters`; for JPEG and WebP the EXIF
  UserComment (tag 0x9286 in the Exif IFD), written as piexif's "unicode" encoding that A1111 uses:
  b"UNICODE\\x00" + UTF-16 big-endian text, in a big-endian ("MM") EXIF block like piexif's;
- hayai's own JSON (the full request and run facts): the PNG text chunk `hayai`; for JPEG and WebP
  an XMP packet holding the JSON as the text of one element `hayai:meta` in the namespace `XMP_NS`.

Saving is atomic: the image is written to a hidden temporary file in the target folder, flushed to
disk, then linked under its final name, which claims the name atomically: a crash never leaves a
half-written image, existing files are never overwritten, and several processes saving into one
folder at once each get their own name. Temporary files a killed process left behind are removed by
the next save into that folder once they are `STALE_TEMP_SECONDS` old.
"""

from __future__ import annotations

import json
import os
import re
import struct
import time
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape

from PIL import ExifTags, Image, PngImagePlugin

from hayai.errors import HayaiError, RequestError, disk_full

__all__ = ["ImageMetadata", "XMP_NS", "save_image", "read_image_metadata", "next_index", "unique_path", "claim_name"]

FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}
QUALITY = 95  # JPEG and WebP
XMP_NS = "urn:hayai:xmp:1.0/"

# EXIF UserComment starts with an 8-byte character code (EXIF 2.3, table 9)
_UNICODE = b"UNICODE\x00"
_LONG, _UNDEFINED = 4, 7  # TIFF field types
_COMMENT_CODECS = {_UNICODE: "utf-16-be", b"ASCII\x00\x00\x00": "ascii", b"JIS\x00\x00\x00\x00\x00": "shift_jis"}
_XMP_TEMPLATE = (
    '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>'
    '<x:xmpmeta xmlns:x="adobe:ns:meta/">'
    '<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
    '<rdf:Description rdf:about="" xmlns:hayai="{ns}"><hayai:meta>{text}</hayai:meta></rdf:Description>'
    "</rdf:RDF></x:xmpmeta>"
    '<?xpacket end="r"?>'
)
_DIGITS = re.compile(r"[0-9]+")
# a save takes seconds; a temporary file this old was left by a process that was killed while saving
STALE_TEMP_SECONDS = 600
_TEMP_RE = re.compile(r"\..+\.[0-9a-f]{8}\.tmp")
_swept: dict[Path, float] = {}  # folder -> when this process last removed stale temporary files from it


@dataclass(frozen=True)
class ImageMetadata:
    infotext: str | None  # the A1111 parameters text
    hayai: dict | None  # hayai's own JSON record


def save_image(image: Image.Image, path: Path, *, infotext: str, hayai_meta: dict, next_free: bool = False) -> Path:
    """Write `image` to `path` (format from the suffix) with both metadata records; returns the path written.

    If `path` exists: with `next_free`, the image takes the first free name "name-1.ext", "name-2.ext",
    ... (see `claim_name`); without, FileExistsError. Creates the parent folder if needed.
    """
    path = Path(path)
    image_format = FORMATS.get(path.suffix.lower())
    if image_format is None:
        raise HayaiError(f"path={str(path)!r} has an unsupported suffix; use one of: {', '.join(FORMATS)}")
    if path.exists() and not next_free:
        raise FileExistsError(f"{path} already exists; hayai never overwrites an image (pick a free name with unique_path())")
    hayai_json = json.dumps(hayai_meta)
    if image_format == "PNG":
        pnginfo = PngImagePlugin.PngInfo()
        pnginfo.add_text("parameters", infotext)  # tEXt, or iTXt when the text is not latin-1
        pnginfo.add_text("hayai", hayai_json)
        options: dict = {"pnginfo": pnginfo}
    else:
        xmp = _XMP_TEMPLATE.format(ns=XMP_NS, text=escape(hayai_json))
        options = {"quality": QUALITY, "exif": _exif_user_comment(infotext), "xmp": xmp.encode("utf-8")}

    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(path.parent)
    temp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(temp, "xb") as file:
            image.save(file, format=image_format, **options)
            file.flush()
            os.fsync(file.fileno())
        return claim_name(temp, path, next_free=next_free)
    except OSError as error:
        full = disk_full(error, path.parent)
        if full is None:
            raise
        raise full from error
    finally:  # also on KeyboardInterrupt: never leave the temporary file behind
        temp.unlink(missing_ok=True)


def claim_name(temp: Path, path: Path, *, next_free: bool = True) -> Path:
    """Give the finished file `temp` the name `path`, or with `next_free` the first free "name-N.ext"
    when `path` is taken; returns the name given. `temp` stays (the caller removes it).

    A hard link fails when the name exists, so two processes never claim the same name and an
    existing file is never replaced. Where the file system has no hard links, an empty file created
    with O_EXCL claims the name and the finished file is renamed over it.
    """
    candidate, n = path, 0
    while True:
        try:
            _link(temp, candidate)
            return candidate
        except FileExistsError:
            if not next_free:
                raise FileExistsError(f"{path} already exists; hayai never overwrites an image (pick a free name with unique_path())") from None
            n += 1
            candidate = path.with_name(f"{path.stem}-{n}{path.suffix}")


def _link(temp: Path, name: Path) -> None:
    try:
        os.link(temp, name)
    except FileExistsError:
        raise
    except OSError:  # no hard links on this file system (FAT, some network shares)
        os.close(os.open(name, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        os.replace(temp, name)


def _remove_stale_temps(folder: Path) -> None:
    """Remove the temporary files of saves that were killed half-way (looks at most every few minutes)."""
    now = time.time()
    if now - _swept.get(folder, 0.0) < STALE_TEMP_SECONDS / 2:
        return
    _swept[folder] = now
    cutoff = now - STALE_TEMP_SECONDS
    for entry in os.scandir(folder):
        try:
            if _TEMP_RE.fullmatch(entry.name) and entry.is_file(follow_symlinks=False) and entry.stat().st_mtime < cutoff:
                os.unlink(entry.path)
        except FileNotFoundError:  # another process removed it first
            pass


def _exif_user_comment(text: str) -> bytes:
    """An EXIF block holding only UserComment = `text`: the entries A1111's `piexif.dump` writes.

    Written by hand because Pillow's `Image.Exif` stores a bytes UserComment with type BYTE instead of
    UNDEFINED, which piexif (so A1111) then cannot read. Layout (big-endian TIFF, offsets from "MM"):
    header at 0, IFD0 at 8 with one entry pointing to the Exif IFD at 26, which has one entry pointing
    to the comment at 44. (JPEG limits EXIF to 64 KiB, so about 32,000 characters of infotext; Pillow
    refuses longer ones with ValueError.)
    """
    comment = _UNICODE + text.encode("utf-16-be")
    ifd0 = struct.pack(">HHHII", 1, ExifTags.IFD.Exif, _LONG, 1, 26) + b"\0\0\0\0"
    exif_ifd = struct.pack(">HHHII", 1, ExifTags.Base.UserComment, _UNDEFINED, len(comment), 44) + b"\0\0\0\0"
    return b"Exif\0\0" + b"MM\0\x2a" + struct.pack(">I", 8) + ifd0 + exif_ifd + comment


def read_image_metadata(path: Path) -> ImageMetadata:
    """The infotext and hayai record of an image (PNG, JPEG or WebP); None for what it does not carry."""
    try:
        with Image.open(path) as image:
            infotext = hayai_json = None
            if image.format == "PNG":
                # chunks before the image data are in `info`; `text` also reads those after it (decodes the image)
                chunks = image.info if "parameters" in image.info else image.text
                infotext, hayai_json = chunks.get("parameters"), chunks.get("hayai")
            if infotext is None:
                infotext = _read_user_comment(image.getexif())
            if hayai_json is None:
                hayai_json = _read_xmp(image.info.get("xmp"))
            hayai = json.loads(hayai_json) if hayai_json is not None else None
    except FileNotFoundError:
        raise RequestError(f"{path}: file not found") from None
    # OSError: missing or not an image; SyntaxError: Pillow's "broken PNG"; ValueError: bad JSON or XML
    except (OSError, SyntaxError, ValueError) as exc:
        raise HayaiError(f"cannot read image metadata from {path}: {exc}") from exc
    return ImageMetadata(infotext=infotext, hayai=hayai)


def _read_user_comment(exif: Image.Exif) -> str | None:
    comment = exif.get_ifd(ExifTags.IFD.Exif).get(ExifTags.Base.UserComment)
    if not comment:
        return None
    if isinstance(comment, str):  # Pillow gives text when the tag was stored with an ASCII type
        return comment
    codec = _COMMENT_CODECS.get(comment[:8])
    if codec is None:  # undefined character code: A1111 falls back to UTF-8
        return comment.decode("utf-8", errors="ignore")
    return comment[8:].decode(codec)


def _read_xmp(xmp: bytes | str | None) -> str | None:
    if not xmp:
        return None
    if isinstance(xmp, str):
        xmp = xmp.encode("utf-8")
    if XMP_NS.encode() not in xmp:  # someone else's XMP: do not parse it
        return None
    element = ET.fromstring(xmp.rstrip(b"\x00 \r\n\t")).find(f".//{{{XMP_NS}}}meta")
    return None if element is None else (element.text or "")


def next_index(folder: Path) -> int:
    """A1111's file numbering: 1 + the largest number that starts a file name in `folder` (0 if none).

    As A1111, the number is the part of the name before the first '-' or the suffix: "00012-42.png" -> 12.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    numbers = [int(head) for name in os.listdir(folder) if _DIGITS.fullmatch(head := Path(name).stem.split("-")[0])]
    return max(numbers, default=-1) + 1


def unique_path(path: Path) -> Path:
    """`path` if no file has that name, else the first free "name-1.ext", "name-2.ext", ..."""
    path = Path(path)
    candidate, n = path, 0
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.stem}-{n}{path.suffix}")
    return candidate
