"""Errors raised by vito_fast. Each message names the file or argument at fault."""


class VitoError(Exception):
    """Base class of vito_fast's own errors."""


class VideoError(VitoError):
    """A video file cannot be used: unreadable, truncated, no video stream, undecodable codec..."""


class StoreError(VitoError):
    """A frame store is missing, incomplete or does not match its index."""


class DecoderFailure(VitoError):
    """A video decoder failed on frames that PyAV decodes: the decoder is at fault, not the file."""
