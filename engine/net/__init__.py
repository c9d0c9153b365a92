"""DIMSE: the DICOM network server (``pacs serve``) on top of :class:`engine.archive.Archive`.

- :mod:`engine.net.server`: the supervisor and its worker processes.
- :mod:`engine.net.scp`: a worker's Application Entity and its handlers.
- :mod:`engine.net.store`, :mod:`engine.net.find`, :mod:`engine.net.retrieve`:
  C-ECHO and C-STORE, C-FIND, C-GET and C-MOVE.
- :mod:`engine.net.status`: the one table from engine errors to DIMSE statuses.
- :mod:`engine.net.transport`: SO_REUSEPORT, TCP_NODELAY, access control
  during association negotiation, and the choice between the two paths below.
- :mod:`engine.net.fastpath`, :mod:`engine.pdu`: associations that only
  store, echo and find, served without pynetdicom's reactor (PDUs read by hand).
- :mod:`engine.net.settings`: the ``[server]``, ``[remotes.*]`` and ``[access]`` tables.

Nothing here is imported by ``import engine``; the ``serve`` command imports it.
"""
