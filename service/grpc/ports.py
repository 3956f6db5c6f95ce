"""The gRPC port of several workers: reserved once by the parent, then shared by the workers.

Each worker's gRPC server (service/grpc/server.py) binds the port with SO_REUSEPORT, as its
HTTP socket does, so the kernel spreads new connections over the workers. SO_REUSEPORT alone
would also let a worker join a socket some other program of the same user holds: `reserve`
first binds the port *without* it, which fails if anything at all is bound there, and only
then holds it (bound, not listening) with SO_REUSEPORT for the workers, telling them through
RESERVED_ENV that the port is theirs to share. Imports nothing of grpc (the parent never does).
"""

from __future__ import annotations

import os
import socket

RESERVED_ENV = "VAE_GRPC_RESERVED"  # "host:port" the parent reserved for its workers


def address(host: str, port: int) -> str:
    """host:port as gRPC writes it ([::1]:8001 for IPv6)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _bind(host: str, port: int, reuse_port: bool) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is no owner
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def reserve(host: str, port: int) -> socket.socket:
    """A socket holding host:port for the workers' gRPC servers (close it when they are
    done); OSError when anything else is bound to the port. Sets RESERVED_ENV."""
    _bind(host, port, reuse_port=False).close()
    holder = _bind(host, port, reuse_port=True)
    os.environ[RESERVED_ENV] = address(host, port)
    return holder
