"""Database URLs in logs and messages: never with their password."""

from __future__ import annotations


def redact(url: str) -> str:
    """``postgresql://user:secret@host/db`` -> ``postgresql://user:***@host/db``."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001  (not a SQLAlchemy URL: nothing to hide)
        return url
