"""Impetus as a package, not a checkout: the wheel carries the nginx and
service templates and the built dashboard (impetus.share), and `impetus up`
from a venv it is installed into, run from a folder that is no checkout,
serves an answer and the dashboard through nginx, over TLS, with its data
dir at a Mac's `.../Library/Application Support/Impetus`.

The venv gets the wheel itself with pip (--no-deps) and finds the
dependencies in the checkout's venv through a .pth line, so no package is
downloaded twice; the checkout's own (editable) impetus is not on its path."""

from __future__ import annotations

import ssl
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import httpx
import pytest

from impetus.models.store import DEFAULT_MODEL
from impetus.server.process import free_port

from processes import Foreground

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


def test_the_installed_wheel_serves_an_answer_and_the_dashboard_through_nginx(data_dir, tmp_path):
    assert (REPO / "service/impetus/share/dashboard/index.html").exists(), "make dashboard first"
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path / "wheels"),
                            str(REPO)], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr
    wheel = next((tmp_path / "wheels").glob("impetus-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in ("impetus/share/nginx/nginx.conf", "impetus/share/nginx/impetus-server.conf",
                 "impetus/share/services/launchd.plist", "impetus/share/services/systemd.service",
                 "impetus/share/services/newsyslog.conf", "impetus/share/dashboard/index.html"):
        assert name in names, name
    assert any(n.startswith("impetus/share/dashboard/assets/") and n.endswith(".js") for n in names)

    venv = tmp_path / "Application Support" / "venv"  # a path with a space, as a Mac's would have
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    site = Path(sysconfig.get_path("purelib", vars={"base": str(venv), "platbase": str(venv)}))
    (site / "checkout-dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    installed = subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install",
                                "-q", "--no-deps", str(wheel)], capture_output=True, text=True, timeout=300)
    assert installed.returncode == 0, installed.stderr
    where = subprocess.run([str(venv / "bin" / "python"), "-c", "import impetus, impetus.share as s; "
                            "print(impetus.__file__); print(s.DASHBOARD)"], capture_output=True, text=True,
                           cwd=tmp_path, check=True).stdout.split("\n")
    assert Path(where[0]).is_relative_to(venv) and Path(where[1]).is_relative_to(venv)

    stack_dir = tmp_path / "Library" / "Application Support" / "Impetus"
    (stack_dir / "models").mkdir(parents=True)
    (stack_dir / "models" / DEFAULT_MODEL).symlink_to(data_dir / "models" / DEFAULT_MODEL)
    port = free_port()
    # With TLS: the certificate and key lie under "Application Support" too, in nginx's config.
    stack = Foreground(["up", "--tls", "--port", str(port), "--data-dir", str(stack_dir)],
                       {"IMPETUS_PORT": str(free_port())}, program=[str(venv / "bin" / "impetus")], cwd=tmp_path)
    try:
        stack.wait_for("impetus is up")
        key = stack.wait_for("admin key: ").split("admin key: ", 1)[1]
        url = f"https://127.0.0.1:{port}"
        client = httpx.Client(verify=ssl.create_default_context(cafile=stack_dir / "tls" / "cert.pem"), timeout=120)
        reply = client.post(f"{url}/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                            json={"model": DEFAULT_MODEL, "max_tokens": 8, "temperature": 0,
                                  "messages": [{"role": "user", "content": "What is the capital of France?"}]})
        assert reply.status_code == 200, reply.text
        assert reply.json()["choices"][0]["message"]["content"]
        page = client.get(f"{url}/dashboard/")
        assert page.status_code == 200 and "<html" in page.text.lower()
        assert "dashboard: not built" not in "\n".join(stack.output)
    finally:
        code = stack.stop()
    assert code == 0, "\n".join(stack.output)
