#!/usr/bin/env python3
"""The workload the tests deploy: a small HTTP server on $PORT.

GET /health answers 200, or 503 when $HEALTH_STATUS_FILE names a file that contains
"fail" (tests flip it to make the workload unhealthy). Any other path answers 200 with
a JSON body naming the workload ($WORKLOAD_NAME), its pid, and the request path.
"""
import json
import os
import signal
import sys
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
        self.reply(200, {"workload": os.environ.get("WORKLOAD_NAME", ""), "pid": os.getpid(), "path": self.path})

    def reply(self, code, body):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def main():
    server = ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    server.serve_forever()


if __name__ == "__main__":
    main()
