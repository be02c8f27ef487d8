"""``wsgi.file_wrapper`` (PEP 3333), in a module of its own.

It stays out of the modules setup.py compiles: apps subclass it, set
attributes on it and give it whatever block size they like, as they may with
any Python class, and a class compiled by mypyc allows none of that.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import IO


class FileWrapper:
    """Iterate a file in record-sized blocks; its ``close`` closes the file."""

    def __init__(self, filelike: IO[bytes], blksize: int = 0xFFF8) -> None:
        self.filelike = filelike
        self.blksize = blksize
        if hasattr(filelike, "close"):
            self.close = filelike.close

    def __iter__(self) -> Iterator[bytes]:
        read = self.filelike.read
        while block := read(self.blksize):
            yield block
