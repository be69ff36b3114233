"""Which video decoder a run uses: chosen by measurement, after verification, and remembered.

``choose_decoder(records)`` takes the manifest's most common (codec, size class), and each candidate
decoder (``video_decoders``) decodes the same first samples of those clips in a process of its own
(``python -m vito_fast.decoders.trial``): a decoder that hangs is killed at ``timeout``, one that
crashes takes only its own process down. A decoder counts only if every frame it returned is PyAV's
frame (luma PSNR ≥ ``MIN_PSNR_DB`` against PyAV's: colour conversions may differ, the frame may not)
and it answered in time; the fastest such decoder wins. Fastest for the loader, which runs each
decoder as several streams at once (``loader_streams``: PyAV on every usable core, a decoder of the
device stage on its process's threads): ``DecoderTrial.loader_rate`` is min(pairs/s × streams,
cores × 1000 / CPU ms per pair). The table (pairs/s, CPU-ms per pair,
verified or why not) comes with the choice, which a small JSON cache keeps, keyed by machine, GPU,
the decoders' versions, codec and size class, so the next run starts at once.
``vito-fast bench decoders MANIFEST`` prints the table.

``choose_decoders(records)`` does this for each (codec, size class) that holds at least GROUP_SHARE
of the clips (the MAX_GROUPS largest) and picks the decoder a run uses for all of them: one verified
in every group, with the least time per pair over the manifest (each group's 1 / loader pairs/s,
weighted by its share of the clips). A decoder fast on the most common group but wrong or missing on
another (DALI's CPU decoder on H.264) is not chosen for a mixed manifest; a decoder of the device
stage (NVDEC's) may be, and leaves the codecs it is not verified on to PyAV on the host
(``ManifestChoice.host_codecs``: AV1 on a Hopper GPU, whose NVDEC lacks it).
"""
from __future__ import annotations

import json
import os
import platform
import select
import subprocess
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from vito_fast.decoders.video_decoders import FrameRequest

__all__ = ["MIN_PSNR_DB", "DecoderTrial", "DecoderChoice", "ManifestChoice", "size_class", "trial_requests",
           "run_trial", "run_trials", "loader_streams", "choose_decoder", "choose_decoders", "default_cache_path",
           "DEFAULT_CANDIDATES", "GROUP_SHARE", "MAX_GROUPS"]

MIN_PSNR_DB = 35.0
SPARE_CORES = 4  # from this many usable cores, a trial runs while the others' processes still load
HOST_GRAPH_DECODERS = ("pyav", "dali")  # decoders that feed the loader's graph for every clip of a run
GROUP_SHARE, MAX_GROUPS = 0.05, 4  # the (codec, size class) groups measured: at least 5 % of the clips, 4 at most
DEFAULT_CANDIDATES = {"cpu": ("pyav", "dali", "torchcodec"), "gpu": ("pyav", "nvc", "dali", "torchcodec")}
_VERSIONED = ("av", "nvidia-dali-cuda130", "nvidia-dali-cuda120", "pynvvideocodec", "torchcodec", "torch")


@dataclass
class DecoderTrial:
    """One decoder's run on the trial samples. ``status``: "verified", "unavailable", "wrong frames",
    "failed", "timed out" or "crashed"; ``reason`` says why when not verified."""

    decoder: str
    status: str
    reason: str = ""
    pairs_per_s: Optional[float] = None
    cpu_ms_per_pair: Optional[float] = None
    gpu_ms_per_pair: Optional[float] = None
    min_psnr_db: Optional[float] = None
    first_sample_seconds: Optional[float] = None  # the first sample, the decoder's set-up included
    loader_rate: Optional[float] = None  # pairs/s the loader could get from it here (module docstring)

    @property
    def verified(self) -> bool:
        return self.status == "verified"

    def rate_for_loader(self, streams: int, cores: int) -> Optional[float]:
        """min(pairs/s × streams, cores × 1000 / CPU ms per pair): ``streams`` decoding at once
        (``loader_streams``), as fast as one trial stream each, bounded by the host's ``cores``."""
        if self.pairs_per_s is None or not self.cpu_ms_per_pair:
            return self.pairs_per_s
        return min(self.pairs_per_s * streams, cores * 1000.0 / self.cpu_ms_per_pair)


