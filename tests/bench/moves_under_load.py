"""Moves under load: what `wrk` sees through the router while a workload moves.

A real service (embedded defaults, the local driver) runs the test HTTP workload with
storage and a `rebalance` block, on a two-offer price snapshot this benchmark writes.
`wrk` calls the workload's stable endpoint through the router the whole time, and
counts every answer by status (a Lua script) and every socket error. Two moves:

- rebalance: the snapshot is rewritten so the other offer is 60 % cheaper, and the
  workload moves make-before-break. Target: zero failed requests (no status but 200,
  no socket error);
- migration: an interruption is injected with the cloud's real notice window. Target:
  only 503s with Retry-After inside the gap, and no connection errors.

Prints a Markdown report (docs/benchmarks.md, "Moves under load").

Usage: moves_under_load.py --bin-dir DIR [--seconds N] [--connections N]
"""

import argparse
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from latency import REPO, TOKEN, grpc_stubs  # noqa: E402
import migration  # noqa: E402

WORKLOAD = REPO / "tests" / "workloads" / "http_server.py"
HEADER = "InstanceType,AcceleratorName,AcceleratorCount,vCPUs,MemoryGiB,GpuInfo,Price,SpotPrice,Region,AvailabilityZone\n"

TALLY = """
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) counts = {} end
function response(status, headers, body)
  counts[status] = (counts[status] or 0) + 1
  if status == 503 and headers["Retry-After"] == nil and headers["retry-after"] == nil then
    counts["503-without-retry-after"] = (counts["503-without-retry-after"] or 0) + 1
  end
end
function done(summary, latency, requests)
  local total = {}
  for _, thread in ipairs(threads) do
    for status, n in pairs(thread:get("counts")) do
      total[status] = (total[status] or 0) + n
    end
  end
  for status, n in pairs(total) do io.write(string.format("status %s %d\\n", status, n)) end
  local e = summary.errors
  io.write(string.format("errors connect %d read %d write %d timeout %d status %d\\n",
    e.connect, e.read, e.write, e.timeout, e.status))
  io.write(string.format("latency p50 %d p99 %d max %d\\n",
    latency:percentile(50), latency:percentile(99), latency.max))
end
"""


def write_prices(directory, aws_spot, gcp_spot):
    files = {
        "manifest.toml": '[[files]]\nfile = "aws.csv"\ncloud = "aws"\nobserved_at = "2026-12-01T00:00:00Z"\n\n'
                         '[[files]]\nfile = "gcp.csv"\ncloud = "gcp"\nobserved_at = "2026-12-01T00:00:00Z"\n',
        "aws.csv": HEADER + f"m5.large,,,2.0,8.0,,0.096,{aws_spot},us-east-1,use1-az1\n",
        "gcp.csv": HEADER + f"n2-standard-2,,,2.0,8.0,,0.097,{gcp_spot},us-central1,\n",
    }
    for name, text in files.items():
        tmp = directory / f".{name}.tmp"
        tmp.write_text(text)
        tmp.replace(directory / name)


def start_service(bin_dir, data_dir, prices):
    return migration.start_service(bin_dir, data_dir, {
        "COMPUTEARBITRAGE_ROUTER__TCP_PORT_MIN": "39010",
        "COMPUTEARBITRAGE_ROUTER__TCP_PORT_MAX": "39019",
        "COMPUTEARBITRAGE_PRICING__SNAPSHOT__DIR": str(prices),
        "COMPUTEARBITRAGE_PRICING__SNAPSHOT__INTERVAL_SECONDS": "1",
        "COMPUTEARBITRAGE_WORKLOADS__REBALANCE_CHECK_MS": "200",
        # The default drain: what a user gets.
    })


def wait(workloads, pb, metadata, workload_id, done, what, within=60):
    deadline = time.monotonic() + within
    while True:
        w = workloads.GetWorkload(pb.GetWorkloadRequest(id=workload_id), metadata=metadata)
        if done(w):
            return w
        if time.monotonic() > deadline:
            raise SystemExit(f"moves_under_load: {workload_id} never {what}: {w.status} ({w.status_reason})")
        time.sleep(0.05)


def parse(output):
    statuses, errors, latency = {}, {}, {}
    for line in output.splitlines():
        parts = line.split()
        if parts[:1] == ["status"]:
            statuses[parts[1]] = int(parts[2])
        elif parts[:1] == ["errors"]:
            errors = {parts[i]: int(parts[i + 1]) for i in range(1, len(parts), 2)}
        elif parts[:1] == ["latency"]:
            latency = {parts[i]: int(parts[i + 1]) for i in range(1, len(parts), 2)}
    match = re.search(r"(\d+) requests in", output)
    return {"requests": int(match.group(1)) if match else 0, "statuses": statuses, "errors": errors, "latency_us": latency}


