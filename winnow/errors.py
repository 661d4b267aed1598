"""The one error type a user sees.

Every check on user input raises :class:`WinnowError` with a message that names the file, row or
column at fault; the CLI prints it on one line and exits with status 2. Anything else escaping is a
bug in winnow, not in the user's data.
"""


class WinnowError(Exception):
    """A problem with the user's input or configuration, explained in the message."""
