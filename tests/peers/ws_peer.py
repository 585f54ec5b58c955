#!/usr/bin/env python3
"""A real WebSocket peer (the `websockets` package) for Trellis's end-to-end tests.

  ws_peer.py server --port 0
      Echo server on 127.0.0.1, path /ws only; prints `READY <port>`.
  ws_peer.py client --url ws://HOST:PORT/ws [--proxy http://ADDR] [--request-target absolute|origin]
      Sends 5 text messages and one 1 MiB binary message, checks each echo, closes cleanly;
      prints one line per check, then `OK`. Exit code 0 only if every check passed.

Through --proxy the client opens the TCP connection to the proxy itself and hands the socket to
websockets (`sock=`): the upgrade is a plain HTTP/1.1 request to the proxy, not a CONNECT tunnel
(websockets' own proxy support only does CONNECT). The request line carries the absolute form
`GET http://HOST:PORT/ws HTTP/1.1` (an `http://` URI: the upgrade is an HTTP request) and the
Host header names the target, so the proxy can route by either. `--request-target origin` sends
`GET /ws` instead, leaving routing to the Host header.
"""

import argparse
import asyncio
import os
import signal
import socket
import sys
from http import HTTPStatus
from urllib.parse import urlsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import serve
from websockets.exceptions import ConnectionClosed, InvalidHandshake

PATH = "/ws"
TIMEOUT = 10.0  # seconds, per step
MAX_MESSAGE = 4 << 20
TEXT_COUNT = 5
BINARY_SIZE = 1 << 20


# --- server -----------------------------------------------------------------------------


def only_ws_path(connection, request):
    # A proxy must forward the upgrade in origin form; anything else is a 404 here.
    if request.path != PATH:
        return connection.respond(
            HTTPStatus.NOT_FOUND, f"expected path {PATH}, got {request.path}\n"
        )
    return None


async def echo(websocket):
    try:
        async for message in websocket:
            await websocket.send(message)
    except ConnectionClosed:
        pass


async def serve_forever(port: int) -> int:
    stop = asyncio.get_running_loop().create_future()
    for signum in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(signum, stop.set_result, None)
    async with serve(
        echo,
        "127.0.0.1",
        port,
        process_request=only_ws_path,
        max_size=MAX_MESSAGE,
    ) as server:
        bound = server.sockets[0].getsockname()[1]
        print(f"READY {bound}", flush=True)
        await stop
    return 0


# --- client -----------------------------------------------------------------------------


class CheckFailed(Exception):
    pass


def absolute_form_connection(target: str) -> type[ClientConnection]:
    """A ClientConnection whose handshake request line carries `target` (absolute form)."""

    class AbsoluteFormConnection(ClientConnection):
        def __init__(self, protocol, **kwargs):
            super().__init__(protocol, **kwargs)
            build_request = protocol.connect

            def connect_absolute():
                request = build_request()
                request.path = target
                return request

            protocol.connect = connect_absolute

    return AbsoluteFormConnection


async def exchange(ws, message):
    await asyncio.wait_for(ws.send(message), TIMEOUT)
    try:
        return await asyncio.wait_for(ws.recv(), TIMEOUT)
    except asyncio.TimeoutError:
        raise CheckFailed(f"no echo within {TIMEOUT:.0f}s") from None


async def run_client(url: str, proxy: str | None, request_target: str) -> int:
    parts = urlsplit(url)
    if parts.scheme != "ws" or not parts.hostname:
        print(f"FAIL usage: --url must be ws://HOST:PORT/PATH, got {url!r}")
        return 2
    # proxy=None: never pick up proxies from the environment.
    options = dict(max_size=MAX_MESSAGE, open_timeout=TIMEOUT, proxy=None)
    via = ""
    if proxy:
        proxy_parts = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        proxy_addr = (proxy_parts.hostname, proxy_parts.port or 80)
        via = f" via proxy {proxy_addr[0]}:{proxy_addr[1]}"
        try:
            options["sock"] = socket.create_connection(proxy_addr, timeout=TIMEOUT)
        except OSError as e:
            print(f"FAIL connect: proxy {proxy_addr[0]}:{proxy_addr[1]}: {e}")
            return 1
        if request_target == "absolute":
            path = parts.path or "/"
            if parts.query:
                path += f"?{parts.query}"
            options["create_connection"] = absolute_form_connection(
                f"http://{parts.netloc}{path}"
            )

    try:
        ws = await connect(url, **options)
    except (OSError, asyncio.TimeoutError, InvalidHandshake) as e:
        print(f"FAIL handshake: {url}{via}: {type(e).__name__}: {e}")
        return 1
    print(f"ok   handshake: {url}{via} ({ws.response.status_code})", flush=True)

    failed = 0
    try:
        for i in range(TEXT_COUNT):
            message = f"hello-{i} from trellis"
            reply = await exchange(ws, message)
            if reply != message:
                raise CheckFailed(f"text {i}: sent {message!r}, got {reply!r}")
        print(f"ok   text: {TEXT_COUNT} messages echoed", flush=True)

        payload = os.urandom(BINARY_SIZE)
        reply = await exchange(ws, payload)
        if not isinstance(reply, bytes):
            raise CheckFailed(f"binary: echo came back as {type(reply).__name__}")
        if reply != payload:
            raise CheckFailed(f"binary: echo differs ({len(reply)} bytes, sent {len(payload)})")
        print(f"ok   binary: {BINARY_SIZE} bytes echoed", flush=True)

        await asyncio.wait_for(ws.close(), TIMEOUT)
        if ws.close_code != 1000:
            raise CheckFailed(f"close: code {ws.close_code} {ws.close_reason!r}, want 1000")
        print("ok   close: clean (1000)", flush=True)
    except CheckFailed as e:
        failed += 1
        print(f"FAIL {e}", flush=True)
    except ConnectionClosed as e:
        failed += 1
        print(f"FAIL connection closed early: {e}", flush=True)
    finally:
        await ws.close()

    if failed:
        print(f"FAILED: {url}{via}", flush=True)
        return 1
    print("OK", flush=True)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    server = commands.add_parser("server", help=f"echo server on 127.0.0.1, path {PATH}")
    server.add_argument("--port", type=int, default=0)
    client = commands.add_parser("client", help="run and check the echo exchange")
    client.add_argument("--url", required=True, help="ws://HOST:PORT/ws")
    client.add_argument("--proxy", help="http://HOST:PORT of an explicit HTTP proxy")
    client.add_argument(
        "--request-target",
        choices=["absolute", "origin"],
        default="absolute",
        help="request line form sent to the proxy (default absolute)",
    )
    args = parser.parse_args()
    if args.command == "server":
        return asyncio.run(serve_forever(args.port))
    return asyncio.run(run_client(args.url, args.proxy, args.request_target))


if __name__ == "__main__":
    sys.exit(main())
