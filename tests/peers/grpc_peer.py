#!/usr/bin/env python3
"""A real gRPC peer (grpcio, the C-core stack) for Trellis's end-to-end tests.

No protoc and no generated code: messages are raw bytes, handled with grpcio's generic
handlers and identity (de)serializers.

  grpc_peer.py server --port 0 [--host 127.0.0.1]
      Serves trellis.test.Echo on HOST (insecure, h2c) and prints `READY <port>`.
  grpc_peer.py client --target HOST:PORT [--proxy ADDR]
      Runs the four calls and checks them; prints one line per check, then `OK`.
      With --proxy the channel connects to ADDR with :authority = HOST:PORT.
  grpc_peer.py calls --target HOST:PORT [--proxy ADDR] --method NAME --payload TEXT --count N
      Makes N unary calls and prints one JSON line: the count of each status code, and
      the message of the first error (e.g. {"OK": 7, "UNAVAILABLE": 3, "first_error": "..."}).

The server's `Flaky` method takes `KEY:N` and fails the first N calls with that KEY with
UNAVAILABLE, sending its response headers first and the status in separate trailers (the
shape many servers use, unlike a trailers-only response); later calls echo the payload.

Exit code 0 only if every check passed.
"""

import argparse
import json
import queue
import signal
import sys
import threading
from concurrent import futures

import grpc

SERVICE = "trellis.test.Echo"
TIMEOUT = 10.0  # seconds, per call
STREAM_COUNT = 5
BIDI_WORDS = [b"alpha", b"beta", b"gamma"]


def identity(data: bytes) -> bytes:
    return data


# --- server -----------------------------------------------------------------------------


def unary(request: bytes, context: grpc.ServicerContext) -> bytes:
    context.set_trailing_metadata((("x-echo-trailer", "yes"),))
    return request


def server_stream(request: bytes, context: grpc.ServicerContext):
    try:
        count = int(request.decode("ascii"))
    except ValueError:
        context.abort(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"ServerStream wants an ASCII integer, got {request!r}",
        )
    for i in range(count):
        yield f"msg-{i}".encode("ascii")


def bidi(request_iterator, context: grpc.ServicerContext):
    for message in request_iterator:
        yield message.upper()


def fail(request: bytes, context: grpc.ServicerContext) -> bytes:
    context.abort(grpc.StatusCode.NOT_FOUND, "no such thing")


FLAKY_SEEN: "dict[str, int]" = {}
FLAKY_LOCK = threading.Lock()


def flaky(request: bytes, context: grpc.ServicerContext) -> bytes:
    key, _, failures = request.decode("ascii", "replace").partition(":")
    with FLAKY_LOCK:
        seen = FLAKY_SEEN.get(key, 0)
        FLAKY_SEEN[key] = seen + 1
    if seen < int(failures or "0"):
        # Headers first, then the error in trailers: not a trailers-only response.
        context.send_initial_metadata((("x-flaky-call", str(seen + 1)),))
        context.abort(grpc.StatusCode.UNAVAILABLE, f"flaky: call {seen + 1} of {key} fails")
    return request


def serve(host: str, port: int) -> int:
    handler = grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Unary": grpc.unary_unary_rpc_method_handler(
                unary, request_deserializer=identity, response_serializer=identity
            ),
            "ServerStream": grpc.unary_stream_rpc_method_handler(
                server_stream, request_deserializer=identity, response_serializer=identity
            ),
            "Bidi": grpc.stream_stream_rpc_method_handler(
                bidi, request_deserializer=identity, response_serializer=identity
            ),
            "Fail": grpc.unary_unary_rpc_method_handler(
                fail, request_deserializer=identity, response_serializer=identity
            ),
            "Flaky": grpc.unary_unary_rpc_method_handler(
                flaky, request_deserializer=identity, response_serializer=identity
            ),
        },
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    server.add_generic_rpc_handlers((handler,))
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        print(f"grpc_peer: cannot listen on {host}:{port}", file=sys.stderr)
        return 1
    server.start()

    stopped = threading.Event()

    def stop(signum, frame):
        server.stop(grace=1.0)
        stopped.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"READY {bound}", flush=True)
    stopped.wait()
    return 0


# --- client -----------------------------------------------------------------------------


class CheckFailed(Exception):
    pass


def check_unary(channel: grpc.Channel) -> str:
    call = channel.unary_unary(
        f"/{SERVICE}/Unary", request_serializer=identity, response_deserializer=identity
    )
    payload = b"hello \x00\xff trellis"
    response, info = call.with_call(payload, timeout=TIMEOUT)
    if response != payload:
        raise CheckFailed(f"echoed {response!r}, sent {payload!r}")
    trailers = dict(info.trailing_metadata() or ())
    if trailers.get("x-echo-trailer") != "yes":
        raise CheckFailed(
            f"trailing metadata x-echo-trailer missing (got {trailers!r}): "
            "are HTTP/2 trailers forwarded?"
        )
    return "echo matched, trailer x-echo-trailer=yes seen"


def check_server_stream(channel: grpc.Channel) -> str:
    call = channel.unary_stream(
        f"/{SERVICE}/ServerStream", request_serializer=identity, response_deserializer=identity
    )
    got = list(call(str(STREAM_COUNT).encode("ascii"), timeout=TIMEOUT))
    want = [f"msg-{i}".encode("ascii") for i in range(STREAM_COUNT)]
    if got != want:
        raise CheckFailed(f"got {got!r}, want {want!r}")
    return f"{STREAM_COUNT} messages in order"


