#!/usr/bin/env python3
"""A stand-in for launchctl that behaves as launchctl(1), launchd.plist(5)
and the reports cited in impetus.stack.launchd say, keeping its jobs in a
JSON file ($FAKE_LAUNCHD_STATE):

- `bootout` returns at once; the job stays (draining) for $FAKE_LAUNCHD_DRAIN_S
  seconds, while `print` still finds it and `bootstrap` of it fails with
  `Bootstrap failed: 5: Input/output error`, exit status 5.
- `print gui/UID` fails (113, no such domain) when $FAKE_LAUNCHD_NO_GUI is
  set: nobody is logged in at the screen; bootstrapping there fails with 125.
- `bootstrap user/UID` of an agent that is not LimitLoadToSessionType
  Background fails (launchd treats an agent without it as Aqua, TN2083).
- `bootstrap` of a loaded job fails with 37 (already loaded).
Every call is appended to the state's log.
"""

import json
import os
import plistlib
import sys
import time

STATE = os.environ["FAKE_LAUNCHD_STATE"]


def load():
    try:
        with open(STATE) as f:
            return json.load(f)
    except FileNotFoundError:
        return {"jobs": {}, "log": []}


def save(state):
    with open(STATE, "w") as f:
        json.dump(state, f)


def fail(code, message):
    print(message, file=sys.stderr)
    sys.exit(code)


def main(arguments):
    state = load()
    state["log"].append(arguments)
    save(state)
    now = time.time()
    jobs = {target: job for target, job in state["jobs"].items() if job.get("gone_at", now + 1) > now}
    state["jobs"] = jobs
    save(state)
    verb = arguments[0]
    if verb == "print":
        target = arguments[1]
        if target.startswith("gui/") and "/" not in target[4:]:
            if os.environ.get("FAKE_LAUNCHD_NO_GUI"):
                fail(113, f"Could not find domain for port identifier: {target}")
            return
        if target not in jobs:
            fail(113, f"Could not find service \"{target.rsplit('/', 1)[-1]}\" in domain for port")
        print(f"{target} = {{\n\tstate = {'running' if 'gone_at' not in jobs[target] else 'exiting'}\n}}")
    elif verb == "bootout":
        target = arguments[1]
        if target in jobs and "gone_at" not in jobs[target]:
            jobs[target]["gone_at"] = now + float(os.environ.get("FAKE_LAUNCHD_DRAIN_S", "0"))
            save(state)
        elif target not in jobs:
            fail(113, "Boot-out failed: 113: Could not find specified service")
    elif verb == "bootstrap":
        domain, path = arguments[1], arguments[2]
        with open(path, "rb") as f:
            job = plistlib.load(f)
        target = f"{domain}/{job['Label']}"
        if domain.startswith("gui/") and os.environ.get("FAKE_LAUNCHD_NO_GUI"):
            fail(125, "Bootstrap failed: 125: Domain does not support specified action")
        if domain.startswith("user/") and job.get("LimitLoadToSessionType") != "Background":
            fail(5, "Bootstrap failed: 5: Input/output error")
        if target in jobs:
            if "gone_at" in jobs[target]:
                fail(5, "Bootstrap failed: 5: Input/output error")
            fail(37, "Bootstrap failed: 37: Operation already in progress")
        jobs[target] = {"plist": path, "started": now}
        save(state)
    else:
        fail(64, f"unknown verb {verb}")


if __name__ == "__main__":
    main(sys.argv[1:])
