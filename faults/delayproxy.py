"""A TCP proxy that can delay every chunk it forwards, to make a backend slow.

Run as its own process so that its work does not compete with the load
generator for one interpreter::

    python -m faults.delayproxy LISTEN_PORT TARGET_PORT CONTROL_PORT

A line ``delay 0.15`` sent to the control port makes every chunk, in both
directions, wait 0.15 s before it is passed on (so a request and its answer
take at least 0.3 s more); ``delay 0`` forwards at once. The answer is ``ok``.
Chunks keep their order. When the target cannot be reached, the client's
connection is closed at once, as a stopped backend would do.
"""

from __future__ import annotations

import asyncio
import sys


class Proxy:
    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.delay = 0.0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        await asyncio.gather(
            self.pump(reader, up_writer), self.pump(up_reader, writer), return_exceptions=True
        )

    async def pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                chunk = await reader.read(65536)
                if not chunk:
                    break
                if self.delay > 0:
                    await asyncio.sleep(self.delay)
                writer.write(chunk)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            try:
                writer.close()
            except Exception:
                pass

    async def control(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while line := await reader.readline():
            words = line.decode().split()
            if len(words) == 2 and words[0] == "delay":
                self.delay = float(words[1])
                writer.write(b"ok\n")
            else:
                writer.write(b"error\n")
            await writer.drain()
        writer.close()


async def main(listen_port: int, target_port: int, control_port: int) -> None:
    proxy = Proxy(target_port)
    server = await asyncio.start_server(proxy.handle, "127.0.0.1", listen_port, backlog=1024)
    control = await asyncio.start_server(proxy.control, "127.0.0.1", control_port)
    print("ready", flush=True)
    async with server, control:
        await asyncio.gather(server.serve_forever(), control.serve_forever())


if __name__ == "__main__":
    asyncio.run(main(*(int(a) for a in sys.argv[1:4])))
