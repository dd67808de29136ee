"""Errors a user can act on. The CLI prints their message (no stack trace) and exits non-zero."""


class Lotus3DError(Exception):
    """Base class: the message says what is wrong and, where possible, what to do."""


class InputError(Lotus3DError):
    """A user-supplied file or folder is missing, unreadable or inconsistent."""


class ModelError(Lotus3DError):
    """A model checkpoint is missing, not available offline, or not a Lotus checkpoint."""


class CacheError(Lotus3DError):
    """A prediction cache is inconsistent with the images or settings."""


class ReconstructionError(Lotus3DError):
    """A reconstruction stage cannot produce a result from its inputs."""
