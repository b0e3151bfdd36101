"""Build the Cython core (hetccl/_native/*.pyx).

Everything else (metadata, dependencies, entry points) lives in pyproject.toml. The extensions are
compiled with -O3 so the reduction and copy loops vectorise; hot kernels pick AVX2/AVX-512 at run
time through GCC function multiversioning, so one build serves every x86-64 host.
"""
import glob
import os

from Cython.Build import cythonize
from setuptools import Extension, setup

NATIVE = os.path.join("hetccl", "_native")


def extensions():
    exts = []
    for pyx in sorted(glob.glob(os.path.join(NATIVE, "*.pyx"))):
        name = "hetccl._native." + os.path.splitext(os.path.basename(pyx))[0]
        exts.append(Extension(
            name, [pyx],
            include_dirs=[NATIVE],
            extra_compile_args=["-O3", "-fno-strict-aliasing", "-Wno-unused-function",
                                "-Wno-unreachable-code"],
            libraries=["rt"],
        ))
    return cythonize(exts, language_level=3, compiler_directives={
        "boundscheck": False, "wraparound": False, "cdivision": True, "initializedcheck": False,
        "embedsignature": True,
    })


setup(ext_modules=extensions())
