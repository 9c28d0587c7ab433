"""Keeping a Mac awake (impetus.system.awake) with a stand-in caffeinate that
does what caffeinate(8) documents for `-w PID`: it lives until that process exits."""

from __future__ import annotations

import subprocess
import sys
import time

from impetus.system.awake import keep_awake


def test_caffeinate_holds_while_the_server_lives_and_ends_with_it(tmp_path):
    record = tmp_path / "caffeinate.args"
    stand_in = tmp_path / "caffeinate"
    stand_in.write_text(f"#!/bin/sh\necho \"$@\" > '{record}'\n"
                        'while kill -0 "$3" 2>/dev/null; do sleep 0.1; done\n')
    stand_in.chmod(0o755)
    server = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        awake = keep_awake(server.pid, program=str(stand_in), platform="darwin")
        deadline = time.monotonic() + 10
        while not record.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert record.read_text().split() == ["-i", "-w", str(server.pid)]
        assert awake.poll() is None  # holding
    finally:
        server.kill()
        server.wait()
    assert awake.wait(10) == 0  # gone with the server


def test_nothing_to_do_off_a_mac(tmp_path):
    assert keep_awake(program="/bin/true", platform="linux") is None
    assert keep_awake(program=str(tmp_path / "none"), platform="darwin") is None
