"""User-facing errors: each is shown as one line, without a traceback."""


class CnnexpError(Exception):
    """A problem with the user's input (config, data, store) that we can explain in one line."""

    exit_code = 2


class ConfigError(CnnexpError):
    """The configuration is invalid: an unknown name, a bad value, a stack whose shapes do not fit."""


class DataError(CnnexpError):
    """A data set is missing, truncated or malformed."""

    exit_code = 3


class TrackingError(CnnexpError):
    """The tracking store cannot be reached or written."""

    exit_code = 4


class TrainingError(CnnexpError):
    """Training diverged (NaN/inf loss) or otherwise cannot continue."""

    exit_code = 5


def suggest(bad, known, prefix: str = "") -> str:
    """The ``" (did you mean 'x'?)"`` tail of an error about the unknown name ``bad``: the closest of
    ``known`` (shown after ``prefix``, e.g. a config path), or "" when none is close."""
    import difflib

    hint = difflib.get_close_matches(str(bad), [str(k) for k in known], n=1)
    return f" (did you mean {prefix + hint[0]!r}?)" if hint else ""
