"""The Makefile's choice of Python (scripts/find-python), with stand-in
interpreters on PATH: a Mac has Apple's 3.9 as /usr/bin/python3, Homebrew's
python@3.12 as /opt/homebrew/bin/python3.12 (not on PATH, never `python3`),
or nothing new enough at all."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "find-python"


def interpreter(folder: Path, name: str, version: str) -> Path:
    """A stand-in that answers find-python's and the Makefile's questions as
    that version would; `-m venv DIR` makes DIR/bin/python, a stand-in of the
    same version, and `-m pip ...` or `-m uv ...` is written to the log beside it."""
    major, minor = (int(part) for part in version.split(".")[:2])
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text("#!/bin/sh\n"
                    'case "$*" in\n'
                    f'  *version_info*) exit {0 if (major, minor) >= (3, 10) else 1} ;;\n'
                    f'  *python_version*) echo {version} ;;\n'
                    f'  -V) echo "Python {version}" ;;\n'
                    f'  "-m venv "*) mkdir -p "$3/bin" && cp "$0" "$3/bin/python" ;;\n'
                    '  "-m pip "*|"-m uv "*) echo "$0 $*" >> "$(dirname "$0")/pip.log" ;;\n'
                    "esac\n")
    path.chmod(0o755)
    return path


def find(tmp_path: Path, path_dirs: list[Path], brew_dirs: list[Path], **env) -> subprocess.CompletedProcess:
    tools = tmp_path / "tools"  # uname only: nothing else of this machine's is on PATH
    tools.mkdir(exist_ok=True)
    if not (tools / "uname").exists():
        (tools / "uname").symlink_to(shutil.which("uname"))
    environment = {"PATH": os.pathsep.join(map(str, [*path_dirs, tools])),
                   "IMPETUS_PYTHON_DIRS": os.pathsep.join(map(str, brew_dirs)), **env}
    return subprocess.run(["/bin/sh", str(SCRIPT)], capture_output=True, text=True, env=environment)


def test_apples_39_is_passed_over_for_homebrews_312(tmp_path):
    usr_bin, brew = tmp_path / "usr bin", tmp_path / "opt" / "homebrew" / "bin"
    interpreter(usr_bin, "python3", "3.9.6")
    chosen = interpreter(brew, "python3.12", "3.12.8")
    result = find(tmp_path, [usr_bin], [brew])
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(chosen)
    assert result.stderr.strip() == f"using {chosen} (3.12.8)"


def test_only_apples_39_stops_with_the_line_naming_what_to_install(tmp_path):
    usr_bin = tmp_path / "usr" / "bin"
    interpreter(usr_bin, "python3", "3.9.6")
    result = find(tmp_path, [usr_bin], [tmp_path / "no-brew"])
    assert result.returncode == 1 and result.stdout == ""
    line, = result.stderr.strip().splitlines()
    assert "3.9.6, too old" in line
    expected = "brew install python@3.12" if os.uname().sysname == "Darwin" else "apt-get install python3"
    assert expected in line


def test_no_python_at_all(tmp_path):
    result = find(tmp_path, [], [tmp_path / "no-brew"])
    assert result.returncode == 1
    assert result.stderr.strip().startswith("no Python 3.10 or newer: install one with")


@pytest.mark.parametrize("version, ok", [("3.12.1", True), ("3.9.6", False)])
def test_a_python_named_by_the_user_is_checked(tmp_path, version, ok):
    named = interpreter(tmp_path / "mine", "python", version)
    result = find(tmp_path, [], [], PYTHON=str(named))
    assert (result.returncode == 0) == ok
    assert (result.stdout.strip() == str(named)) == ok


def test_a_newer_python3_on_path_is_taken_when_no_versioned_one_is_there(tmp_path):
    usr_bin = tmp_path / "bin"
    chosen = interpreter(usr_bin, "python3", "3.11.4")
    result = find(tmp_path, [usr_bin], [])
    assert result.returncode == 0 and result.stdout.strip() == str(chosen)


def test_make_says_which_python_it_uses():
    result = subprocess.run(["make", "-s", "python"], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr
    chosen = result.stdout.strip()
    version = subprocess.run([chosen, "-c", "import sys; print(sys.version_info >= (3, 10))"],
                             capture_output=True, text=True).stdout.strip()
    assert version == "True" and result.stderr.startswith("using ")


def test_a_venv_made_with_an_old_python_is_made_again(tmp_path):
    """The Makefile's own venv rule, run by make with stand-ins: a .venv that
    Apple's 3.9 made (before find-python) is removed and made with 3.12. (A
    make target cannot hold a space, so this venv is outside the Mac-like temp
    dir; the Makefile's own paths are relative to the checkout.)"""
    venv = Path(tempfile.mkdtemp(prefix="impetus-venv-")) / "venv"
    interpreter(venv / "bin", "python", "3.9.6")
    (venv / "made-by-3.9").touch()
    brew = interpreter(tmp_path / "brew", "python3.12", "3.12.8")
    tools = tmp_path / "tools"
    tools.mkdir()
    for tool in ("uname", "rm", "touch", "id", "mkdir", "cp", "dirname"):
        (tools / tool).symlink_to(shutil.which(tool))
    environment = {"PATH": str(tools), "IMPETUS_PYTHON_DIRS": str(tmp_path / "brew"), "HOME": str(tmp_path)}
    result = subprocess.run([shutil.which("make"), "-s", "-C", str(REPO), f"VENV={venv}", f"{venv}/.installed"],
                            capture_output=True, text=True, env=environment)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{venv} was made with Python 3.9.6, older than 3.10: making it again" in result.stdout
    assert not (venv / "made-by-3.9").exists() and (venv / ".installed").exists()
    made = subprocess.run([str(venv / "bin" / "python"), "-V"], capture_output=True, text=True).stdout
    assert made.strip() == "Python 3.12.8"
    installs = (venv / "bin" / "pip.log").read_text()
    assert "-m pip install -q uv" in installs
    assert f"-m uv pip install -q --compile-bytecode --python {venv}/bin/python -e .[test]" in installs
    assert brew.exists()
    shutil.rmtree(venv.parent)
