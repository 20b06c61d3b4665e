"""Exceptions raised by the data layer.

Missing data subclasses FileNotFoundError and unreadable images subclass OSError, so callers that
only know the built-in types still catch them; the subclasses exist so tests and entry points can
tell the cases apart. Every message names the offending path (or config key) and the fix.
"""


class DatasetNotFoundError(FileNotFoundError):
    """A dataset folder or one of its split folders does not exist."""


class EmptyDatasetError(FileNotFoundError):
    """A folder exists but holds no image files."""


class MissingPartnerError(FileNotFoundError):
    """A paired dataset holds an image whose partner in the other domain is missing."""


class ImageReadError(OSError):
    """An image file exists but cannot be decoded."""
