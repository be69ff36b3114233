"""Errors raised by vito_fast. Each message names the file or argument at fault."""
from typing import Optional


class VitoError(Exception):
    """Base class of vito_fast's own errors. ``object_name``: the object whose reads failed when that is
    not the file the error is about (a tar shard of many videos, a frame store's shard): the loader names
    it once, not once per clip it holds."""

    def __init__(self, *args, object_name: Optional[str] = None):
        super().__init__(*args)
        if object_name is not None:
            self.object_name = object_name  # pickled with the error (BaseException keeps __dict__)


def failed_object(error: BaseException) -> Optional[str]:
    """The ``object_name`` of ``error`` or of the error it was raised from, else None."""
    while error is not None:
        name = getattr(error, "object_name", None)
        if name:
            return name
        error = error.__cause__
    return None


class VideoError(VitoError):
    """A video file cannot be used: unreadable, truncated, no video stream, undecodable codec..."""


class StoreError(VitoError):
    """A frame store is missing, incomplete or does not match its index."""


def first_line(error: BaseException) -> str:
    """The first line of ``error``'s message (its type's name when the message is empty): for one-line reports."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def about(name: str, error: BaseException) -> str:
    """``error``'s words for a message that names ``name`` already: without the leading "name: " that each
    layer re-raising it added, and for an OS or FFmpeg error its own words (``strerror``) without the
    errno and the file name it repeats."""
    strerror = getattr(error, "strerror", None)  # OSError, and PyAV's FFmpegError (not an OSError)
    if strerror and not isinstance(error, VitoError):
        return str(strerror)
    text = str(error)
    while name and text.startswith(f"{name}: "):
        text = text[len(name) + 2:]
    return text


class MissingExtra(VitoError, ImportError):
    """An optional package a feature needs is not installed; the message names the extra that installs it."""


class DecoderFailure(VitoError):
    """A video decoder failed on frames that PyAV decodes: the decoder is at fault, not the file."""
