"""A record-aware man in the middle on 127.0.0.1: forwards the channel's 2-byte-framed records
between a client and a server and lets a test drop, duplicate, reorder, alter or cut them."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field

#: hook(index, record) -> (records to forward now, close the connection after them)
Hook = Callable[[int, bytes], tuple[list[bytes], bool]]


def passthrough(index: int, record: bytes) -> tuple[list[bytes], bool]:
    return [record], False


@dataclass
class Proxy:
    target_port: int
    client_to_server: Hook = passthrough
    server_to_client: Hook = passthrough
    seen: dict[str, list[bytes]] = field(default_factory=lambda: {"c2s": [], "s2c": []})
    _server: asyncio.Server | None = None

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._on_client, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _on_client(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        s_reader, s_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        await asyncio.gather(self._pump(c_reader, s_writer, self.client_to_server, "c2s", c_writer),
                             self._pump(s_reader, c_writer, self.server_to_client, "s2c", s_writer))

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, hook: Hook, name: str,
                    other: asyncio.StreamWriter) -> None:
        i = 0
        try:
            while True:
                head = await reader.readexactly(2)
                body = await reader.readexactly(int.from_bytes(head, "big"))
                record = head + body
                self.seen[name].append(record)
                out, close = hook(i, record)
                i += 1
                for chunk in out:
                    writer.write(chunk)
                await writer.drain()
                if close:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()
            with contextlib.suppress(Exception):
                other.close()
