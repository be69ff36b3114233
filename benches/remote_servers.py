"""The servers of bench_remote.py, in a process of their own (as object storage is not in the trainer's).

    python benches/remote_servers.py FOLDER LATENCY_MS...

Serves FOLDER over HTTP with Range support (tests/range_server.py) and, where moto is installed,
from an S3 bucket "corpus" that holds a copy of FOLDER's files (moto's server mode); puts a
FaultProxy (tests/fault_proxy.py) that waits LATENCY_MS before every request in front of each.
Prints one JSON line {"http": {ms: url}, "s3": {ms: url}} (s3 absent without moto), then serves
until its standard input closes. Each proxy counts the requests and bytes it answers
(``GET <url>/__fault_proxy__/stats``).
"""
from __future__ import annotations

import json
import logging
import os
import sys
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from fault_proxy import FaultProxy  # noqa: E402
from range_server import RangeServer  # noqa: E402


def _moto_bucket(stack: ExitStack, folder: Path):
    """The URL of a moto S3 server holding FOLDER's files in bucket "corpus", or None without moto."""
    try:
        import s3fs
        from moto.server import ThreadedMotoServer
    except ImportError:
        return None
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request on the bench's output
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    stack.callback(server.stop)
    host, port = server.get_host_and_port()
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        os.environ.setdefault(name, "bench")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    fs = s3fs.S3FileSystem(endpoint_url=f"http://{host}:{port}", skip_instance_cache=True)
    fs.mkdir("corpus")
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            fs.put_file(str(path), f"corpus/{path.relative_to(folder).as_posix()}")
    return f"http://{host}:{port}"


def main(argv) -> None:
    folder, latencies = Path(argv[0]), [int(value) for value in argv[1:]]
    with ExitStack() as stack:
        upstreams = {"http": stack.enter_context(RangeServer(folder)).url, "s3": _moto_bucket(stack, folder)}
        urls = {kind: {ms: stack.enter_context(FaultProxy(upstream, latency=ms / 1000.0)).url for ms in latencies}
                for kind, upstream in upstreams.items() if upstream is not None}
        print(json.dumps(urls), flush=True)
        sys.stdin.read()  # until the bench closes our input


if __name__ == "__main__":
    main(sys.argv[1:])
