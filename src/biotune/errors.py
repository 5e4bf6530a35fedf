"""The one exception type for problems a user can cause (bad input, bad settings)."""

from __future__ import annotations

import re

__all__ = ["BioTuneError", "redact_url", "scrub"]


class BioTuneError(ValueError):
    """A problem with user input: an unknown model or dataset, a bad file, an invalid setting.

    The message names the input and what is wrong with it. The CLI prints it without a
    traceback and exits with status 2.
    """


# The password runs to the last "@" of the URL's authority (users do leave "@" unescaped).
_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^:/@\s]*:)(?P<password>\S*)@(?P<host>[^@\s/]*)")


def redact_url(url: str) -> str:
    """A URL with its password (``scheme://user:password@host``) replaced by ``***``."""
    return _PASSWORD.sub(lambda m: f"{m['head']}***@{m['host']}", url)


def scrub(text: str, url: str | None) -> str:
    """``text`` with every URL password in it, and ``url``'s password anywhere, replaced by ``***``."""
    text = redact_url(text)
    if url:
        match = _PASSWORD.search(url)
        if match and match["password"]:
            text = text.replace(match["password"], "***")
    return text