@dataclass
class DecoderChoice:
    """The decoder chosen for ``codec`` at ``size`` on ``device``, with every trial behind it."""

    decoder: str
    codec: str
    size: str
    device: str
    trials: List[DecoderTrial] = field(default_factory=list)
    cached: bool = False
    seconds: float = 0.0  # what choosing cost this time (0 from the cache)

    def describe(self) -> str:
        verified = [trial.decoder for trial in self.trials if trial.verified]
        source = "from the cache" if self.cached else f"measured in {self.seconds:.1f} s"
        return (f"video decoder for {self.codec} {self.size} on {self.device}: {self.decoder} "
                f"({source}; verified: {', '.join(verified)})")

    def table(self) -> str:
        lines = ["| decoder | status | pairs/s, one stream | CPU ms/pair | loader pairs/s here | GPU ms/pair "
                 "| min luma PSNR vs PyAV dB | first sample s | why not |",
                 "|---|---|---:|---:|---:|---:|---:|---:|---|"]
        for trial in self.trials:
            cells = [_number(trial.pairs_per_s, 1), _number(trial.cpu_ms_per_pair, 2), _number(trial.loader_rate, 0),
                     _number(trial.gpu_ms_per_pair, 2), _number(trial.min_psnr_db, 1),
                     _number(trial.first_sample_seconds, 2)]
            name = f"**{trial.decoder}**" if trial.decoder == self.decoder else trial.decoder
            lines.append(f"| {name} | {trial.status} | " + " | ".join(cells) + f" | {trial.reason} |")
        return "\n".join(lines)

    def to_json(self) -> dict:
        return {"decoder": self.decoder, "codec": self.codec, "size": self.size, "device": self.device,
                "trials": [asdict(trial) for trial in self.trials], "date": time.strftime("%Y-%m-%d %H:%M")}

    @classmethod
    def from_json(cls, record: dict) -> "DecoderChoice":
        return cls(record["decoder"], record["codec"], record["size"], record["device"],
                   [DecoderTrial(**trial) for trial in record["trials"]], cached=True)


def _number(value: Optional[float], digits: int) -> str:
    if value is None:
        return "–"
    return "∞" if value == float("inf") else f"{value:.{digits}f}"


def size_class(height: int, width: int) -> str:
    """The size class a choice holds for, by the short side: 256p-like, 480p, 720p, 1080p, larger."""
    short = min(int(height), int(width))
    for limit, name in ((288, "≤288p"), (480, "≤480p"), (720, "≤720p"), (1080, "≤1080p")):
        if short <= limit:
            return name
    return ">1080p"


