"""Vast's entry point for `BACKEND=null`: replaces itself with `nullworker serve`.

Vast's start script clones `PYWORKER_REPO`, creates a virtual environment,
installs `requirements.txt` into it (the `nullworker` wheel, whose binary lands
in the environment's `bin/`), changes into the clone and runs
`python3 -m workers.null.worker`. This module does only this:

1. finds the binary: `NULLWORKER_BIN` if set, else the `nullworker` that the
   wheel installed beside this interpreter, else the first on `PATH`;
2. if `NULLWORKER_CONSUMER` is set, starts it first, in the background, with
   `/bin/sh -c` and the same environment (your queue consumer, e.g.
   `nullworker consume --queue 'redis://…?list=jobs' -- ./do-one-job`); it
   gets SIGTERM when the worker exits;
3. execs `nullworker serve` (same process, so Vast's signals reach the worker
   directly) with Vast's environment unchanged: `CONTAINER_ID`, `REPORT_ADDR`,
   `MASTER_TOKEN`, `WORKER_PORT`, `PUBLIC_IPADDR`, `VAST_TCP_PORT_<port>`,
   `USE_SSL`, `BACKEND_HEALTH_URL`, `NULL_CONTROL_PORT`, …

The only change to the environment: the binary's directory is put first on
`PATH`, so the consumer's `nullworker …` is the same binary. Arguments given
to this module are passed on to `nullworker serve`.

Standard library only: nothing else is installed before this runs.
"""

import os
import shutil
import signal
import subprocess
import sys
import sysconfig

PR_SET_PDEATHSIG = 1


def fail(message: str) -> None:
    print(f"workers.null.worker: {message}", file=sys.stderr, flush=True)
    sys.exit(1)


def find_binary() -> str:
    explicit = os.environ.get("NULLWORKER_BIN")
    if explicit:
        if not (os.path.isfile(explicit) and os.access(explicit, os.X_OK)):
            fail(f"NULLWORKER_BIN={explicit!r} is not an executable file")
        return explicit
    beside = [sysconfig.get_path("scripts"), os.path.dirname(sys.executable)]
    for directory in beside:
        candidate = os.path.join(directory, "nullworker")
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which("nullworker")
    if found:
        return found
    fail(
        "no nullworker binary: requirements.txt installs it from the nullworker wheel "
        f"(looked in {', '.join(beside)} and on PATH); see deploy/README.md, "
        "or set NULLWORKER_BIN to a binary"
    )
    raise AssertionError("unreachable")


def die_with_parent() -> None:
    """In the consumer, before exec: SIGTERM when its parent (the worker) exits."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def start_consumer(command: str) -> None:
    print(f"workers.null.worker: starting the consumer: {command}", file=sys.stderr, flush=True)
    try:
        subprocess.Popen(["/bin/sh", "-c", command], preexec_fn=die_with_parent)
    except OSError as err:
        fail(f"cannot start NULLWORKER_CONSUMER={command!r}: {err}")


def main() -> None:
    binary = find_binary()
    directory = os.path.dirname(os.path.abspath(binary))
    path = os.environ.get("PATH", "")
    if path.split(os.pathsep)[0] != directory:
        os.environ["PATH"] = directory + (os.pathsep + path if path else "")
    consumer = os.environ.get("NULLWORKER_CONSUMER", "").strip()
    if consumer:
        start_consumer(consumer)
    argv = [binary, "serve", *sys.argv[1:]]
    print(f"workers.null.worker: exec {' '.join(argv)}", file=sys.stderr, flush=True)
    sys.stdout.flush()
    try:
        os.execv(binary, argv)
    except OSError as err:
        fail(f"cannot run {binary}: {err}")


if __name__ == "__main__":
    main()
