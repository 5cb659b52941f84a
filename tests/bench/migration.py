"""Migration as a client of the workload sees it, on loopback, with the local driver.

A real service (its own data directory, embedded defaults) runs the test HTTP workload
(tests/workloads/http_server.py) with storage and on_interruption = "migrate". A client
polls the workload's stable endpoint through the router (GET /state, with the
workload's token, one request at a time, no pause). The benchmark then injects an
interruption (the Admin.InjectInterruption call, with the cloud's real notice window)
and records:

- notice → 503: from just before the call until the router first answers 503;
- notice → serving: until the first 200 from the replacement, i.e. a /state showing the
  restored checkpoint;
- answers seen in between: everything that was not a 503 with Retry-After or a 200.

The workload's own start (python3 importing http.server) is part of "serving"; it is
measured separately as the time from spawning the same script by hand to its first 200.

Prints a Markdown report; targets (docs/benchmarks.md): ≤ 100 ms to 503, ≤ 2 s plus
the workload's start to serving.

Usage: migration.py --bin-dir DIR [--runs N]
"""

import argparse
import http.client
import json
import os
import pathlib
import socket
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from latency import REPO, TOKEN, grpc_stubs  # noqa: E402

WORKLOAD = REPO / "tests" / "workloads" / "http_server.py"


