"""Build and install vito_fast.

The package has three parts that land in one import name:
  vito_fast/          the Python package
  vito_fast.kernels   the Triton kernels, kept in kernels/ at the top level (package_dir mapping)
  vito_fast._C        the pybind11 extension built from csrc/ (no PyTorch ABI: plain C++17)
"""
import os
import platform
import sys

from setuptools import find_packages, setup

try:
    from pybind11.setup_helpers import Pybind11Extension, build_ext
except ImportError as error:  # pragma: no cover - pyproject.toml lists pybind11 as a build requirement
    raise SystemExit(
        "vito_fast: building the C++ extension needs pybind11; "
        "run `pip install pybind11` or install with build isolation (plain `pip install -e .`)"
    ) from error

HERE = os.path.dirname(os.path.abspath(__file__))

# An explicit source list: a new file in csrc/ is built only when it is named here.
CPP_SOURCES = [
    "csrc/bindings.cpp",
    "csrc/sampler.cpp",
]


def read_version() -> str:
    namespace: dict = {}
    with open(os.path.join(HERE, "vito_fast", "version.py")) as handle:
        exec(handle.read(), namespace)
    return namespace["__version__"]


def make_c_extension() -> Pybind11Extension:
    compile_args = ["-O3", "-std=c++17", "-fvisibility=hidden"]
    link_args = []
    if sys.platform.startswith("linux"):
        compile_args.append("-pthread")
        link_args.append("-pthread")
    print(
        f"vito_fast: building _C from {len(CPP_SOURCES)} sources with {compile_args} "
        f"on {platform.system()} {platform.machine()}, Python {platform.python_version()}"
    )
    return Pybind11Extension(
        "vito_fast._C",
        sources=CPP_SOURCES,
        include_dirs=[os.path.join(HERE, "csrc")],
        extra_compile_args=compile_args,
        extra_link_args=link_args,
        cxx_std=17,
    )


# DALI, the default augmentation engine, is CUDA-version specific and 200 MB: VITO_FAST_DALI=cuda120
# picks the CUDA 12 build, VITO_FAST_DALI=none installs without it (the loader then runs its torch
# backend: data.backend=auto falls back to it, and only torch and torchvision are needed).
DALI_BUILDS = ("cuda130", "cuda120", "none")
DALI_BUILD = os.environ.get("VITO_FAST_DALI", "cuda130")
if DALI_BUILD not in DALI_BUILDS:
    raise SystemExit(f"vito_fast: VITO_FAST_DALI must be one of {DALI_BUILDS}, not {DALI_BUILD!r}")
DALI_REQUIREMENTS = [] if DALI_BUILD == "none" else [
    f"nvidia-dali-{DALI_BUILD}; platform_system == 'Linux' and platform_machine == 'x86_64'"]

RUNTIME_REQUIREMENTS = [
    "torch>=2.4",
    "torchvision>=0.19",
    "triton>=3.0; platform_system == 'Linux'",
    *DALI_REQUIREMENTS,
    "numpy>=1.24",
    "scipy>=1.10",
    "pillow>=9",
    "av>=12",
    "tqdm>=4.60",
    "tensorboard>=2.12",
    "pyyaml>=6",
]

# Data on object storage or web servers (vito_fast.storage.remote): fsspec, and its package per protocol.
REMOTE_REQUIREMENTS = ["fsspec>=2023.1", "aiohttp>=3.8"]
# ViT trunks (model.arch=vit_*): timm's Vision Transformers, built locally (no weights downloaded)
VIT_REQUIREMENTS = ["timm>=0.9.16"]
# the tests start a real S3-protocol server on loopback (moto's server mode) and read it with s3fs;
# torchcodec's decoder is checked against PyAV on the CPU, with the FFmpeg in PyAV's wheel
TEST_REQUIREMENTS = ["pytest>=7", "pytest-benchmark>=4", "hypothesis>=6", *REMOTE_REQUIREMENTS, "s3fs",
                     "moto[server]>=5", *VIT_REQUIREMENTS, "torchcodec>=0.8; platform_system == 'Linux'"]

setup(
    name="vito_fast",
    version=read_version(),
    description="Fast VITO-style self-supervised pretraining of image encoders on video",
    long_description=open(os.path.join(HERE, "README.md")).read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    packages=find_packages(include=["vito_fast", "vito_fast.*"]) + ["vito_fast.kernels"],
    package_dir={"vito_fast.kernels": "kernels"},
    package_data={"vito_fast.curate": ["resources/*.txt", "resources/README.md"]},
    ext_modules=[make_c_extension()],
    cmdclass={"build_ext": build_ext},
    install_requires=RUNTIME_REQUIREMENTS,
    extras_require={"test": TEST_REQUIREMENTS, "remote": REMOTE_REQUIREMENTS, "vit": VIT_REQUIREMENTS,
                    "s3": [*REMOTE_REQUIREMENTS, "s3fs"], "gcs": [*REMOTE_REQUIREMENTS, "gcsfs"]},
    entry_points={"console_scripts": ["vito-fast = vito_fast.cli.main:main"]},
    zip_safe=False,
)