def check_bidi(channel: grpc.Channel) -> str:
    call = channel.stream_stream(
        f"/{SERVICE}/Bidi", request_serializer=identity, response_deserializer=identity
    )
    outbox: "queue.Queue[bytes | None]" = queue.Queue()

    def requests():
        while (message := outbox.get()) is not None:
            yield message

    responses = call(requests(), timeout=TIMEOUT)
    try:
        # Lockstep: each reply must arrive before the next message is sent, so a proxy that
        # buffers a stream (instead of forwarding each frame) fails here with a deadline.
        for word in BIDI_WORDS:
            outbox.put(word)
            try:
                reply = next(responses)
            except StopIteration:
                raise CheckFailed(f"stream ended before the reply to {word!r}") from None
            if reply != word.upper():
                raise CheckFailed(f"sent {word!r}, got {reply!r}, want {word.upper()!r}")
    except grpc.RpcError as e:
        hint = ""
        if e.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
            hint = " (does something buffer the stream instead of forwarding each message?)"
        raise CheckFailed(f"{e.code().name}: {e.details()}{hint}") from None
    finally:
        outbox.put(None)
    rest = list(responses)
    if rest:
        raise CheckFailed(f"unexpected extra replies {rest!r}")
    return f"{len(BIDI_WORDS)} messages echoed in lockstep"


def check_fail(channel: grpc.Channel) -> str:
    call = channel.unary_unary(
        f"/{SERVICE}/Fail", request_serializer=identity, response_deserializer=identity
    )
    try:
        response = call(b"anything", timeout=TIMEOUT)
    except grpc.RpcError as e:
        if e.code() != grpc.StatusCode.NOT_FOUND or e.details() != "no such thing":
            raise CheckFailed(
                f"got {e.code().name} {e.details()!r}, want NOT_FOUND 'no such thing'"
            ) from None
        return "NOT_FOUND with details 'no such thing'"
    raise CheckFailed(f"call succeeded with {response!r}, want NOT_FOUND")


def run_client(target: str, proxy: str | None) -> int:
    # Never let grpcio route through http_proxy/grpc_proxy from the environment.
    options = [("grpc.enable_http_proxy", 0)]
    if proxy:
        # Connect to the proxy but name the real service in :authority, which the proxy
        # routes by.
        options.append(("grpc.default_authority", target))
        address = proxy
    else:
        address = target
    via = f" via proxy {proxy}" if proxy else ""
    channel = grpc.insecure_channel(address, options=options)
    try:
        grpc.channel_ready_future(channel).result(timeout=TIMEOUT)
    except grpc.FutureTimeoutError:
        print(f"FAIL connect: no connection to {address} within {TIMEOUT:.0f}s{via}")
        return 1

    failed = 0
    for name, check in [
        ("unary", check_unary),
        ("server-stream", check_server_stream),
        ("bidi", check_bidi),
        ("fail", check_fail),
    ]:
        try:
            print(f"ok   {name}: {check(channel)}", flush=True)
        except CheckFailed as e:
            failed += 1
            print(f"FAIL {name}: {e}", flush=True)
        except grpc.RpcError as e:
            failed += 1
            print(f"FAIL {name}: {e.code().name}: {e.details()}", flush=True)
    channel.close()
    if failed:
        print(f"FAILED: {failed} of 4 checks against {target}{via}", flush=True)
        return 1
    print("OK", flush=True)
    return 0


def run_calls(target: str, proxy: str | None, method: str, payload: str, count: int) -> int:
    options = [("grpc.enable_http_proxy", 0)]
    if proxy:
        options.append(("grpc.default_authority", target))
    channel = grpc.insecure_channel(proxy or target, options=options)
    call = channel.unary_unary(
        f"/{SERVICE}/{method}", request_serializer=identity, response_deserializer=identity
    )
    counts: "dict[str, object]" = {}
    for _ in range(count):
        try:
            call(payload.encode("utf-8"), timeout=TIMEOUT)
            name = "OK"
        except grpc.RpcError as e:
            name = e.code().name
            counts.setdefault("first_error", f"{name}: {e.details()}")
        counts[name] = int(counts.get(name, 0)) + 1
    channel.close()
    print(json.dumps(counts), flush=True)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    server = commands.add_parser("server", help="serve trellis.test.Echo on 127.0.0.1")
    server.add_argument("--port", type=int, default=0)
    server.add_argument("--host", default="127.0.0.1", help="address to listen on")
    client = commands.add_parser("client", help="run and check the four calls")
    client.add_argument("--target", required=True, help="HOST:PORT of the Echo service")
    client.add_argument("--proxy", help="HOST:PORT to connect to instead (:authority stays target)")
    calls = commands.add_parser("calls", help="make N unary calls, print the status counts")
    calls.add_argument("--target", required=True, help="HOST:PORT of the Echo service")
    calls.add_argument("--proxy", help="HOST:PORT to connect to instead (:authority stays target)")
    calls.add_argument("--method", default="Unary", help="Unary, Fail or Flaky")
    calls.add_argument("--payload", default="hello")
    calls.add_argument("--count", type=int, default=1)
    args = parser.parse_args()
    if args.command == "server":
        return serve(args.host, args.port)
    if args.command == "calls":
        return run_calls(args.target, args.proxy, args.method, args.payload, args.count)
    return run_client(args.target, args.proxy)


if __name__ == "__main__":
    sys.exit(main())
