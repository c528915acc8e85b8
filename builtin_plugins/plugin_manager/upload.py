"""Reading the upload of ``POST /plugin/install`` (http-api §7): a ``multipart/form-data`` form
or a raw gzip body, plus the optional expected SHA-256."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from email.message import Message

from sdk import Invalid, UnsupportedMediaType

__all__ = ["read_upload"]

_RAW_TYPES = frozenset({"application/gzip", "application/x-gzip", "application/octet-stream"})
_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")


def _header(value: str, kind: str) -> Message:
    """A message whose ``kind`` header is ``value``, to read its parameters with the stdlib."""
    msg = Message()
    msg[kind] = value
    return msg


def _parts(body: bytes, boundary: str) -> Iterator[tuple[Mapping[str, str], bytes]]:
    """The parts of a multipart body: (lowercased headers, content)."""
    delimiter = b"\r\n--" + boundary.encode("latin-1")
    pieces = (b"\r\n" + body).split(delimiter)
    for piece in pieces[1:]:
        if piece.startswith(b"--"):
            return
        _, _, piece = piece.partition(b"\r\n")  # transport padding after the boundary
        head, sep, content = piece.partition(b"\r\n\r\n")
        if not sep:
            raise Invalid("invalid multipart body")
        headers: dict[str, str] = {}
        for line in head.decode("utf-8", "replace").split("\r\n"):
            key, colon, value = line.partition(":")
            if colon:
                headers[key.strip().lower()] = value.strip()
        yield headers, content


def read_upload(
    content_type: str, body: bytes, query_sha256: str | None
) -> tuple[bytes, str | None]:
    """The archive's bytes and the expected SHA-256 (``None`` when not given)."""
    media = content_type.split(";", 1)[0].strip().lower()
    expected = query_sha256
    if media == "multipart/form-data":
        boundary = _header(content_type, "content-type").get_param("boundary")
        if not isinstance(boundary, str) or not boundary:
            raise Invalid("multipart must contain a 'plugin' file field")
        named: bytes | None = None
        by_filename: bytes | None = None
        for headers, content in _parts(body, boundary):
            disposition = _header(headers.get("content-disposition", ""), "content-disposition")
            field = disposition.get_param("name", header="content-disposition")
            filename = disposition.get_param("filename", header="content-disposition")
            if field == "plugin" and named is None:
                named = content
            elif (
                isinstance(filename, str)
                and filename.lower().endswith((".tar.gz", ".tgz"))
                and by_filename is None
            ):
                by_filename = content
            elif field == "sha256" and expected is None:
                expected = content.decode("utf-8", "replace").strip()
        archive = named if named is not None else by_filename
        if archive is None:
            raise Invalid("multipart must contain a 'plugin' file field")
    elif media in _RAW_TYPES:
        archive = body
    else:
        raise UnsupportedMediaType(
            "unsupported content type; expected multipart/form-data or application/gzip"
        )
    if expected is not None and not _SHA256.match(expected.strip()):
        raise Invalid("sha256 must be 64 hexadecimal digits")
    return archive, expected.strip().lower() if expected is not None else None
