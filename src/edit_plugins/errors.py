"""The base of every error that bad input causes: the command line prints its message alone (one line,
exit status 2) instead of a traceback. Plugins may raise it too."""


class UserError(Exception):
    """Bad input that the user can fix; the message names the file, field or layer and what was expected."""
