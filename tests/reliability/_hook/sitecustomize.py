"""Installed only on the PYTHONPATH of servers started by the reliability tests.

Every Python process of such a server (the supervisor and each spawned
worker) runs this at start-up. With ENGINE_TEST_CRASH_POINT set, it wraps
the engine's own write path so that the process SIGKILLs itself at that
point; with ENGINE_TEST_FSYNC_EIO_AT=N, the N-th fdatasync of each process
fails with EIO. The engine carries no fault-injection code.
"""

import faulthandler
import os
import signal

# SIGUSR1 prints every thread's stack to the server log: how a hang is diagnosed
faulthandler.register(signal.SIGUSR1, all_threads=True)

if os.environ.get("ENGINE_TEST_FSYNC_EIO_AT"):
    from tests.reliability._crash import install_fsync_eio

    install_fsync_eio(int(os.environ["ENGINE_TEST_FSYNC_EIO_AT"]))

if os.environ.get("ENGINE_TEST_CRASH_POINT"):
    from tests.reliability._crash import install_from_env

    install_from_env()
