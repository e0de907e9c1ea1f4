"""The one thing pyproject.toml cannot say without a warning (`ext-modules` there is still
experimental in setuptools): the C extension codestream._headers, packet-header decoding
(codestream/native.py). `optional`: an install without a C compiler or Python's headers still
succeeds, and indexing then uses the Python reference (codestream/packets.py)."""
from setuptools import Extension, setup

setup(ext_modules=[Extension("codestream._headers", ["codestream/_headers.c"], optional=True)])