def start_service(bin_dir, data_dir, extra_env=None):
    """A service on embedded defaults; `extra_env` adds or overrides settings."""
    env = dict(os.environ, COMPUTEARBITRAGE_BOOTSTRAP_TOKEN=TOKEN, RUST_LOG="warn")
    env["COMPUTEARBITRAGE_ROUTER__LISTEN"] = "127.0.0.1:0"
    env["COMPUTEARBITRAGE_ROUTER__METRICS_LISTEN"] = ""
    env["COMPUTEARBITRAGE_API__RATE_LIMIT_PER_SECOND"] = "0"
    env["COMPUTEARBITRAGE_WORKLOADS__LOCAL__RUN_AS"] = "service"
    env["COMPUTEARBITRAGE_ROUTER__TCP_PORT_MIN"] = "39000"
    env["COMPUTEARBITRAGE_ROUTER__TCP_PORT_MAX"] = "39009"
    env.update(extra_env or {})
    process = subprocess.Popen(
        [str(bin_dir / "computearbitrage"), "serve", "--listen", "127.0.0.1:0", "--data-dir", str(data_dir)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env,
    )
    endpoint = None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        if "listening on " in line:
            endpoint = line.strip().split("listening on ", 1)[1]
        if "through the router at " in line:
            return process, endpoint
    process.kill()
    raise SystemExit("migration: the service did not start")


class Poller:
    """One keep-alive connection to the router; reconnects when the router closes it."""

    def __init__(self, url, token):
        rest = url.removeprefix("http://")
        self.hostport, _, path = rest.partition("/")
        self.path = "/" + path + "state"
        self.token = token
        self.connection = None

    def get(self):
        for _ in range(2):
            try:
                if self.connection is None:
                    host, port = self.hostport.rsplit(":", 1)
                    self.connection = http.client.HTTPConnection(host, int(port), timeout=5)
                self.connection.request("GET", self.path, headers={"Authorization": f"Bearer {self.token}"})
                response = self.connection.getresponse()
                body = response.read()
                return response.status, response.getheader("retry-after"), body
            except (OSError, http.client.HTTPException):
                self.connection = None
        return None, None, b""


def workload_start_ms():
    """Spawn → first 200 of the workload script by hand: its own start time."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, str(WORKLOAD)], env={"PORT": str(port), "PATH": os.environ["PATH"]}, stdout=subprocess.DEVNULL
    )
    try:
        while True:
            try:
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
                connection.request("GET", "/health")
                if connection.getresponse().status == 200:
                    return (time.perf_counter() - started) * 1000
            except OSError:
                time.sleep(0.002)
    finally:
        process.kill()
        process.wait()


def one_run(pb, workloads, admin, metadata, index):
    spec = pb.WorkloadSpec(
        name=f"bench-migrate-{index}",
        requirements=pb.Requirements(min_vcpus=2, min_memory_gib=4),
        command=[sys.executable, str(WORKLOAD)],
        port=8080,
        health_check=pb.HealthCheck(path="/health", interval_seconds=1, timeout_seconds=1, unhealthy_threshold=2),
        on_interruption="migrate",
        create_timeout_seconds=60,
        storage=pb.StorageSpec(enabled=True, quota_gb=1, retention_days=1),
    )
    created = workloads.ApplyWorkload(pb.ApplyWorkloadRequest(spec=spec), metadata=metadata)
    deadline = time.monotonic() + 60
    while True:
        w = workloads.GetWorkload(pb.GetWorkloadRequest(id=created.id), metadata=metadata)
        if w.status == "RUNNING":
            break
        if time.monotonic() > deadline:
            raise SystemExit(f"migration: {created.id} stayed {w.status} ({w.status_reason})")
        time.sleep(0.05)
    poller = Poller(w.endpoint, w.access_token)
    # The route follows the store's change feed, so the first requests after RUNNING may
    # still be answered 503 for a moment: measured, not assumed away.
    running = time.perf_counter()
    early_503 = 0
    while True:
        status, _, _ = poller.get()
        if status == 200:
            break
        if status != 503 or time.perf_counter() - running > 10:
            raise SystemExit(f"migration: {created.id} is RUNNING but its endpoint answers {status}")
        early_503 += 1
    running_to_200_ms = (time.perf_counter() - running) * 1000
    notice = time.perf_counter()
    admin.InjectInterruption(pb.InjectInterruptionRequest(workload_id=created.id, delay_ms=0), metadata=metadata)
    first_503 = serving = None
    other = {}
    while time.perf_counter() - notice < 60:
        status, retry_after, body = poller.get()
        now = time.perf_counter()
        if status == 503 and retry_after:
            first_503 = first_503 or now
        elif status == 200:
            if json.loads(body).get("restored"):
                serving = now
                break
        else:
            other[status] = other.get(status, 0) + 1
    workloads.DeleteWorkload(pb.DeleteWorkloadRequest(id=created.id), metadata=metadata)
    if serving is None:
        raise SystemExit(f"migration: {created.id} did not serve again within 60 s")
    return {
        "to_503_ms": (first_503 - notice) * 1000 if first_503 else None,
        "to_serving_ms": (serving - notice) * 1000,
        "other": other,
        "running_to_200_ms": running_to_200_ms,
        "early_503": early_503,
    }


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--bin-dir", type=pathlib.Path, required=True)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    import grpc

    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        pb, pb_grpc = grpc_stubs(tmp / "stubs")
        process, endpoint = start_service(args.bin_dir.resolve(), tmp / "data")
        try:
            channel = grpc.insecure_channel(endpoint.removeprefix("http://"))
            workloads = pb_grpc.WorkloadsStub(channel)
            admin = pb_grpc.AdminStub(channel)
            metadata = (("authorization", f"Bearer {TOKEN}"),)
            runs = [one_run(pb, workloads, admin, metadata, i) for i in range(args.runs)]
        finally:
            process.terminate()
            process.wait(timeout=30)
    start = statistics.median(workload_start_ms() for _ in range(5))
    to_503 = [r["to_503_ms"] for r in runs if r["to_503_ms"] is not None]
    serving = [r["to_serving_ms"] for r in runs]
    other = {}
    for r in runs:
        for k, v in r["other"].items():
            other[k] = other.get(k, 0) + v
    print(f"Binaries: {args.bin_dir}; {args.runs} migrations; the router polled back to back.\n")
    print("| measure | median | min | max |")
    print("|---|---:|---:|---:|")
    if to_503:
        print(f"| notice → 503 at the router | {statistics.median(to_503):.1f} ms | {min(to_503):.1f} ms | {max(to_503):.1f} ms |")
    print(f"| notice → serving on the replacement | {statistics.median(serving):.0f} ms | {min(serving):.0f} ms | {max(serving):.0f} ms |")
    print(f"| the workload's own start (spawn → first 200) | {start:.0f} ms | | |")
    first = [r["running_to_200_ms"] for r in runs]
    print(f"| RUNNING reported → first 200 through the router | {statistics.median(first):.1f} ms | {min(first):.1f} ms | {max(first):.1f} ms |")
    print(f"\nAnswers other than 503 with Retry-After or 200 during the gap: {other or 'none'}")
    print(f"Runs where no 503 was seen (the move was faster than one poll): {args.runs - len(to_503)}")
    print(f"503s answered after RUNNING was reported, before the route followed: {sum(r['early_503'] for r in runs)}")


if __name__ == "__main__":
    main()
