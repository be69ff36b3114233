"""FFmpeg's shared libraries for torchcodec, from PyAV's wheel when the machine has none of its own.

torchcodec loads FFmpeg 4-9 from the system (``libavutil.so.60`` and its siblings for FFmpeg 8), so
on a machine without FFmpeg installed (most GPU nodes, containers) it loads nothing. PyAV's wheels
bring a whole FFmpeg under renamed files (``av.libs/libavutil-5809ad29.so.60.26.102``). When that
FFmpeg is a version torchcodec has a build for, ``torchcodec_library_path()`` makes a folder of
links under the names torchcodec asks for (in the cache, once) and gives the ``LD_LIBRARY_PATH``
under which it loads them. The dynamic loader reads that variable when a process starts, so it
serves the processes torchcodec decodes in (``DecoderProcess``, the choice's trials:
``child_environment``), never the one that asks. A machine whose FFmpeg torchcodec already finds
(``system_ffmpeg``) is left as it is. Nothing here imports torch or torchcodec.
"""
from __future__ import annotations

import ctypes
import hashlib
import importlib.util
import os
import re
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Dict, Optional, Tuple

__all__ = ["bundled_ffmpeg", "system_ffmpeg", "torchcodec_builds", "torchcodec_library_path", "child_environment",
           "torchcodec_problem"]

# libavutil's major version -> FFmpeg's (libavutil 56 was FFmpeg 4; each FFmpeg major bumps it by one)
AVUTIL_TO_FFMPEG = 52
LIBRARIES = ("libavutil", "libavcodec", "libavformat", "libavdevice", "libavfilter", "libswscale", "libswresample")
_RENAMED = re.compile(r"^(lib[a-z]+)-[0-9a-f]{8}\.so\.(\d+)(?:\.\d+)*$")  # auditwheel's names
_lock = threading.Lock()
_found: Dict[str, Optional[str]] = {}  # torchcodec_library_path's answer in this process


def _package_folder(name: str) -> Optional[Path]:
    """Where package ``name`` is installed, without importing it (None: not installed)."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    locations = list(spec.submodule_search_locations or []) if spec else []
    return Path(locations[0]) if locations else None


def bundled_ffmpeg() -> Optional[Tuple[int, Path, Dict[str, Path]]]:
    """(FFmpeg major version, folder, {name torchcodec asks for: file}) of the FFmpeg inside PyAV's
    wheel, or None (no PyAV, or a PyAV built against the system's FFmpeg: nothing bundled)."""
    package = _package_folder("av")
    folder = package.parent / "av.libs" if package else None
    if folder is None or not folder.is_dir():
        return None
    files = {}
    for path in folder.iterdir():
        match = _RENAMED.match(path.name)
        if match and match.group(1) in LIBRARIES:
            files[f"{match.group(1)}.so.{match.group(2)}"] = path
    avutil = [int(name.rsplit(".", 1)[1]) for name in files if name.startswith("libavutil.so.")]
    if len(avutil) != 1 or not {name.split(".so.")[0] for name in files} >= {"libavutil", "libavcodec", "libavformat"}:
        return None
    return avutil[0] - AVUTIL_TO_FFMPEG, folder, files


def torchcodec_builds() -> Tuple[int, ...]:
    """The FFmpeg major versions the installed torchcodec has a core library for; () without torchcodec."""
    folder = _package_folder("torchcodec")
    if folder is None:
        return ()
    found = {int(m.group(1)) for path in folder.glob("libtorchcodec_core*.so")
             if (m := re.match(r"libtorchcodec_core(\d+)\.so$", path.name))}
    return tuple(sorted(found))


def system_ffmpeg() -> Optional[int]:
    """The FFmpeg major version torchcodec would load from the libraries this process finds by name
    (``LD_LIBRARY_PATH``, the system's), the newest it has a build for; None: none. Loads libavutil
    alone, never torch: a parent asks this before starting the process that decodes."""
    for major in sorted(torchcodec_builds(), reverse=True):
        try:
            ctypes.CDLL(f"libavutil.so.{major + AVUTIL_TO_FFMPEG}")
        except OSError:
            continue
        return major
    return None


def _link_folder(major: int, folder: Path, files: Dict[str, Path], cache: Path) -> Path:
    """A folder of links named as torchcodec asks (``libavutil.so.60`` -> PyAV's renamed file), one per
    PyAV install (its folder and file names make the key): built beside, then renamed into place, so
    no process sees half of it."""
    listing = "\n".join([str(folder.resolve())] + sorted(f"{name}={path.name}" for name, path in files.items()))
    target = cache / f"ffmpeg{major}-from-pyav-{hashlib.sha256(listing.encode()).hexdigest()[:12]}"
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=".ffmpeg-", dir=target.parent))
    for name, path in files.items():
        os.symlink(path, building / name)
    try:
        os.rename(building, target)
    except OSError:  # another process made it meanwhile
        shutil.rmtree(building, ignore_errors=True)
    return target


def _library_path() -> Optional[str]:
    if not torchcodec_builds() or system_ffmpeg() is not None:  # not installed, or an FFmpeg of its own
        return None
    bundled = bundled_ffmpeg()
    if bundled is None or bundled[0] not in torchcodec_builds():
        return None
    major, folder, files = bundled
    from vito_fast.data.config import cache_folder

    for cache in (Path(cache_folder()), Path(tempfile.gettempdir()) / f"vito_fast-{os.getuid()}"):
        try:  # a cache that cannot be written (a read-only home): the temporary folder
            return os.pathsep.join([str(_link_folder(major, folder, files, cache)), str(folder)])
        except OSError:
            continue
    return None


def torchcodec_library_path(fresh: bool = False) -> Optional[str]:
    """The ``LD_LIBRARY_PATH`` entries under which torchcodec loads PyAV's FFmpeg: the folder of links
    (in the cache, else the temporary folder), then PyAV's own folder (the renamed libraries find each
    other there). None when torchcodec is not installed, finds an FFmpeg of its own (``system_ffmpeg``),
    or PyAV brings none it has a build for. Found once per process; ``fresh``: look again."""
    with _lock:
        if fresh or "path" not in _found:
            _found["path"] = _library_path()
        return _found["path"]


def child_environment(environment: Dict[str, str]) -> Dict[str, str]:
    """``environment`` for a process that decodes with torchcodec: with PyAV's FFmpeg on its library
    path where torchcodec would find none (``torchcodec_library_path``), else unchanged."""
    extra = torchcodec_library_path()
    if not extra:
        return environment
    inherited = environment.get("LD_LIBRARY_PATH")
    return dict(environment, LD_LIBRARY_PATH=os.pathsep.join([extra] + ([inherited] if inherited else [])))


def torchcodec_problem(device: str = "cpu", codec: str = "h264") -> Optional[str]:
    """Why torchcodec cannot decode ``codec`` on ``device`` in the processes it decodes in (started with
    ``child_environment``), asked of such a process; None when it can. Costs a process that imports
    torch: for checks ahead of time (tests, benches), not for every loader."""
    import subprocess
    import sys

    probe = ("from vito_fast.decoders.video_decoders import make_decoder\n"
             f"print('answer:', make_decoder('torchcodec', {device!r}).unavailable({codec!r}))")
    run = subprocess.run([sys.executable, "-c", probe], env=child_environment(dict(os.environ)), capture_output=True,
                         text=True)
    said = [line[len("answer: "):] for line in run.stdout.splitlines() if line.startswith("answer: ")]
    if not said:
        return f"torchcodec's probe process failed: {(run.stderr.strip().splitlines() or ['?'])[-1][:200]}"
    return None if said[-1] == "None" else said[-1]
