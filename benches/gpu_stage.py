"""The optional packages of the GPU pass, sent to an offline GPU host in as few calls as xz allows.

    python benches/gpu_stage.py pack [--out .gpu]          # here (needs PyPI): wheels -> parts
    python3 benches/gpu_stage.py stage .gpu/PART           # on the host, once per part, as it arrives
    python3 benches/gpu_stage.py install /tmp/site         # on the host, when every part is staged

``pack`` downloads the Python 3.12 x86-64 wheels of WHEELS, unpacks them into one site tree, leaves
out what the host never loads (extension modules built for other Pythons, C headers, samples),
compresses the tree as one tar.xz and cuts it into parts of at most PART_BYTES, so that a part and
the working tree stay under the device tool's 64 MiB per call. It writes ``parts.json`` (names,
bytes, sha256) beside the parts and copies it to ``benches/gpu_stage.json``, from which the pass's
plan (``gpu_pass.py --plan``) takes the part count and sizes on a machine that never packed.

``stage`` copies one part out of the work tree (to ~/vito-stage), where it survives the next calls
while the machine stays warm. ``install`` checks every part against parts.json, says in one line
each which parts are missing or damaged (exit 2), else decompresses them with Python's own lzma
into SITE (no xz binary needed there) and says what imports. Both print one line, never a traceback.
"""
from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import lzma
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

ROOT = Path(__file__).resolve().parents[1]
RECORD = ROOT / "benches" / "gpu_stage.json"  # the last pack's parts, committed for the plan
STAGE_DIR = Path.home() / "vito-stage"
PART_BYTES = 56 * 2**20  # + the working tree (~1.5 MiB) stays under the plan's 60 MiB per call
ARCHIVE = "gpu-site.tar.xz"
# The loader half of the pass: DALI with its JPEG libraries and Python dependencies, and PyAV
# (H.264 test videos, the CPU decode workers). Inf-CL is pure Python and rides with call 1.
WHEELS = ["nvidia-dali-cuda130==2.4.0", "nvidia-nvimgcodec-cu13==0.9.0.20", "nvidia-nvjpeg==13.3.2.43",
          "astunparse==1.6.3", "gast==0.6.0", "optree==0.20.0", "makefun==1.16.0", "nvtx==0.2.17",
          "libcst==1.9.0", "av==18.1.0"]
CALL_ONE_WHEELS = ["inf-cl==1.2.1"]


@dataclass(frozen=True)
class WheelSet:
    """A set of wheels packed on its own: its archive's name, where its parts go, its committed record,
    and what ``install`` imports to say it works."""
    wheels: List[str]
    archive: str
    out: Path
    record: Path
    imports: Tuple[str, ...]
    call_one: List[str] = field(default_factory=list)


SETS = {
    "loader": WheelSet(WHEELS, ARCHIVE, ROOT / ".gpu", RECORD, ("nvidia.dali", "av"), CALL_ONE_WHEELS),
    # Issue #26's decoder plan (gpu_pass.py --plan decoders): PyAV (the test clips, the baseline and the
    # reference of every trial, and the FFmpeg torchcodec loads), PyNvVideoCodec, torchcodec (>= torch 2.11).
    "decoders": WheelSet(["av==18.1.0", "pynvvideocodec==2.2.4", "torchcodec==0.17.0"], "decoders-site.tar.xz",
                         ROOT / ".gpu" / "decoders", ROOT / "benches" / "gpu_stage_decoders.json",
                         ("av", "PyNvVideoCodec", "torchcodec")),
}
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64"]
HOST_PYTHON = "312"


def download(specs: List[str], dest: Path) -> List[Path]:
    """The wheels of ``specs`` for CPython 3.12 on x86-64 Linux, without their dependencies."""
    dest.mkdir(parents=True, exist_ok=True)
    platforms = [arg for platform in PLATFORMS for arg in ("--platform", platform)]
    for spec in specs:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                        "--python-version", HOST_PYTHON[0] + "." + HOST_PYTHON[1:], "--implementation", "cp",
                        *platforms, "-d", str(dest), spec], check=True)
    return sorted(dest.glob("*.whl"))


