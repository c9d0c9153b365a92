"""``pacs bench``: the archive benchmark anyone can point at any PACS (a client; no Archive).

corpus.py writes deterministic studies; ingest.py, query.py and retrieve.py
measure an archive over DICOM and DICOMweb through the lean client of
:mod:`engine.dimse`; report.py holds the result schema, the tables and the comparison;
cli.py registers the sub-commands on the ``pacs`` parser.
"""
