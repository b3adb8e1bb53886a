"""The base of every error that bad input causes: the command line prints its message alone (one line,
exit status 2) instead of a traceback. Plugins may raise it too."""


class UserError(Exception):
    """Bad input that the user can fix; the message names the file, field or layer and what was expected."""


class CapacityReached(UserError):
    """A method can take no more edits without breaking a bound it was given. Raised before anything is written;
    the lifelong runner ends the run there, with a checkpoint and a summary that says why."""
