"""Decoders broken on purpose, for the decoder choice's tests (named "broken_decoders:Class").

They load in the trial's own process (tests/ on its PYTHONPATH) and break the way real decoders do:
one frame off, a hang, a crash of the whole process.
"""
from __future__ import annotations

import dataclasses
import os
import time

from vito_fast.decoders.video_decoders import FrameRequest, PyAVDecoder


class OffByOne(PyAVDecoder):
    """Returns the frame after each one asked for (a frame-counting bug)."""

    name = "off_by_one"

    def decode(self, request: FrameRequest):
        return super().decode(dataclasses.replace(request, frames=tuple(frame + 1 for frame in request.frames)))


class Hangs(PyAVDecoder):
    """Never answers (a decoder stuck in a driver call)."""

    name = "hangs"

    def decode(self, request: FrameRequest):
        time.sleep(3600)


class Crashes(PyAVDecoder):
    """Takes its process down (a segfault in native code)."""

    name = "crashes"

    def decode(self, request: FrameRequest):
        os.abort()


class Fails(PyAVDecoder):
    """Raises on every file (a GPU decoder that cannot open what PyAV decodes)."""

    name = "fails"

    def decode(self, request: FrameRequest):
        from vito_fast.errors import VideoError

        raise VideoError(f"{request.path}: this decoder fails on purpose")


class Vp9Only(PyAVDecoder):
    """Decodes VP9 as PyAV does and nothing else (DALI's CPU decoder on a manifest of VP9 and H.264)."""

    name = "vp9_only"

    def unavailable(self, codec: str):
        return None if codec == "vp9" else f"decodes vp9 only, not {codec}"


class Vp9OnlyWrongElsewhere(PyAVDecoder):
    """Says it decodes everything, but only its VP9 frames are PyAV's (others come one frame off)."""

    name = "vp9_only_wrong_elsewhere"

    def decode(self, request: FrameRequest):
        if request.codec == "vp9":
            return super().decode(request)
        return super().decode(dataclasses.replace(request, frames=tuple(frame + 1 for frame in request.frames)))
