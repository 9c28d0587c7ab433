"""Multipart forms (OpenAI's uploads: /v1/audio/transcriptions, /v1/files), read with Falcon's parser.

A form's fields are checked against the route's names (an unknown one is a 400
naming it, as a JSON body's would be) and its one file part comes back as
(name, bytes). The raw body was read within the body limit by
api.middleware.JSONBodyMiddleware (the resource says `multipart = True`).
"""

from __future__ import annotations

import io
from pathlib import PurePosixPath

from impetus.web import bad_request


def read_form(req, allowed: set[str], default_name: str = "upload") -> tuple[dict[str, list[str]], tuple[str, bytes] | None]:
    """(fields by name, each a list of values without a `[]` suffix; (file name, bytes) of the `file` part)."""
    from falcon.media.multipart import MultipartFormHandler, MultipartParseError

    raw = req.context.raw
    fields: dict[str, list[str]] = {}
    upload = None
    try:
        for part in MultipartFormHandler().deserialize(io.BytesIO(raw), req.content_type, len(raw)):
            if part.name not in allowed:
                raise bad_request(f"Unrecognized request argument supplied: {part.name}", param=part.name)
            if part.name == "file":
                # The client's own name (not Falcon's secure_filename, which drops non-ASCII letters),
                # without any folder it names.
                name = PurePosixPath((part.filename or "").replace("\\", "/")).name[:255]
                upload = (name or default_name, part.stream.read())
            else:
                fields.setdefault(part.name.removesuffix("[]"), []).append(part.text)
    except MultipartParseError as error:
        raise bad_request(f"The form could not be read: {error.description or error.title}", param="file",
                          code="invalid_form") from None
    return fields, upload


def one(fields: dict, name: str, default=None):
    values = fields.get(name)
    return values[-1] if values else default
