"""The optional compiled data path (wgdisco/io/_fastpath.c, docs/tunnel.md "Data paths").

Built by ``pip install`` like aioquic's C modules, against OpenSSL's libcrypto (Debian:
libssl-dev, in the Makefile's APT_PACKAGES). It is optional: without a compiler, Python
headers or libssl-dev the build of the extension fails with a warning, the install
succeeds, and wgdisco runs its pure-Python data path (one log line at start says which).
WGDISCO_BUILD_FASTPATH=0 skips it; =1 makes a failed build an error. WGDISCO_SANITIZE=1
builds it with AddressSanitizer and UBSan (``make test-asan``).
"""

import os
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

WANT = os.environ.get("WGDISCO_BUILD_FASTPATH", "auto")
SANITIZE = os.environ.get("WGDISCO_SANITIZE") == "1"


class OptionalBuildExt(build_ext):
    """Build what can be built; a failure is a warning unless WGDISCO_BUILD_FASTPATH=1."""

    def run(self):
        try:
            super().run()
        except Exception as e:  # noqa: BLE001 - any build failure leaves the pure path
            self._failed(e)

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as e:  # noqa: BLE001
            self._failed(e)

    def _failed(self, e):
        if WANT == "1":
            raise
        sys.stderr.write(f"warning: the compiled data path was not built ({e}); wgdisco will use the "
                         "pure-Python data path (install gcc, python3-dev and libssl-dev to build it)\n")


compile_args = ["-std=gnu11", "-Wall", "-Wextra", "-Wno-unused-parameter", "-Wno-missing-field-initializers"]
link_args = []
if SANITIZE:
    compile_args += ["-O1", "-g", "-fsanitize=address,undefined", "-fno-omit-frame-pointer",
                     "-fno-sanitize-recover=undefined"]
    link_args += ["-fsanitize=address,undefined"]

ext_modules = []
if WANT != "0" and sys.platform.startswith("linux"):
    ext_modules.append(Extension(
        "wgdisco.io._fastpath",
        sources=["wgdisco/io/_fastpath.c"],
        libraries=["crypto"],
        extra_compile_args=compile_args,
        extra_link_args=link_args,
        optional=WANT != "1",  # setuptools would turn a failure of an optional one into a warning
    ))

setup(ext_modules=ext_modules, cmdclass={"build_ext": OptionalBuildExt})
