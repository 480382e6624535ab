"""Exceptions shared by the command-line tools."""


class UserError(Exception):
    """A failure caused by the user's input (missing file, bad layout, existing output...).

    The message names the file and the fix; the CLI prints it without a traceback."""
