"""Errors raised by vito_fast. Each message names the file or argument at fault."""


class VitoError(Exception):
    """Base class of vito_fast's own errors."""


class VideoError(VitoError):
    """A video file cannot be used: unreadable, truncated, no video stream, undecodable codec..."""


class StoreError(VitoError):
    """A frame store is missing, incomplete or does not match its index."""


def first_line(error: BaseException) -> str:
    """The first line of ``error``'s message (its type's name when the message is empty): for one-line reports."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


class MissingExtra(VitoError, ImportError):
    """An optional package a feature needs is not installed; the message names the extra that installs it."""


class DecoderFailure(VitoError):
    """A video decoder failed on frames that PyAV decodes: the decoder is at fault, not the file."""
