#!/usr/bin/env python3
"""The workload the tests deploy: a small HTTP server on $PORT.

GET /health answers 200, or 503 when $HEALTH_STATUS_FILE names a file that contains
"fail" (tests flip it to make the workload unhealthy). Any other path answers 200 with
a JSON body naming the workload ($WORKLOAD_NAME), its pid, the request path and the
request headers whose names start with x- or are traceparent. When $TCP_PORT is set it
also echoes raw TCP there, prefixing each reply with the workload's name and ": ".
"""
import json
import os
import signal
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/health":
            status_file = os.environ.get("HEALTH_STATUS_FILE")
            failing = False
            if status_file and os.path.exists(status_file):
                with open(status_file) as f:
                    failing = f.read().strip() == "fail"
            self.reply(503 if failing else 200, {"healthy": not failing})
            return
        headers = {k.lower(): v for k, v in self.headers.items() if k.lower().startswith("x-") or k.lower() == "traceparent"}
        self.reply(200, {"workload": os.environ.get("WORKLOAD_NAME", ""), "pid": os.getpid(), "path": self.path, "headers": headers})

    def reply(self, code, body):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def echo(connection):
    prefix = (os.environ.get("WORKLOAD_NAME", "") + ": ").encode()
    with connection:
        while data := connection.recv(65536):
            connection.sendall(prefix + data)


def serve_tcp(port):
    listener = socket.create_server(("127.0.0.1", port))
    while True:
        connection, _ = listener.accept()
        threading.Thread(target=echo, args=(connection,), daemon=True).start()


def main():
    if os.environ.get("TCP_PORT"):
        threading.Thread(target=serve_tcp, args=(int(os.environ["TCP_PORT"]),), daemon=True).start()
    server = ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    server.serve_forever()


if __name__ == "__main__":
    main()
