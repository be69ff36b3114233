"""The package imports everywhere, and the command line behaves."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

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


SETUP_REQUIREMENTS = """
import runpy, sys, types

captured = {}
setuptools = types.ModuleType("setuptools")
setuptools.setup = lambda **options: captured.update(options)
setuptools.find_packages = lambda **options: []
helpers = types.ModuleType("pybind11.setup_helpers")
helpers.Pybind11Extension = lambda *args, **options: None
helpers.build_ext = object
sys.modules.update({"setuptools": setuptools, "pybind11": types.ModuleType("pybind11"),
                    "pybind11.setup_helpers": helpers})
runpy.run_path(sys.argv[1], run_name="__main__")
print("\\n".join(captured["install_requires"]))
"""


@pytest.mark.parametrize("build, expected", [(None, "nvidia-dali-cuda130"), ("cuda120", "nvidia-dali-cuda120"),
                                             ("none", None)])
def test_setup_installs_dali_unless_told_not_to(build, expected):
    """setup.py's requirements (setuptools and pybind11 stubbed): DALI by default, the CUDA 12 build
    or none at all with VITO_FAST_DALI; torch and torchvision always."""
    env = {key: value for key, value in os.environ.items() if key != "VITO_FAST_DALI"}
    if build is not None:
        env["VITO_FAST_DALI"] = build
    setup_py = Path(__file__).resolve().parents[1] / "setup.py"
    result = subprocess.run([sys.executable, "-c", SETUP_REQUIREMENTS, str(setup_py)], capture_output=True, text=True,
                            env=env, cwd=setup_py.parent, timeout=60)
    assert result.returncode == 0, result.stderr
    requirements = result.stdout.split()
    dali = [line for line in result.stdout.splitlines() if line.startswith("nvidia-dali")]
    assert dali == ([] if expected is None else [f"{expected}; platform_system == 'Linux' and platform_machine == 'x86_64'"])
    assert any(item.startswith("torch>=") for item in requirements)
    assert any(item.startswith("torchvision>=") for item in requirements)
    bad = subprocess.run([sys.executable, "-c", SETUP_REQUIREMENTS, str(setup_py)], capture_output=True, text=True,
                         env={**env, "VITO_FAST_DALI": "cuda11"}, cwd=setup_py.parent, timeout=60)
    assert bad.returncode != 0 and "VITO_FAST_DALI must be one of" in bad.stderr