def never_loaded(path: Path) -> bool:
    """Files of the unpacked wheels that the host's Python 3.12 never loads."""
    name = path.name
    if ".cpython-3" in name and name.endswith(".so") and f".cpython-{HOST_PYTHON}-" not in name:
        return True  # the same extension module built for another Python
    return bool({"include", "samples", "benchmarks"} & set(path.parts[:3])) or path.parts[0].endswith(".data")


def compress(site: Path, archive_path: Path, level: int) -> Path:
    """site/ as one tar.xz: the xz binary on every core where there is one, else Python's lzma."""
    plain = archive_path.with_suffix("")
    with tarfile.open(plain, "w") as tar:
        for path in sorted(site.iterdir()):
            tar.add(path, arcname=path.name)
    if shutil.which("xz"):
        subprocess.run(["xz", f"-{level}", "-T0", "-f", str(plain)], check=True)  # writes plain + ".xz"
    else:
        with open(plain, "rb") as source, lzma.open(archive_path, "wb", preset=level) as target:
            shutil.copyfileobj(source, target, 1 << 22)
        plain.unlink()
    return archive_path


def pack(out: Optional[Path], extra: List[str], level: int, which: str = "loader") -> dict:
    chosen = SETS[which]
    out = out or chosen.out
    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="vito-gpu-pack-") as temporary:
        wheels = download(chosen.wheels + extra, Path(temporary) / "wheels")
        site = Path(temporary) / "site"
        for wheel in wheels:
            with zipfile.ZipFile(wheel) as archive:
                archive.extractall(site)
        unpacked = left_out = 0
        for path in sorted(site.rglob("*")):
            if path.is_file():
                relative = path.relative_to(site)
                if never_loaded(relative):
                    left_out += path.stat().st_size
                    path.unlink()
                else:
                    unpacked += path.stat().st_size
        archive_path = compress(site, Path(temporary) / chosen.archive, level)
        for old in out.glob(f"{chosen.archive}.part*"):
            old.unlink()
        parts = []
        with open(archive_path, "rb") as source:
            while chunk := source.read(PART_BYTES):
                name = f"{chosen.archive}.part{len(parts):02d}"
                (out / name).write_bytes(chunk)
                parts.append({"name": name, "bytes": len(chunk), "sha256": hashlib.sha256(chunk).hexdigest()})
        call_one = download(chosen.call_one, out / "call1") if chosen.call_one else []
    record = {"set": which, "date": datetime.date.today().isoformat(), "wheels": [w.name for w in wheels],
              "call_one_wheels": [w.name for w in call_one], "unpacked_bytes": unpacked,
              "left_out_bytes": left_out, "compressed_bytes": sum(p["bytes"] for p in parts),
              "part_limit_bytes": PART_BYTES, "xz_preset": level, "parts": parts,
              "pack_seconds": round(time.perf_counter() - started)}
    text = json.dumps(record, indent=1) + "\n"
    (out / "parts.json").write_text(text)
    chosen.record.write_text(text)
    return record


def _parts_record(parts_json: Path) -> Optional[dict]:
    try:
        return json.loads(parts_json.read_text())
    except (OSError, ValueError) as error:
        print(f"gpu_stage: cannot read {parts_json} ({type(error).__name__}); carry it with every call")
        return None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def stage(part: Path) -> int:
    if not part.is_file():
        print(f"gpu_stage: {part} was not carried with this call (name it in carry)")
        return 2
    STAGE_DIR.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(part, STAGE_DIR / f".{part.name}.tmp")
    os.replace(STAGE_DIR / f".{part.name}.tmp", STAGE_DIR / part.name)
    staged = sorted(path.name for path in STAGE_DIR.glob("*.tar.xz.part*"))
    print(f"gpu_stage: staged {part.name} ({part.stat().st_size / 2**20:.1f} MiB); on this host now: "
          f"{', '.join(staged)}")
    return 0


