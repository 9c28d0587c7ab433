"""The Homebrew formula kept in the repository (packaging/homebrew/impetus.rb):
valid Ruby, and depending only on formulae of homebrew-core. Those three
(nginx, python@3.12, redis) were checked against homebrew-core's own tree
(Formula/n/nginx.rb, Formula/p/python@3.12.rb, Formula/r/redis.rb); the
nginx exporter is not there (it comes from nginxinc/tap), so neither the
formula nor `make run` may need it."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FORMULA = REPO / "packaging" / "homebrew" / "impetus.rb"
HOMEBREW_CORE = {"nginx", "python@3.12", "redis"}


@pytest.mark.skipif(shutil.which("ruby") is None, reason="ruby is not installed (make test-deps installs it)")
def test_the_formula_is_valid_ruby():
    result = subprocess.run(["ruby", "-c", str(FORMULA)], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == "Syntax OK", result.stderr


def test_the_formula_depends_only_on_homebrew_core_and_installs_the_wheel():
    text = FORMULA.read_text()
    formulae = set(re.findall(r'^\s*depends_on "([^"]+)"', text, re.M))
    assert formulae == HOMEBREW_CORE
    assert "depends_on arch: :arm64" in text
    assert re.search(r'system libexec/"bin/pip", "install", .*wheel', text)
    # make run asks Homebrew only for what it needs; the exporters are test-deps, and may fail there.
    makefile = (REPO / "Makefile").read_text()
    run_packages = re.search(r"^BREW_PACKAGES := (.*)$", makefile, re.M).group(1).split()
    assert set(run_packages) == {"redis", "nginx", "node"}
    assert "nginxinc/tap/nginx-prometheus-exporter" in re.search(r"^BREW_TEST_PACKAGES := (.*)$", makefile,
                                                                 re.M).group(1)
