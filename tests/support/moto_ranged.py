"""``python -m moto.server`` whose S3 reads only the bytes a ranged GET asks for: the moto server
of the tests (``tests/support/services.py``) and the benchmarks.

moto 5.2.5 answers ``Range: bytes=a-b`` by reading the whole object and slicing it
(``S3Response._key_response_get`` returns ``key.value``, ``_handle_range_header`` slices), so a
download in 16 MiB ranges of an N-byte object reads N²/16 MiB: a 1 GiB download read 64 GiB, a
4 GiB one 1 TiB (hours), and the mode with bigger ranges looks faster than it is. Real S3 reads
the range. Here, for a plain object GET (no sub-resource such as ``?acl`` or ``?partNumber``)
with one satisfiable range ``bytes=a-b`` (``a <= b``) or ``bytes=a-``, the object's value is
read from ``a`` to ``b`` only, and the range header is answered from that; anything else
(suffix ranges, multiple ranges, ``a > b``, past the end: moto's 416) is moto's own code.
``tests/test_moto_ranged.py`` holds it to the exact bytes and to moto's answers.

    python -m tests.support.moto_ranged -H 127.0.0.1 -p PORT
"""

from __future__ import annotations

import re
import threading
from typing import Any
from urllib.parse import parse_qs, urlsplit

from moto.s3.models import FakeKey
from moto.s3.responses import S3Response

_PLAIN_RANGE = re.compile(r"bytes=(\d+)-(\d*)")
_state = threading.local()  # moto's server answers each request on one thread

_key_response = S3Response.key_response
_handle_range_header = S3Response._handle_range_header
_value: Any = FakeKey.value  # the property


_SIGNATURE_V2 = {"AWSAccessKeyId", "Signature", "Expires"}


def _plain_object_get(full_url: str) -> bool:
    """A GET of the object itself: only a version, header overrides and a presigned URL's
    signature in the query (``?acl``, ``?tagging``, ``?partNumber``... are moto's)."""
    query = parse_qs(urlsplit(full_url).query, keep_blank_values=True)
    return all(
        name == "versionId"
        or name in _SIGNATURE_V2
        or name.startswith(("response-", "X-Amz-", "x-amz-"))
        for name in query
    )


def key_response(self: Any, request: Any, full_url: str, headers: Any) -> Any:
    match = _PLAIN_RANGE.fullmatch(request.headers.get("range", "") or "")
    if request.method != "GET" or not match or not _plain_object_get(full_url):
        return _key_response(self, request, full_url, headers)
    begin, end = int(match[1]), int(match[2]) if match[2] else None
    if end is not None and end < begin:
        return _key_response(self, request, full_url, headers)  # moto (and S3): the whole object
    _state.asked, _state.served = (begin, end), None
    try:
        return _key_response(self, request, full_url, headers)
    finally:
        _state.asked = _state.served = None


def value(self: Any) -> bytes:
    asked = getattr(_state, "asked", None)
    if asked is None:
        return _value.fget(self)
    _state.asked = None  # the one read of this request: the body
    begin, end = asked
    last = self.size - 1
    if begin > last:
        return _value.fget(self)  # moto's 416
    end = last if end is None else min(end, last)
    with self.lock:
        self._value_buffer.seek(begin)
        data: bytes = self._value_buffer.read(end - begin + 1)
    _state.served = (begin, end, self.size)
    return data


def handle_range_header(self: Any, request: Any, response_headers: Any, content: Any) -> Any:
    served = getattr(_state, "served", None)
    if served is None:
        return _handle_range_header(self, request, response_headers, content)
    begin, end, size = served
    if begin or end < size - 1:  # a range of the whole object keeps its checksum (as moto's)
        for key in [h for h in response_headers if h.startswith("x-amz-checksum-")]:
            del response_headers[key]
    response_headers["content-range"] = f"bytes {begin}-{end}/{size}"
    response_headers["content-length"] = str(len(content))
    return 206, response_headers, content


S3Response.key_response = key_response  # type: ignore[method-assign]
S3Response._handle_range_header = handle_range_header  # type: ignore[method-assign, assignment]
FakeKey.value = property(value, _value.fset)  # type: ignore[assignment, method-assign]

if __name__ == "__main__":
    from moto.server import main

    main()
