"""/v1/files: OpenAI's uploads (a multipart form: `file`, `purpose`, `expires_after`).

The key's own files only (documents.files: another key's id is a 404); text
is extracted at upload for `assistants` and `user_data` (what vector stores
read), so an unsupported or empty file is a 400 here; each file within
`file_max_bytes` (413), a key's files within `file_quota_bytes` (429).
"""

from __future__ import annotations

from impetus.api.forms import one, read_form
from impetus.api.listing import listing, page
from impetus.documents.files import MADE_HERE, PURPOSES
from impetus.web import bad_request

FIELDS = {"file", "purpose", "expires_after[anchor]", "expires_after[seconds]"}
MIN_EXPIRY_S, MAX_EXPIRY_S = 3600, 30 * 86_400


def _expiry(fields: dict) -> int | None:
    anchor, seconds = one(fields, "expires_after[anchor]"), one(fields, "expires_after[seconds]")
    if anchor is None and seconds is None:
        return None
    if anchor != "created_at":
        raise bad_request("expires_after[anchor] must be created_at.", param="expires_after[anchor]")
    if seconds is None or not seconds.isdigit() or not MIN_EXPIRY_S <= int(seconds) <= MAX_EXPIRY_S:
        raise bad_request(f"expires_after[seconds] must be between {MIN_EXPIRY_S} and {MAX_EXPIRY_S}.",
                          param="expires_after[seconds]")
    return int(seconds)


class FilesResource:
    multipart = True  # POST is a form (api.middleware.JSONBodyMiddleware leaves it raw)

    def __init__(self, documents):
        self.documents = documents

    def on_post(self, req, resp):
        fields, upload = read_form(req, FIELDS)
        purpose = one(fields, "purpose")
        if purpose not in PURPOSES:
            raise bad_request(f"purpose must be one of {', '.join(PURPOSES)}.", param="purpose")
        if upload is None:
            raise bad_request("A file is required (the form's `file` part).", param="file")
        name, data = upload
        resp.media = self.documents.files.create(req.context.account.owner, name, purpose, data, _expiry(fields))

    def on_get(self, req, resp):
        purpose = req.get_param("purpose")
        if purpose is not None and purpose not in PURPOSES + MADE_HERE:
            raise bad_request(f"purpose must be one of {', '.join(PURPOSES + MADE_HERE)}.", param="purpose")
        options = listing(req, default_limit=100, before=False)
        data, more = self.documents.files.list(req.context.account.owner, purpose, **options)
        resp.media = page(data, more)


class FileResource:
    def __init__(self, documents):
        self.documents = documents

    def on_get(self, req, resp, file_id):
        resp.media = self.documents.files.get(req.context.account.owner, file_id)

    def on_delete(self, req, resp, file_id):
        resp.media = self.documents.files.delete(req.context.account.owner, file_id)


class FileContentResource:
    def __init__(self, documents):
        self.documents = documents

    def on_get(self, req, resp, file_id):
        resp.data = self.documents.files.content(req.context.account.owner, file_id)
        resp.content_type = "application/octet-stream"
