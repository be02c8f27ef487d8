# Stub for the optional C extension built from fcgi/_speedups.c.
from _typeshed import ReadableBuffer

def decode_params(data: ReadableBuffer, /) -> dict[str, str] | None: ...
