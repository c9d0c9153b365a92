"""DICOMweb (PS3.18): QIDO-RS, WADO-RS, STOW-RS and WADO-URI as one ASGI app over an Archive.

``engine.web.app.create_app(archive, settings)`` builds the application;
``engine.web.server.run_http(archive, host, port, stop_event)`` serves it
with uvicorn in a thread of a worker process. Importing this package loads
nothing heavy; starlette loads with :mod:`engine.web.app`.
"""
