"""The package imports everywhere, and the command line behaves."""
from __future__ import annotations

import subprocess
import sys

import pytest

import vito_fast
from vito_fast.cli.main import SUBCOMMANDS, main


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "vito_fast", *args], capture_output=True, text=True, timeout=120
    )


def test_import_is_light_and_extension_loads():
    code = (
        "import sys, vito_fast, vito_fast._C, vito_fast.kernels;"
        "assert 'triton' not in sys.modules or 'vito_fast.kernels' in sys.modules;"
        "import vito_fast._cpp as c; assert c.available(), c.load_error();"
        "print(vito_fast.__version__)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == vito_fast.__version__


def test_import_without_dali_does_not_load_it():
    code = "import sys, vito_fast, vito_fast.data; assert 'nvidia.dali' not in sys.modules"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_help_lists_every_subcommand():
    done = run_cli("--help")
    assert done.returncode == 0
    for name in SUBCOMMANDS:
        assert name in done.stdout


def test_version():
    done = run_cli("--version")
    assert done.returncode == 0
    assert vito_fast.__version__ in done.stdout


def test_unknown_subcommand_fails_with_a_message(capsys):
    assert main(["frobnicate"]) != 0
    assert "unknown command 'frobnicate'" in capsys.readouterr().err


def test_no_subcommand_prints_usage(capsys):
    assert main([]) != 0
    assert "COMMAND" in capsys.readouterr().err


def test_unknown_attribute_names_the_module():
    with pytest.raises(AttributeError, match="vito_fast"):
        vito_fast.does_not_exist


def test_subcommand_not_built_yet_fails_with_a_message(monkeypatch, capsys):
    monkeypatch.setitem(SUBCOMMANDS, "teleport", "a command this version does not have")
    assert main(["teleport"]) != 0
    assert "not built yet" in capsys.readouterr().err


def test_bench_lists_the_suites_and_rejects_unknown_ones(capsys):
    from vito_fast.cli.bench import available_benches, default_benches_dir

    benches_dir = default_benches_dir()
    assert benches_dir is not None
    assert main(["bench", "--list"]) == 0
    listed = capsys.readouterr().out.split()
    assert listed == available_benches(benches_dir)
    assert sorted(p.stem for p in benches_dir.glob("bench_*.py")) == [f"bench_{n}" for n in listed]
    assert main(["bench", "no_such_suite"]) == 2
    assert "no suite named no_such_suite" in capsys.readouterr().err