def trial_requests(records: Sequence, samples: int) -> List[FrameRequest]:
    """``samples`` frame pairs from ``records`` (``ClipRecord``s) in turn, the same for every decoder: pair j
    takes the frames at (1 + j mod 3) / 8 and (5 + j mod 3) / 8 of its clip (far apart, so neither
    decodes on from the other; a clip seen again gives other frames)."""
    records = list(records)
    requests = []
    for sample in range(samples):
        record = records[sample % len(records)]
        first = 0 if record.clip_start is None else int(-(-record.clip_start * record.fps // 1))
        count = max(1, int(record.num_frames))
        shift = sample % 3
        frames = (first + (1 + shift) * count // 8, first + min(count - 1, (5 + shift) * count // 8))
        index = {}
        if record.keyframes is not None and record.keyframe_pts is not None:
            index = {"keyframes": tuple(record.keyframes), "keyframe_pts": tuple(record.keyframe_pts)}
        orientation = tuple(bool(turn) for turn in record.orientation) if record.orientation else (False,) * 3
        requests.append(FrameRequest(record.path, frames, record.codec, int(record.height), int(record.width),
                                     **index, orientation=orientation))
    return requests


def _trial_process(decoder: str, device: str) -> subprocess.Popen:
    """A trial's process (``decoders.trial``), started to load its decoder and wait for the job."""
    from vito_fast.decoders.decoder_process import decoder_environment

    return subprocess.Popen([sys.executable, "-m", "vito_fast.decoders.trial", decoder, device],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=decoder_environment(decoder))


def _trial_result(decoder: str, process: subprocess.Popen, stdout: str, stderr: str) -> DecoderTrial:
    if process.returncode < 0:
        return DecoderTrial(decoder, "crashed", f"its process died of signal {-process.returncode}")
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    if process.returncode != 0 or not lines:
        last = (stderr.strip().splitlines() or [f"exit status {process.returncode}"])[-1]
        return DecoderTrial(decoder, "failed", last[:300])
    return DecoderTrial(**json.loads(lines[-1]))


def run_trials(decoders: Sequence[str], device: str, requests: Sequence[FrameRequest],
               timeout: float) -> List[DecoderTrial]:
    """Each decoder on ``requests`` in a process of its own (see ``decoders.trial``), killed after
    ``timeout`` s. The processes start together and load their decoders at once (importing torch and a
    decoder takes longer than its trial); the trials then run one at a time. With fewer than
    ``SPARE_CORES`` usable cores they wait until every process has loaded, so that no trial is timed
    while another process loads on its cores; with more, each runs as soon as it is ready."""
    from vito_fast.data.config import usable_cores

    processes = {name: _trial_process(name, device) for name in dict.fromkeys(decoders)}
    deadline = time.monotonic() + timeout
    waiting = {process.stdout for process in processes.values()} if usable_cores() < SPARE_CORES else set()
    while waiting and time.monotonic() < deadline:  # each says "ready" once loaded, or ends
        ready, _, _ = select.select(list(waiting), [], [], max(0.0, deadline - time.monotonic()))
        for stream in ready:
            stream.readline()
            waiting.discard(stream)
    trials = {}
    try:
        for name, process in processes.items():
            job = json.dumps({"decoder": name, "device": device, "min_psnr_db": MIN_PSNR_DB,
                              "requests": [request.to_json() for request in requests]})
            try:
                stdout, stderr = process.communicate(job, timeout=timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.communicate()
                trials[name] = DecoderTrial(name, "timed out", f"no answer within {timeout:g} s")
            except BrokenPipeError:  # it ended before its job: what it said is its answer
                process.wait()
                trials[name] = _trial_result(name, process, process.stdout.read(), process.stderr.read())
            else:
                trials[name] = _trial_result(name, process, stdout, stderr)
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.kill()
                process.wait()
    return [trials[name] for name in decoders]


def run_trial(decoder: str, device: str, requests: Sequence[FrameRequest], timeout: float) -> DecoderTrial:
    """``decoder`` on ``requests`` in a process of its own (see ``decoders.trial``), killed after ``timeout`` s."""
    return run_trials([decoder], device, requests, timeout)[0]


def default_cache_path() -> Path:
    """``data.config.cache_folder()``/video_decoders.json."""
    from vito_fast.data.config import cache_folder

    return Path(cache_folder()) / "video_decoders.json"


def _versions() -> str:
    from importlib import metadata

    found = []
    for name in _VERSIONED:
        try:
            found.append(f"{name}={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            pass
    return ",".join(found)


def _machine(device: str) -> str:
    gpu = ""
    if device == "gpu":
        import torch

        if torch.cuda.is_available():
            gpu = f"{torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda})"
    return f"{platform.node()}|{platform.machine()}|{gpu}"


def choose_decoder(records: Sequence, *, device: str = "cpu", candidates: Optional[Sequence[str]] = None,
                   samples: int = 12, timeout: float = 30.0, cache_path: Optional[Path] = None,
                   refresh: bool = False) -> DecoderChoice:
    """The fastest verified decoder for the manifest's most common (codec, size class); see the module doc.

    records: the manifest's ``ClipRecord``s. cache_path: None = ``default_cache_path()``; a missing
    or unreadable cache is rebuilt. refresh: measure again even when the cache holds an answer.
    """
    if not records:
        raise ValueError("choose_decoder: the manifest has no clips")
    candidates = tuple(candidates or DEFAULT_CANDIDATES[device])
    if "pyav" not in candidates:
        candidates = ("pyav",) + candidates  # the reference is always measured beside the others
    groups = Counter((record.codec, size_class(record.height, record.width)) for record in records)
    (codec, size), _ = groups.most_common(1)[0]
    group = [record for record in records if (record.codec, size_class(record.height, record.width)) == (codec, size)]
    cache_path = default_cache_path() if cache_path is None else Path(cache_path)
    key = "|".join([_machine(device), device, codec, size, ",".join(candidates), _versions()])
    cache = _read_cache(cache_path)
    if key in cache and not refresh:
        return DecoderChoice.from_json(cache[key])
    started = time.perf_counter()
    requests = trial_requests(group, samples)
    trials = run_trials(candidates, device, requests, timeout)
    from vito_fast.data.config import usable_cores

    cores = usable_cores()
    for trial in trials:
        trial.loader_rate = trial.rate_for_loader(loader_streams(trial.decoder, device, cores), cores)
    verified = [trial for trial in trials if trial.verified]
    if not verified:
        reasons = "; ".join(f"{trial.decoder}: {trial.status} ({trial.reason})" for trial in trials)
        raise RuntimeError(f"no video decoder decodes {codec} {size} correctly on this machine: {reasons}")
    best = max(verified, key=lambda trial: trial.loader_rate or 0.0)
    choice = DecoderChoice(best.decoder, codec, size, device, trials, seconds=time.perf_counter() - started)
    cache[key] = choice.to_json()
    _write_cache(cache_path, cache)
    return choice


@dataclass
class ManifestChoice:
    """The decoder a run uses (``decoder``) and the choice for each group measured, with its share of the
    manifest's clips (``groups``: [(DecoderChoice, share)], largest first)."""

    decoder: str
    device: str
    groups: List[Tuple[DecoderChoice, float]]
    host_codecs: Tuple[str, ...] = ()  # codecs ``decoder`` (of the device stage) leaves to PyAV on the host

    @property
    def cached(self) -> bool:
        return all(choice.cached for choice, _ in self.groups)

    @property
    def seconds(self) -> float:
        return sum(choice.seconds for choice, _ in self.groups)

    def describe(self) -> str:
        source = "from the cache" if self.cached else f"measured in {self.seconds:.1f} s"
        parts = []
        for choice, share in self.groups:
            verified = [trial.decoder for trial in choice.trials if trial.verified]
            parts.append(f"{choice.codec} {choice.size} ({100 * share:.0f} % of clips): fastest {choice.decoder}, "
                         f"verified {', '.join(verified)}")
        host = f", PyAV on the host for {', '.join(self.host_codecs)}" if self.host_codecs else ""
        return f"video decoder on {self.device}: {self.decoder}{host} ({source}; " + "; ".join(parts) + ")"

    def table(self) -> str:
        return "\n\n".join(f"{choice.codec} {choice.size}, {100 * share:.0f} % of the clips:\n{choice.table()}"
                            for choice, share in self.groups)


def choose_decoders(records: Sequence, *, device: str = "cpu", candidates: Optional[Sequence[str]] = None,
                    samples: int = 12, timeout: float = 30.0, cache_path: Optional[Path] = None,
                    refresh: bool = False) -> ManifestChoice:
    """``choose_decoder`` for each (codec, size class) of ``records`` with at least GROUP_SHARE of them
    (the MAX_GROUPS largest; the largest always), and the decoder verified in every one of them with the
    least time per pair over the manifest. Raises what ``choose_decoder`` raises for a group."""
    if not records:
        raise ValueError("choose_decoders: the manifest has no clips")
    groups = Counter((record.codec, size_class(record.height, record.width)) for record in records)
    measured = [(group, count / len(records)) for group, count in groups.most_common(MAX_GROUPS)]
    measured = measured[:1] + [(group, share) for group, share in measured[1:] if share >= GROUP_SHARE]
    choices = []
    for group, share in measured:
        members = [record for record in records if (record.codec, size_class(record.height, record.width)) == group]
        choices.append((choose_decoder(members, device=device, candidates=candidates, samples=samples,
                                       timeout=timeout, cache_path=cache_path, refresh=refresh), share))
    # a decoder of the device stage leaves the groups it is not verified on to PyAV on the host, in the same
    # batches; PyAV's and DALI's graphs take one decoder for every clip
    seconds_per_pair: Dict[str, float] = {}
    left_to_pyav: Dict[str, set] = {}
    for choice, share in choices:
        rates = {trial.decoder: trial.loader_rate for trial in choice.trials if trial.verified}
        for name in [trial.decoder for trial in choice.trials]:
            rate = rates.get(name)
            if not rate and name not in HOST_GRAPH_DECODERS and rates.get("pyav"):
                rate = rates["pyav"]
                left_to_pyav.setdefault(name, set()).add(choice.codec)
            seconds_per_pair[name] = seconds_per_pair.get(name, 0.0) + (share / rate if rate else float("inf"))
    best = min(seconds_per_pair, key=lambda name: (seconds_per_pair[name], name != "pyav"))
    if seconds_per_pair[best] == float("inf"):
        best = "pyav"  # each group has a verified decoder but none covers all: the reference decodes them all
    host = sorted(left_to_pyav.get(best, ()))
    return ManifestChoice(best, device, choices, tuple(host))


def loader_streams(decoder: str, device: str, cores: int) -> int:
    """How many streams the loader decodes ``decoder`` with at once: PyAV in a worker per usable core,
    DALI's CPU decoder on as many threads, DALI's NVDEC in one pipeline, and a decoder of the device
    stage in its process's threads (``DecoderProcess``: GPU_THREADS on a GPU, one on the CPU)."""
    from vito_fast.decoders.decoder_process import GPU_THREADS

    if decoder in HOST_GRAPH_DECODERS:
        return cores if decoder == "pyav" or device == "cpu" else 1
    return GPU_THREADS if device == "gpu" else 1


def _read_cache(path: Path) -> Dict[str, dict]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _write_cache(path: Path, cache: Dict[str, dict]) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        temporary.write_text(json.dumps(cache, indent=1, allow_nan=True))
        os.replace(temporary, path)
    except OSError:
        pass  # a cache that cannot be written only costs the next run its measurement
