"""A userspace TCP relay that delays every byte by ``--delay-ms`` in each direction (so the round
trip gains twice that), for benchmarks over a "real" link without ``tc netem``:

    .venv/bin/python bench/delay_relay.py --listen 127.0.0.1:7001 --target 127.0.0.1:5000

Each chunk read is stamped on arrival and written out no earlier than its stamp plus the delay,
in order, so bandwidth is not throttled, only latency added (a one-way delay, like a long
cable). SIGUSR1 turns the relay into a black hole (it keeps every connection open and forwards
nothing: a network partition), SIGUSR2 back into a relay. It prints ``ready`` once listening.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import time

CHUNK = 1 << 16


class Link:
    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.healed = asyncio.Event()
        self.healed.set()

    def partition(self) -> None:
        self.healed.clear()

    def heal(self) -> None:
        self.healed.set()


async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, link: Link) -> None:
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def receive() -> None:
        while data := await reader.read(CHUNK):
            queue.put_nowait((time.monotonic() + link.delay, data))
        queue.put_nowait((time.monotonic() + link.delay, b""))

    async def send() -> None:
        while True:
            due, data = await queue.get()
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            await link.healed.wait()
            if not data:
                with contextlib.suppress(OSError):
                    writer.write_eof()
                return
            writer.write(data)
            await writer.drain()

    with contextlib.suppress(OSError, ConnectionError):
        await asyncio.gather(receive(), send())


async def serve(listen: tuple[str, int], target: tuple[str, int], link: Link) -> None:
    async def handle(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            server_r, server_w = await asyncio.open_connection(*target)
        except OSError:
            client_w.close()
            return
        try:
            await asyncio.gather(pump(client_r, server_w, link), pump(server_r, client_w, link))
        finally:
            for w in (client_w, server_w):
                with contextlib.suppress(OSError):
                    w.close()

    server = await asyncio.start_server(handle, *listen)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGUSR1, link.partition)
    loop.add_signal_handler(signal.SIGUSR2, link.heal)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    print("ready", flush=True)
    async with server:
        await stop.wait()


def address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", type=address, required=True)
    parser.add_argument("--target", type=address, required=True)
    parser.add_argument("--delay-ms", type=float, default=15.0, help="one way (default: 15)")
    args = parser.parse_args(argv)
    asyncio.run(serve(args.listen, args.target, Link(args.delay_ms / 1000)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
