"""Exceptions shared by the command-line tools."""


def did_you_mean(name: str, candidates) -> str:
    """``"did you mean A, B? "`` for the close matches of a mistyped ``name`` (empty if none)."""
    import difflib
    close = difflib.get_close_matches(name, list(candidates), n=3, cutoff=0.6)
    return f"did you mean {', '.join(close)}? " if close else ""


class UserError(Exception):
    """A failure caused by the user's input (missing file, bad layout, existing output...).

    The message names the file and the fix; the CLI prints it without a traceback."""