def install(site: Path, parts_json: Path) -> int:
    record = _parts_record(parts_json)
    if record is None:
        return 2
    problems = []
    for part in record["parts"]:
        path = STAGE_DIR / part["name"]
        carried = parts_json.parent / part["name"]
        if not path.is_file() and carried.is_file():
            path = carried  # the last part usually travels with this very call
        if not path.is_file():
            problems.append(f"gpu_stage: part {part['name']} is missing on this host (the machine was given back "
                            f"since it was staged, or its call did not run): stage it again")
        elif path.stat().st_size != part["bytes"] or _sha256(path) != part["sha256"]:
            problems.append(f"gpu_stage: part {part['name']} is damaged (size or sha256 differs): stage it again")
        else:
            part["path"] = path
    if problems:
        print("\n".join(problems))
        return 2
    started = time.perf_counter()
    chosen = SETS[record.get("set", "loader")]
    site.mkdir(parents=True, exist_ok=True)
    joined = site.parent / f".{chosen.archive}"
    with open(joined, "wb") as out:
        for part in record["parts"]:
            with open(part["path"], "rb") as source:
                shutil.copyfileobj(source, out, 1 << 22)
    with tarfile.open(joined, "r:xz") as tar:
        tar.extractall(site, filter="tar") if sys.version_info >= (3, 12) else tar.extractall(site)
    joined.unlink()
    probe = ("import importlib, json, sys\nfound = {}\nfor name in sys.argv[1:]:\n    try:\n"
             "        found[name] = str(getattr(importlib.import_module(name), '__version__', '?'))\n"
             "    except Exception as error:\n        said = (str(error).strip().splitlines() or [''])[0][:160]\n"
             "        found[name] = 'no: ' + type(error).__name__ + ': ' + said\n"
             "print(json.dumps(found))")
    check = subprocess.run([sys.executable, "-c", probe, *chosen.imports], env={**os.environ, "PYTHONPATH": str(site)},
                           capture_output=True, text=True)
    try:
        found = json.loads(check.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        found = {name: "no: " + ((check.stderr.strip().splitlines() or ["?"])[-1][:200]) for name in chosen.imports}
    said = "; ".join(f"{name} {version}" if not version.startswith("no: ") else f"{name} does not import ({version[4:]})"
                     for name, version in found.items())
    print(f"gpu_stage: {len(record['parts'])} part(s) unpacked into {site} in {time.perf_counter() - started:.0f} s; "
          f"with PYTHONPATH={site}: {said}")
    return 0 if not any(version.startswith("no: ") for version in found.values()) else 2


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[2:5]))
    commands = parser.add_subparsers(dest="command", required=True)
    packing = commands.add_parser("pack", help="download, unpack, prune, xz and split (needs PyPI)")
    packing.add_argument("--set", choices=sorted(SETS), default="loader",
                         help="loader: DALI and PyAV (the GPU pass's plan); decoders: PyAV, PyNvVideoCodec and "
                              "torchcodec (`gpu_pass.py --plan decoders`)")
    packing.add_argument("--out", type=Path, default=None, help="folder for the parts (default .gpu/, .gpu/decoders/)")
    packing.add_argument("--extra", nargs="*", default=[], help="more NAME==VERSION wheels for the host")
    packing.add_argument("--level", type=int, default=9, help="xz preset (default 9)")
    staging = commands.add_parser("stage", help="on the host: keep one carried part outside the work tree")
    staging.add_argument("part", type=Path)
    installing = commands.add_parser("install", help="on the host: check the staged parts and unpack them")
    installing.add_argument("site", type=Path, help="folder to unpack into (then PYTHONPATH=SITE)")
    installing.add_argument("--parts", type=Path, default=ROOT / ".gpu" / "parts.json")
    args = parser.parse_args(argv)
    if args.command == "pack":
        record = pack(args.out, args.extra, args.level, args.set)
        print(f"gpu_stage: {len(record['wheels'])} wheels, {record['unpacked_bytes'] / 1e6:.0f} MB unpacked "
              f"({record['left_out_bytes'] / 1e6:.0f} MB left out) -> {record['compressed_bytes'] / 1e6:.0f} MB xz in "
              f"{len(record['parts'])} parts, {record['pack_seconds']} s; see `python benches/gpu_pass.py --plan`")
        return 0
    if args.command == "stage":
        return stage(args.part)
    return install(args.site, args.parts)


if __name__ == "__main__":
    sys.exit(main())
