"""A request's images: where they may come from, what is decoded, and the 400s.

Every protocol's face turns its images into chat `ImagePart`s (OpenAI's
`image_url`, Anthropic's `image` blocks, Responses' `input_image`), so this
room sees one shape and names the part as the client wrote it
(`messages[2].content[1]`, `messages.0.content.3`, `input.1.content.0`).

It decides:
- **Sources.** Data URLs (and Anthropic's base64) always. Remote `http(s)`
  URLs only from hosts in `IMPETUS_IMAGE_URL_HOSTS`, never following a
  redirect, within `image_max_bytes` and `image_url_timeout_s`: a server that
  fetches whatever a client names can be pointed at the LAN's own services.
- **Limits, before decoding.** Bytes (a base64 string is measured before it
  is decoded), pixels read from the header (a 100-byte PNG can claim 100,000 x
  100,000: 40 GB as RGBA), and the number of images. PIL's own
  decompression-bomb check is kept as a second line.
- **Decoding.** The first frame, in RGB; a truncated or foreign file is a
  400, never a 500.

It must not know the model: the processor (models.vision) makes tokens and
pixels from what this returns.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass

from PIL import Image

from impetus.web import bad_request


@dataclass
class Picture:
    data: bytes  # the file as sent
    image: Image.Image  # decoded, RGB
    digest: bytes  # sha256 of `data`: the prefix cache knows the image by it


def where(part, default: str) -> str:
    return part._where or default


def load(part, param: str, settings) -> Picture:
    """The image of one `ImagePart`, or a 400 naming `param`."""
    data = _bytes(part.image_url.url, param, settings)
    return Picture(data, decode(data, param, settings.image_max_pixels), hashlib.sha256(data).digest())


def _bytes(url: str, param: str, settings) -> bytes:
    limit = settings.image_max_bytes
    if url.startswith("data:"):
        header, _, payload = url.partition(",")
        if not header.endswith(";base64"):
            raise bad_request("An image data URL must be base64 (data:image/png;base64,...).", param=param,
                              code="invalid_image")
        if len(payload) > (limit + 2) // 3 * 4 + 4:
            raise _too_large(param, limit)
        try:
            return base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise bad_request("The image's base64 data is not valid base64.", param=param,
                              code="invalid_image") from None
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme in ("http", "https"):
        return _fetch(url, param, settings)
    raise bad_request("An image must be a data URL (data:image/png;base64,...) or an http(s) URL.", param=param,
                      code="invalid_image_url")


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def _fetch(url: str, param: str, settings) -> bytes:
    host = (urllib.parse.urlsplit(url).hostname or "").lower()
    if host not in {h.lower() for h in settings.image_url_hosts}:
        raise bad_request(f"This server does not fetch images from {host or 'that URL'}: send the image as a "
                          "data URL (base64), or ask the operator to allow the host (IMPETUS_IMAGE_URL_HOSTS).",
                          param=param, code="image_url_not_allowed")
    limit = settings.image_max_bytes
    opener = urllib.request.build_opener(_NoRedirect)
    try:
        with opener.open(urllib.request.Request(url, headers={"User-Agent": "impetus"}),
                         timeout=settings.image_url_timeout_s) as answer:
            data = answer.read(limit + 1)
    except (urllib.error.URLError, OSError, ValueError) as error:
        raise bad_request(f"The image at {url[:200]} could not be fetched: {error}", param=param,
                          code="image_url_unreachable") from None
    if len(data) > limit:
        raise _too_large(param, limit)
    return data


def _too_large(param: str, limit: int):
    return bad_request(f"The image is larger than {limit} bytes (IMPETUS_IMAGE_MAX_BYTES).", param=param,
                       code="image_too_large")


def decode(data: bytes, param: str, max_pixels: int) -> Image.Image:
    try:
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:
        raise bad_request(f"The image claims more than {max_pixels} pixels (IMPETUS_IMAGE_MAX_PIXELS).",
                          param=param, code="image_too_large") from None
    except Exception:
        raise bad_request("The data is not an image this server can read (PNG, JPEG, GIF, WebP, BMP, ...).",
                          param=param, code="invalid_image") from None
    width, height = image.size
    if width * height > max_pixels:
        raise bad_request(f"The image is {width} x {height} pixels, more than {max_pixels} "
                          "(IMPETUS_IMAGE_MAX_PIXELS).", param=param, code="image_too_large")
    try:
        image.seek(0)
        image.load()
        return image.convert("RGB")
    except Image.DecompressionBombError:
        raise bad_request(f"The image claims more than {max_pixels} pixels (IMPETUS_IMAGE_MAX_PIXELS).",
                          param=param, code="image_too_large") from None
    except Exception:
        raise bad_request("The image could not be decoded (truncated or damaged).", param=param,
                          code="invalid_image") from None


def located(messages) -> list[tuple[object, str]]:
    """Every image part of the conversation, in order, with the name of where
    the client put it (`messages[i].content[j]` for a chat message's own)."""
    return [(part, where(part, f"messages[{i}].content[{j}]"))
            for i, message in enumerate(messages)
            for j, part in enumerate(message.content if isinstance(message.content, list) else [])
            if part.type == "image_url"]


def gather(messages, settings) -> list[Picture]:
    """Every image of the conversation, in order, decoded. At most `image_max_count`."""
    found = located(messages)
    if len(found) > settings.image_max_count:
        raise bad_request(f"This request has {len(found)} images; at most {settings.image_max_count} are taken "
                          "(IMPETUS_IMAGE_MAX_COUNT).", param=found[settings.image_max_count][1],
                          code="too_many_images")
    return [load(part, param, settings) for part, param in found]


# PIL's own bomb check as a second line (it raises at twice this).
Image.MAX_IMAGE_PIXELS = 100_000_000
