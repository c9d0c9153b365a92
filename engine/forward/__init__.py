"""Forwarding: rules, their durable queues over the index's change log, the senders, and the
forwarder process of ``pacs serve``.

It stands beside ``net/`` and ``web/``, above :class:`engine.archive.Archive`: it uses the
archive and the DIMSE send path (``engine.net.send``); nothing below Archive imports it.
"""
