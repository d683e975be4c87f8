"""gRPC interop through sluice-proxy with the reference Python stack (grpcio).

A grpcio server (unary, server-streaming and failing methods, generic raw-bytes
handlers, so no code generation) behind a `protocol: http2` route; a grpcio
client calls it through the proxy. Prints one JSON object with what the client
saw and the proxy's metrics text afterwards.

Usage: interop.py PATH/TO/sluice-proxy [--tls DIR]

With --tls, DIR holds ca.crt, proxy.crt/proxy.key (the proxy's listener) and
upstream.crt/upstream.key (the grpcio server's); the client talks TLS to the
proxy and the proxy talks TLS to the server (an https:// upstream verified
against ca.crt).
"""
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
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
    # NOT_FOUND is the caller's problem: not an upstream failure by default.
    ctx.abort(grpc.StatusCode.NOT_FOUND, "nothing here")


def internal(req, ctx):
    # Aborting before any message: a trailers-only response.
    ctx.abort(grpc.StatusCode.INTERNAL, "boom")


def stream_then_fail(req, ctx):
    # Messages first, then the status in the trailers.
    yield b"one"
    yield b"two"
    ctx.abort(grpc.StatusCode.UNAVAILABLE, "went away")


def read(path):
    with open(path, "rb") as f:
        return f.read()


def main():
    proxy_bin = sys.argv[1]
    tls_dir = sys.argv[3] if len(sys.argv) > 3 and sys.argv[2] == "--tls" else None
    handlers = grpc.method_handlers_generic_handler("test.Echo", {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "Stream": grpc.unary_stream_rpc_method_handler(stream),
        "Fail": grpc.unary_unary_rpc_method_handler(fail),
        "Internal": grpc.unary_unary_rpc_method_handler(internal),
        "StreamThenFail": grpc.unary_stream_rpc_method_handler(stream_then_fail),
    })
    server = grpc.server(futures.ThreadPoolExecutor(4))
    server.add_generic_rpc_handlers((handlers,))
    listen, admin = free_port(), free_port()
    if tls_dir:
        creds = grpc.ssl_server_credentials(
            [(read(os.path.join(tls_dir, "upstream.key")), read(os.path.join(tls_dir, "upstream.crt")))])
        upstream = server.add_secure_port("127.0.0.1:0", creds)
        route = (f"  - name: grpc\n    protocol: http2\n    stable: 'https://127.0.0.1:{upstream}'\n"
                 f"    upstream_tls: {{ ca_file: '{tls_dir}/ca.crt', server_name: localhost }}\n")
        listener_tls = (f"tls: {{ cert_file: '{tls_dir}/proxy.crt', key_file: '{tls_dir}/proxy.key' }}\n")
    else:
        upstream = server.add_insecure_port("127.0.0.1:0")
        route = f"  - {{ name: grpc, protocol: http2, stable: 'http://127.0.0.1:{upstream}' }}\n"
        listener_tls = ""
    server.start()
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        f.write(f"listen: 127.0.0.1:{listen}\nadmin: {{ listen: 127.0.0.1:{admin} }}\n"
                f"{listener_tls}routes:\n{route}")
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
        if tls_dir:
            creds = grpc.ssl_channel_credentials(root_certificates=read(os.path.join(tls_dir, "ca.crt")))
            channel = grpc.secure_channel(f"127.0.0.1:{listen}", creds,
                                          options=(("grpc.ssl_target_name_override", "localhost"),))
        else:
            channel = grpc.insecure_channel(f"127.0.0.1:{listen}")
        reply, call = channel.unary_unary("/test.Echo/Unary").with_call(b"hi", timeout=5)
        result["unary"] = reply.decode()
        result["trailer"] = dict(call.trailing_metadata()).get("x-trailer")
        result["stream"] = [m.decode() for m in channel.unary_stream("/test.Echo/Stream")(b"x", timeout=5)]
        for name in ("Fail", "Internal"):
            try:
                channel.unary_unary(f"/test.Echo/{name}")(b"x", timeout=5)
                result[name.lower()] = "no error"
            except grpc.RpcError as e:
                result[name.lower()] = [e.code().name, e.details()]
        got = []
        try:
            for m in channel.unary_stream("/test.Echo/StreamThenFail")(b"x", timeout=5):
                got.append(m.decode())
            result["stream_then_fail"] = [got, "no error"]
        except grpc.RpcError as e:
            result["stream_then_fail"] = [got, e.code().name]
        channel.close()
        # The proxy records a request when its response ends; give it a moment.
        time.sleep(0.3)
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=5) as r:
            result["metrics"] = r.read().decode()
    finally:
        proxy.terminate()
        proxy.wait(timeout=10)
        server.stop(0)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
