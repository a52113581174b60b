"""The error every reader raises for a missing, malformed or inconsistent file."""


class CLTFormatError(ValueError):
    """A CLT file or folder is missing, malformed, or disagrees with its config."""
