"""gRPC interop through sluice-proxy with the reference Python stack (grpcio).

A grpcio server (unary, server-streaming and failing methods, generic raw-bytes
handlers, so no code generation) behind a `protocol: http2` route; a grpcio
client calls it through the proxy. Prints one JSON object with what the client
saw. Usage: interop.py PATH/TO/sluice-proxy
"""
import json
import socket
import subprocess
import sys
import tempfile
import time
from concurrent import futures

import grpc


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def unary(req, ctx):
    ctx.set_trailing_metadata((("x-trailer", "kept"),))
    return b"echo:" + req


def stream(req, ctx):
    for i in range(3):
        yield req + b"#%d" % i


def fail(req, ctx):
    ctx.abort(grpc.StatusCode.NOT_FOUND, "nothing here")


def main():
    proxy_bin = sys.argv[1]
    handlers = grpc.method_handlers_generic_handler("test.Echo", {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "Stream": grpc.unary_stream_rpc_method_handler(stream),
        "Fail": grpc.unary_unary_rpc_method_handler(fail),
    })
    server = grpc.server(futures.ThreadPoolExecutor(4))
    server.add_generic_rpc_handlers((handlers,))
    upstream = server.add_insecure_port("127.0.0.1:0")
    server.start()
    listen, admin = free_port(), free_port()
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        f.write(f"listen: 127.0.0.1:{listen}\nadmin: {{ listen: 127.0.0.1:{admin} }}\n"
                f"routes:\n  - {{ name: grpc, protocol: http2, stable: 'http://127.0.0.1:{upstream}' }}\n")
        config = f.name
    proxy = subprocess.Popen([proxy_bin, "--config", config], stderr=subprocess.DEVNULL)
    result = {}
    try:
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", listen), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        channel = grpc.insecure_channel(f"127.0.0.1:{listen}")
        reply, call = channel.unary_unary("/test.Echo/Unary").with_call(b"hi", timeout=5)
        result["unary"] = reply.decode()
        result["trailer"] = dict(call.trailing_metadata()).get("x-trailer")
        result["stream"] = [m.decode() for m in channel.unary_stream("/test.Echo/Stream")(b"x", timeout=5)]
        try:
            channel.unary_unary("/test.Echo/Fail")(b"x", timeout=5)
            result["fail"] = "no error"
        except grpc.RpcError as e:
            result["fail"] = [e.code().name, e.details()]
    finally:
        proxy.terminate()
        proxy.wait(timeout=10)
        server.stop(0)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
