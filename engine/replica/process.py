"""The follower process of ``pacs serve --replica-of``: one Follower, until SIGTERM or promotion.

The supervisor starts it before the workers (which then refuse stores: the
archive is a replica) and restarts it if it dies. It exits 0 once promoted;
the supervisor then starts the forwarder if rules are configured. It holds
``replica.lock`` in the data directory while it runs, so that ``pacs
promote`` knows whether to ask it or to promote the archive itself.
"""

from __future__ import annotations

import fcntl
import logging
import os
import sys
from pathlib import Path
from typing import Any

from engine.config import Config
from engine.net.settings import ServerSettings

log = logging.getLogger("engine.replica")

REPLICA = -2  # its index among the supervisor's processes
PROMOTED_EXIT = 3  # its exit code once promoted: not restarted
LOCK_NAME = "replica.lock"


def lock_follower(path: str | os.PathLike[str], *, wait: bool) -> int | None:
    """Take the follower's lock on an archive folder; its fd, or None if a follower holds it."""
    fd = os.open(Path(path) / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def run_replica(index: int, path: str, config: Config, settings: ServerSettings,
                ready: Any, level: int) -> None:  # fmt: skip
    """Body of the follower process (the arguments of :func:`engine.net.server.run_worker`)."""
    from engine.archive import Archive
    from engine.net.server import LOG_FORMAT, stop_on_signals
    from engine.replica.follower import Follower, Primary, ReplicaSettings

    logging.basicConfig(level=logging.WARNING, format=LOG_FORMAT)
    logging.getLogger("engine.replica").setLevel(level)
    stop = stop_on_signals()
    replica = ReplicaSettings.from_mapping(config.extra.get("replica"))
    assert replica is not None  # the supervisor starts this process only then
    lock = lock_follower(path, wait=True)
    archive = Archive(path, config.updated(idle_recompress_s=0.0))  # the workers recompress
    primary = Primary(replica)
    try:
        promoted = archive.replica_of() is None  # by `pacs promote` while no follower ran
        if not promoted:
            follower = Follower(archive, primary, stop)
        ready.put((index, os.getpid()))
        if not promoted:
            log.warning("replica (pid %d) following %s", os.getpid(), replica.primary)
            promoted = follower.run()
    finally:
        primary.close()
        archive.close()
        if lock is not None:
            os.close(lock)
    if promoted:
        sys.exit(PROMOTED_EXIT)
