"""uvicorn's httptools protocol with a limit on the request head (request line plus headers).

httptools (llhttp) puts no limit on the size of a request's head and uvicorn adds none: a
client can send header bytes for as long as it likes and the server buffers them all (httptools
even joins the pieces of one header by repeated concatenation). uvicorn's h11 protocol has a
limit, `h11_max_incomplete_event_size`; this class applies the same setting to httptools, so
`VAE_MAX_HEADER_BYTES` means one thing whichever parser runs:

- the bytes of the URL and of every complete header are counted exactly, and
- while a head is still incomplete, every byte fed to the parser is counted too (a single
  endless header never reaches a callback),

and past the limit the client gets a 431 and the connection is closed.
"""

from __future__ import annotations

import asyncio

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

DEFAULT_MAX_HEAD_BYTES = 32 * 1024


class HeadTooLarge(httptools.HttpParserError):
    """Raised from a parser callback; uvicorn turns parser errors into `send_400_response`."""


class HeadLimitedHttpToolsProtocol(HttpToolsProtocol):
    """`HttpToolsProtocol` refusing request heads over `config.h11_max_incomplete_event_size`
    bytes with 431 Request Header Fields Too Large."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._max_head = self.config.h11_max_incomplete_event_size or DEFAULT_MAX_HEAD_BYTES
        self._in_head = True
        self._head_bytes = 0
        self._head_too_large = False

    def _count(self, size: int) -> None:
        self._head_bytes += size
        if self._head_bytes > self._max_head:
            self._head_too_large = True
            raise HeadTooLarge("request head too large")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        self._head_bytes = 0

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)  # ": " and CRLF
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        super().on_headers_complete()

    def data_received(self, data: bytes) -> None:
        was_in_head = self._in_head
        super().data_received(data)
        # Still inside the same head after a whole chunk: all of it was head bytes, buffered
        # by the parser whether or not a callback has seen them yet.
        if was_in_head and self._in_head and not self.transport.is_closing():
            self._head_bytes += len(data)
            if self._head_bytes > self._max_head:
                self._head_too_large = True
                self.send_400_response("request head too large")

    def send_400_response(self, msg: str) -> None:
        if not self._head_too_large:
            super().send_400_response(msg)
            return
        body = (
            f'{{"detail":"request line and headers are over the limit of {self._max_head} bytes"}}'
        ).encode("ascii")
        head = [b"HTTP/1.1 431 Request Header Fields Too Large\r\n"]
        for name, value in self.server_state.default_headers:
            head.extend([name, b": ", value, b"\r\n"])
        head.extend(
            [
                b"content-type: application/json\r\n",
                b"content-length: " + str(len(body)).encode("ascii") + b"\r\n",
                b"x-content-type-options: nosniff\r\n",
                b"connection: close\r\n",
                b"\r\n",
                body,
            ]
        )
        self.transport.write(b"".join(head))
        self.transport.close()
