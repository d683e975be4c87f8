"""What the Python benchmark scripts (tests/bench/*) and tests/soak share:
ports on 127.0.0.1, waiting for a listener, and installing the Debian
packages a script needs. Imported, not run:

    sys.dont_write_bytecode = True
    sys.path.insert(0, os.path.join(ROOT, "tests", "bench"))
    from benchlib import free_port, need, wait_port
"""

import os
import shutil
import socket
import subprocess
import sys
import time


_GIVEN = set()


def free_port():
    """A TCP port on 127.0.0.1 that nothing listens on now, and that this
    script was not given before (the kernel may hand out a port again once
    the socket that found it is closed: two listeners of one config then
    asked for the same one)."""
    while True:
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        if port not in _GIVEN:
            _GIVEN.add(port)
            return port


def wait_port(port, seconds=10.0, why=None):
    """Returns once something accepts on 127.0.0.1:`port`; after `seconds`
    exits the script, saying so, and what `why()` (if given) adds: e.g.
    which of the programs it started has exited, with its log."""
    end = time.monotonic() + seconds
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            if time.monotonic() >= end:
                break
            time.sleep(0.05)
    sys.exit(f"nothing listens on 127.0.0.1:{port} after {seconds:g} s" + (why() if why else ""))


def have(command):
    return shutil.which(command) is not None or os.path.exists(f"/usr/sbin/{command}")


def need(commands, who):
    """Installs the Debian packages of the `(command, package)` pairs whose
    command is missing; exits, naming them, when the install did not
    provide them. Debian starts the services it installs (nginx,
    HAProxy): they are stopped, as the benchmarks run their own."""
    missing = sorted({pkg for cmd, pkg in commands if not have(cmd)})
    if not missing:
        return
    print(f"{who}: installing {' '.join(missing)} from Debian", file=sys.stderr)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], env=env, check=True)
    subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing], env=env, check=True,
                   stdout=subprocess.DEVNULL)
    subprocess.run(["pkill", "-x", "nginx"], check=False)
    subprocess.run(["pkill", "-x", "haproxy"], check=False)
    still = [f"`{cmd}` (Debian package {pkg})" for cmd, pkg in commands if not have(cmd)]
    if still:
        sys.exit(f"{who} needs {', '.join(still)}, and installing did not provide it")
