"""OpenAI's list parameters (`limit`, `order`, `after`, `before`) and its list page."""

from __future__ import annotations

from impetus.web import bad_request


def listing(req, default_limit: int = 20, before: bool = True) -> dict:
    """limit (1 to 100), order (asc or desc, newest first by default), after, before, as query parameters."""
    raw = req.get_param("limit") or str(default_limit)
    if not raw.isdigit() or not 1 <= int(raw) <= 100:
        raise bad_request("limit must be an integer between 1 and 100.", param="limit")
    order = req.get_param("order") or "desc"
    if order not in ("asc", "desc"):
        raise bad_request("order must be asc or desc.", param="order")
    out = {"limit": int(raw), "order": order, "after": req.get_param("after") or None}
    if before:
        out["before"] = req.get_param("before") or None
    return out


def page(data: list[dict], has_more: bool) -> dict:
    return {"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None, "has_more": has_more}
