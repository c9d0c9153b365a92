# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""engine._native: the one extension module; each area's code is an included file.

scan.pyx: the twin of engine/scan/_scan_py.py.
"""

include "scan.pyx"
