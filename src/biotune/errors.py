"""The one exception type for problems a user can cause (bad input, bad settings)."""

from __future__ import annotations

__all__ = ["BioTuneError"]


class BioTuneError(ValueError):
    """A problem with user input: an unknown model or dataset, a bad file, an invalid setting.

    The message names the input and what is wrong with it. The CLI prints it without a
    traceback and exits with status 2.
    """
