"""Device gating, seeds and the Triton interpreter for CPU-only machines.

On a machine without CUDA, Triton kernels run through Triton's CPU interpreter
(``TRITON_INTERPRET=1``), so the kernels themselves are tested in CI. The variable must be set
before ``triton`` is first imported, hence at the top of this file.

The interpreter stands in for the GPU only in tests that ask for it through the ``kernel_device``
fixture: elsewhere ``VITO_FAST_INTERPRET_CPU_TENSORS=0`` makes ``backend="triton"`` on CPU tensors
raise, as it does on a GPU host, so a test that runs the kernels on the CPU because they happen to
be interpreted here fails in CI instead of on the GPU. The variable reaches spawned workers too.
"""
from __future__ import annotations

import os
import random
import shutil
import zlib

import numpy as np
import pytest


def _cuda_available() -> bool:
    if shutil.which("nvidia-smi") is None and not os.path.exists("/dev/nvidiactl"):
        return False  # never touch the CUDA runtime on a machine without a driver
    import torch

    return torch.cuda.is_available()


CUDA = _cuda_available()
if not CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")
    os.environ["VITO_FAST_INTERPRET_CPU_TENSORS"] = "0"  # granted per test by kernel_device

import torch  # noqa: E402  (after TRITON_INTERPRET is set)

# Where the Triton kernels run in these tests: the GPU when there is one, else the interpreter.
KERNEL_DEVICE = "cuda" if CUDA else "cpu"

try:  # DALI's CPU pipelines run here too; a machine without DALI skips the tests of its backend
    import nvidia.dali  # noqa: F401
    HAVE_DALI = True
except ImportError:
    HAVE_DALI = False
needs_dali = pytest.mark.skipif(not HAVE_DALI, reason="NVIDIA DALI is not installed: its backend cannot run")


def pytest_collection_modifyitems(config, items):
    skip_cuda = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if item.get_closest_marker("cuda") is not None and not CUDA:  # the marker, not a name with "cuda"
            item.add_marker(skip_cuda)


@pytest.fixture
def kernel_device(monkeypatch) -> str:
    """The device on which Triton kernels run in this test ("cuda", or "cpu" through Triton's
    interpreter): a test that runs the kernels puts its tensors (and its training run) there."""
    if not CUDA:
        from vito_fast.kernels._utils import interpreting

        if not interpreting():
            pytest.skip("the Triton kernels need a CUDA device or TRITON_INTERPRET=1")
        monkeypatch.setenv("VITO_FAST_INTERPRET_CPU_TENSORS", "1")
    return KERNEL_DEVICE


@pytest.fixture(scope="session")
def pyav():
    """PyAV, for a test that writes or decodes videos; skipped where it is not installed (a GPU host
    may lack it although the package requires it)."""
    return pytest.importorskip("av", reason="PyAV is not installed: the test writes or decodes videos")


@pytest.fixture
def one_cpu_thread():
    """One intra-op thread for the test: the small CPU training steps run faster that way on a
    2-core machine, and the spawned multi-process tests do not oversubscribe the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _seed_everything(request):
    """A fresh, reproducible seed per test (derived from its name), printed on failure."""
    seed = zlib.crc32(request.node.nodeid.encode()) % (2**31)  # str hash() is salted per process
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    yield seed


@pytest.fixture
def s3_bucket(monkeypatch):
    """A real S3-protocol endpoint on loopback (moto's server mode), credentials and endpoint the standard way;
    an s3fs filesystem with an empty bucket "corpus" (skipped without fsspec, aiohttp, s3fs or moto)."""
    pytest.importorskip("fsspec", reason="fsspec is not installed: pip install 'vito_fast[remote]'")
    pytest.importorskip("aiohttp", reason="aiohttp is not installed: pip install 'vito_fast[remote]'")
    pytest.importorskip("s3fs", reason="s3fs is not installed: pip install 'vito_fast[s3]'")
    server_module = pytest.importorskip("moto.server", reason="moto is not installed: pip install 'moto[server]'")
    server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    for name, value in (("AWS_ACCESS_KEY_ID", "test"), ("AWS_SECRET_ACCESS_KEY", "test"),
                        ("AWS_DEFAULT_REGION", "us-east-1"), ("AWS_ENDPOINT_URL", f"http://{host}:{port}")):
        monkeypatch.setenv(name, value)
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    import urllib.request

    # moto keeps its buckets in the process: start each test from none
    urllib.request.urlopen(urllib.request.Request(f"http://{host}:{port}/moto-api/reset", method="POST"))
    fs = s3fs.S3FileSystem()
    fs.mkdir("corpus")
    yield fs
    s3fs.S3FileSystem.clear_instance_cache()
    server.stop()
