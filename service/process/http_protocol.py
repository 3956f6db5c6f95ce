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
KEEP_ALIVE_RECHECK = 0.01  # seconds: see timeout_keep_alive_handler


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
        self._keep_alive_rechecked = False
        self._close_after_next = False

    def shed(self) -> None:
        """Move this keep-alive connection elsewhere, at a response boundary: the response in
        progress, or else the next one, says `Connection: close`, and the client reconnects
        (the kernel then picks a socket among every worker's). The supervisor asks for this
        when a replacement worker starts serving (service/process/workers.py): without it
        the connections that moved to the other workers when one died would stay there."""
        cycle = self.cycle
        if cycle is not None and not cycle.response_started:
            cycle.keep_alive = False  # its response, not yet begun, says Connection: close
        else:
            self._close_after_next = True

    def _count(self, size: int) -> None:
        self._head_bytes += size
        if self._head_bytes > self._max_head:
            self._head_too_large = True
            raise HeadTooLarge("request head too large")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        self._head_bytes = 0
        self._keep_alive_rechecked = False

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)  # ": " and CRLF
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        super().on_headers_complete()
        if self._close_after_next and self.cycle is not None:
            self.cycle.keep_alive = False

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

    def timeout_keep_alive_handler(self) -> None:
        """Close an idle keep-alive connection, but look for a request once more first.

        uvloop (libuv) runs due timers before it polls for I/O. When the process has not run
        for longer than the keep-alive timeout (SIGSTOP, a VM pause, a long stall: measured by
        scripts/chaos.py, "sigstop"), the timer of a connection whose next request arrived in
        time fires before that request is read, and closing then resets the connection under
        the client. A second chance KEEP_ALIVE_RECHECK later lets pending bytes be read first
        (reading cancels the timer); a connection that really is idle closes 10 ms later."""
        if not self._keep_alive_rechecked and not self.transport.is_closing():
            self._keep_alive_rechecked = True
            self.timeout_keep_alive_task = self.loop.call_later(
                KEEP_ALIVE_RECHECK, self.timeout_keep_alive_handler
            )
            return
        super().timeout_keep_alive_handler()

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
