#!/usr/bin/env python3
"""The workload the tests deploy: a small HTTP server on $PORT.

GET /health answers 200, or 503 when $HEALTH_STATUS_FILE names a file that contains
"fail" (tests flip it to make the workload unhealthy). Any other path answers 200 with
a JSON body naming the workload ($WORKLOAD_NAME), its pid, the request path and the
request headers whose names start with x- or are traceparent. When $TCP_PORT is set it
also echoes raw TCP there, prefixing each reply with the workload's name and ": ".

State, for the checkpoint tests: GET /count adds one to a counter and answers it; GET
/state answers {"count", "restored", "generation"}. The counter starts from
$CHECKPOINT_DIR/state.json when a checkpoint restored one, and SIGTERM writes it there
(with the generation one higher) before exiting, as a workload that checkpoints on a
notice does. With $SAVE_EVERY_COUNT set, every /count also writes it (whole, by a
rename), so a periodic copy of the directory holds the latest count; GET /save writes
it without exiting (what a checkpoint command asks for). With $SLOW_RESTORE_SECONDS, a restored workload waits that long before it
serves (a slow warm-up, for tests that act during a migration).
"""
import json
import os
import signal
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


STATE = {"count": 0, "restored": False, "generation": 0}
LOCK = threading.Lock()


def state_file():
    directory = os.environ.get("CHECKPOINT_DIR")
    return os.path.join(directory, "state.json") if directory else None


def load_state():
    path = state_file()
    if path and os.path.exists(path):
        with open(path) as f:
            saved = json.load(f)
        STATE.update(count=saved["count"], generation=saved["generation"], restored=True)


def save_state(generation):
    path = state_file()
    if path:
        with LOCK:
            saved = {"count": STATE["count"], "generation": generation}
            with open(path + ".tmp", "w") as f:
                json.dump(saved, f)
            os.replace(path + ".tmp", path)


def save_state_and_exit(*_):
    save_state(STATE["generation"] + 1)
    sys.exit(0)


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/count":
            with LOCK:
                STATE["count"] += 1
                count = STATE["count"]
            if os.environ.get("SAVE_EVERY_COUNT"):
                save_state(STATE["generation"])
            self.reply(200, {"count": count})
            return
        if self.path == "/save":
            save_state(STATE["generation"])
            self.reply(200, {"saved": STATE["count"]})
            return
        if self.path == "/state":
            with LOCK:
                self.reply(200, dict(STATE))
            return
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


# Every address, as on a VM: an instance in its own network namespace is reached at
# its own address, not at 127.0.0.1.
LISTEN_HOST = "0.0.0.0"


def echo(connection):
    prefix = (os.environ.get("WORKLOAD_NAME", "") + ": ").encode()
    with connection:
        while data := connection.recv(65536):
            connection.sendall(prefix + data)


def serve_tcp(port):
    listener = socket.create_server((LISTEN_HOST, port))
    while True:
        connection, _ = listener.accept()
        threading.Thread(target=echo, args=(connection,), daemon=True).start()


def main():
    if os.environ.get("TCP_PORT"):
        threading.Thread(target=serve_tcp, args=(int(os.environ["TCP_PORT"]),), daemon=True).start()
    load_state()
    if STATE["restored"] and os.environ.get("SLOW_RESTORE_SECONDS"):
        import time
        time.sleep(float(os.environ["SLOW_RESTORE_SECONDS"]))
    # The default listen backlog (5) drops connections under a load test's dozens of
    # clients, and each dropped SYN costs its request a 1 s retransmit.
    ThreadingHTTPServer.request_queue_size = 1024
    server = ThreadingHTTPServer((LISTEN_HOST, int(os.environ["PORT"])), Handler)
    signal.signal(signal.SIGTERM, save_state_and_exit)
    print(f"{os.environ.get('WORKLOAD_NAME', '')} serving on {os.environ['PORT']}, restored={STATE['restored']}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
