"""The forwarder process of ``pacs serve``: the rules' threads over the archive, until SIGTERM.

It serves nothing and writes no segment: it reads the change log and the
records, and writes only its queues' state in the index. The supervisor
starts it before the workers listen (a new rule's queue begins at the log's
head then, so it covers every store the server takes) and restarts it if it
dies; a restarted forwarder resumes each rule at its committed cursor.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from engine.config import Config
from engine.net.settings import ServerSettings

log = logging.getLogger("engine.forward")

FORWARDER = -1  # its index among the supervisor's processes
STOP_GRACE_S = 30.0  # a batch under way gets this long to be answered


def run_forwarder(index: int, path: str, config: Config, settings: ServerSettings,
                  ready: Any, level: int) -> None:  # fmt: skip
    """Body of the forwarder process (the arguments of :func:`engine.net.server.run_worker`)."""
    from engine.archive import Archive
    from engine.forward.queue import ForwardQueue
    from engine.forward.rules import forward_rules
    from engine.forward.runner import start_rules
    from engine.net.server import LOG_FORMAT, stop_on_signals

    logging.basicConfig(level=logging.WARNING, format=LOG_FORMAT)
    for name in ("engine.net", "engine.forward"):
        logging.getLogger(name).setLevel(level)
    stop = stop_on_signals()
    rules = forward_rules(config.extra, settings.remotes)
    archive = Archive(path, config.updated(idle_recompress_s=0.0))  # the workers recompress
    try:
        for rule in rules:  # a new rule's queue begins here, before the workers take stores
            ForwardQueue(archive.env, rule.name).cursor()
        threads = start_rules(archive, rules, settings, stop)
        ready.put((index, os.getpid()))
        log.warning("forwarder (pid %d) forwarding by %d rules: %s", os.getpid(), len(rules),
                    ", ".join(f"{r.name} -> {r.target}" for r in rules))  # fmt: skip
        while not stop.wait(1.0):
            pass
        for t in threads:
            t.join(STOP_GRACE_S)
    finally:
        archive.close()
