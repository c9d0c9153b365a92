"""Build the optional native extension engine._native from ext/.

The package works without it (every native function has a pure-Python twin),
so a missing compiler or Cython only skips the extension, loudly.
"""

import os
import sys

from setuptools import setup
from setuptools.command.build_ext import build_ext


class OptionalBuildExt(build_ext):
    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # noqa: BLE001 -- any build failure means "pure Python"
            print(f"warning: engine._native not built ({exc}); using pure Python", file=sys.stderr)

    def build_extension(self, ext):  # type: ignore[no-untyped-def]
        try:
            super().build_extension(ext)
        except Exception as exc:  # noqa: BLE001
            print(f"warning: {ext.name} not built ({exc}); using pure Python", file=sys.stderr)


def extensions():  # type: ignore[no-untyped-def]
    if os.environ.get("ENGINE_NO_NATIVE"):
        return []
    try:
        from Cython.Build import cythonize
    except ImportError:
        print("warning: Cython missing; engine._native not built", file=sys.stderr)
        return []
    from setuptools import Extension

    native = Extension(
        "engine._native",
        ["ext/_native.pyx"],
        extra_compile_args=["-O3"],
    )
    return cythonize(
        [native],
        language_level=3,
        compiler_directives={"boundscheck": False, "wraparound": False, "cdivision": True},
    )


setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt})