def one_move(kind, pb, workloads, admin, metadata, prices, script, seconds, connections):
    write_prices(prices, 0.05, 0.08)
    time.sleep(1.5)  # the collector's next run
    spec = pb.WorkloadSpec(
        name=f"bench-{kind}",
        requirements=pb.Requirements(min_vcpus=2, min_memory_gib=4, allow_unknown_interruption_rate=True),
        command=[sys.executable, str(WORKLOAD)],
        port=8080,
        health_check=pb.HealthCheck(path="/health", interval_seconds=1, timeout_seconds=1, unhealthy_threshold=2),
        on_interruption="migrate",
        create_timeout_seconds=60,
        storage=pb.StorageSpec(enabled=True, quota_gb=1, retention_days=1),
        rebalance=pb.RebalanceSpec(min_savings_percent=30, min_duration_seconds=1) if kind == "rebalance" else None,
    )
    created = workloads.ApplyWorkload(pb.ApplyWorkloadRequest(spec=spec), metadata=metadata)
    before = wait(workloads, pb, metadata, created.id, lambda w: w.status == "RUNNING", "ran")
    # Let the route follow RUNNING before the load starts (measured in the migration benchmark).
    time.sleep(0.5)
    load = subprocess.Popen(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(script),
         "-H", f"Authorization: Bearer {before.access_token}", before.endpoint],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    time.sleep(min(2, seconds / 4))
    started = time.perf_counter()
    if kind == "rebalance":
        write_prices(prices, 0.05, 0.02)
    else:
        admin.InjectInterruption(pb.InjectInterruptionRequest(workload_id=created.id, delay_ms=0), metadata=metadata)
    after = wait(workloads, pb, metadata, created.id,
                 lambda w: w.status == "RUNNING" and w.instance_id != before.instance_id, "moved")
    moved_s = time.perf_counter() - started
    output, _ = load.communicate(timeout=seconds + 60)
    workloads.DeleteWorkload(pb.DeleteWorkloadRequest(id=created.id), metadata=metadata)
    wait(workloads, pb, metadata, created.id, lambda w: w.status == "TERMINATED", "terminated")
    result = parse(output)
    result.update(kind=kind, moved_s=moved_s, to=f"{after.cloud} {after.instance_type}")
    if result["requests"] == 0:
        raise SystemExit(f"moves_under_load: wrk ran no request:\n{output}")
    return result


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--bin-dir", type=pathlib.Path, required=True)
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("moves_under_load: wrk is missing (scripts/bench-router.sh installs it)")
    import grpc

    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        prices = tmp / "prices"
        prices.mkdir()
        write_prices(prices, 0.05, 0.08)
        script = tmp / "tally.lua"
        script.write_text(TALLY)
        pb, pb_grpc = grpc_stubs(tmp / "stubs")
        process, endpoint = start_service(args.bin_dir.resolve(), tmp / "data", prices)
        try:
            channel = grpc.insecure_channel(endpoint.removeprefix("http://"))
            workloads = pb_grpc.WorkloadsStub(channel)
            admin = pb_grpc.AdminStub(channel)
            metadata = (("authorization", f"Bearer {TOKEN}"),)
            results = [one_move(kind, pb, workloads, admin, metadata, prices, script, args.seconds, args.connections)
                       for kind in ("rebalance", "migration")]
        finally:
            process.terminate()
            process.wait(timeout=30)
    print(f"Binaries: {args.bin_dir}; wrk -t1 -c{args.connections} for {args.seconds} s per move, through the router.\n")
    print("| move | requests | answers | socket errors | p50 | p99 | move took |")
    print("|---|---:|---|---|---:|---:|---:|")
    for r in results:
        answers = ", ".join(f"{k}: {v}" for k, v in sorted(r["statuses"].items()))
        errors = ", ".join(f"{k} {v}" for k, v in r["errors"].items() if v and k != "status") or "none"
        lat = r["latency_us"]
        print(f"| {r['kind']} (to {r['to']}) | {r['requests']} | {answers} | {errors} | "
              f"{lat.get('p50', 0) / 1000:.1f} ms | {lat.get('p99', 0) / 1000:.1f} ms | {r['moved_s']:.2f} s |")
    rebalance = results[0]
    failed = sum(v for k, v in rebalance["statuses"].items() if k != "200") + sum(
        v for k, v in rebalance["errors"].items() if k != "status")
    print(f"\nFailed requests during the rebalance: {failed} (target 0).")
    migration = results[1]
    other = {k: v for k, v in migration["statuses"].items() if k not in ("200", "503")}
    print(f"During the migration, answers other than 200 and 503: {other or 'none'}; "
          f"503s without Retry-After: {migration['statuses'].get('503-without-retry-after', 0)}.")


if __name__ == "__main__":
    main()
