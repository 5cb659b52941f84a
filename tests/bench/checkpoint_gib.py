"""A large checkpoint through the agent, end to end, against `cp` on the same disk.

A real service (embedded defaults: the local driver, local storage under its data
directory) runs the test HTTP workload with storage. An `exec` task writes SIZE of
random bytes into the workload's $CHECKPOINT_DIR. Then:

- checkpoint: a `checkpoint` task, timed from CreateTask until GetTask says COMPLETED.
  The agent packs $CHECKPOINT_DIR into content-hashed chunks and uploads them through
  signed URLs on the service's port, the manifest last;
- restore: an interruption notice (the cloud's real window). The old agent takes its
  final checkpoint (only its manifest: every chunk is stored already, and chunks are
  shared by a workload's checkpoints), and the replacement restores it, each chunk verified, and serves. The restore itself is the
  replacement agent's own `checkpoint restored … duration_ms`, read from its log; the
  whole move is timed from the notice until the restored workload answers;
- cp: the same file copied with `cp` from one directory to another on the disk the
  service stores on, as the baseline. Neither the agent's path nor `cp` fsyncs (the
  local object store does not), so both land in the page cache; `cp` then `sync` is
  shown too.

Prints a Markdown report (docs/benchmarks.md, "A large checkpoint through the agent").
Target: checkpoint and restore throughput ≥ 0.8 × cp.

Usage: checkpoint_gib.py --bin-dir DIR [--mib N]
"""

import argparse
import json
import os
import pathlib
import re
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from latency import TOKEN, grpc_stubs  # noqa: E402
from migration import WORKLOAD, start_service  # noqa: E402


def run_task(pb, workloads, metadata, workload_id, kind, command=(), timeout=600):
    started = time.perf_counter()
    task = workloads.CreateTask(pb.CreateTaskRequest(workload_id=workload_id, kind=kind, command=list(command),
                                                     timeout_seconds=timeout), metadata=metadata)
    while True:
        t = workloads.GetTask(pb.GetTaskRequest(id=task.id), metadata=metadata)
        if t.state in ("COMPLETED", "DEAD"):
            elapsed = time.perf_counter() - started
            if t.state == "DEAD" or (t.HasField("exit_code") and t.exit_code != 0):
                raise SystemExit(f"checkpoint_gib: {kind} task failed: {t.error} {t.output}")
            return elapsed, t.output
        if time.perf_counter() - started > timeout + 60:
            raise SystemExit(f"checkpoint_gib: {kind} task still {t.state}")
        time.sleep(0.02)


def get(url, token):
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=5) as response:
        return response.status, response.read()


def agent_durations(data_dir, marker):
    """duration_ms of every agent log line with `marker`, in seconds."""
    found = []
    for log in data_dir.rglob("*.log"):
        for line in log.read_text(errors="replace").splitlines():
            line = re.sub(r"\x1b\[[0-9;]*m", "", line)
            if marker in line:
                match = re.search(r"duration_ms=(\d+)", line)
                if match:
                    found.append(int(match.group(1)) / 1000)
    return found


def final_checkpoint_bytes(data_dir):
    """The bytes the final checkpoint (after the notice) uploaded, from the old agent's log."""
    for log in data_dir.rglob("*.log"):
        for line in log.read_text(errors="replace").splitlines():
            line = re.sub(r"\x1b\[[0-9;]*m", "", line)
            if re.search(r'trigger="?notice"?', line) and "duration_ms=" in line:
                match = re.search(r"bytes=(\d+)", line)
                if match:
                    return int(match.group(1))
    return None


def cp_seconds(directory, mib):
    source, target = directory / "cp-source", directory / "cp-target"
    source.mkdir()
    target.mkdir()
    subprocess.run(["dd", "if=/dev/urandom", f"of={source / 'blob'}", "bs=1M", f"count={mib}", "status=none"], check=True)
    subprocess.run(["sync"], check=True)
    started = time.perf_counter()
    subprocess.run(["cp", str(source / "blob"), str(target / "blob")], check=True)
    cached = time.perf_counter() - started
    subprocess.run(["sync"], check=True)
    return cached, time.perf_counter() - started


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--bin-dir", type=pathlib.Path, required=True)
    parser.add_argument("--mib", type=int, default=1024)
    args = parser.parse_args()
    import grpc

    # On the disk the service keeps its data on (the tests' temporary directory).
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        pb, pb_grpc = grpc_stubs(tmp / "stubs")
        process, endpoint = start_service(args.bin_dir.resolve(), tmp / "data")
        try:
            channel = grpc.insecure_channel(endpoint.removeprefix("http://"))
            workloads = pb_grpc.WorkloadsStub(channel)
            admin = pb_grpc.AdminStub(channel)
            metadata = (("authorization", f"Bearer {TOKEN}"),)
            quota = max(1, args.mib * 3 // 1024 + 1)
            spec = pb.WorkloadSpec(
                name="bench-checkpoint",
                requirements=pb.Requirements(min_vcpus=2, min_memory_gib=4),
                command=[sys.executable, str(WORKLOAD)],
                port=8080,
                health_check=pb.HealthCheck(path="/health", interval_seconds=1, timeout_seconds=1, unhealthy_threshold=3),
                on_interruption="migrate",
                create_timeout_seconds=600,
                storage=pb.StorageSpec(enabled=True, quota_gb=quota, retention_days=1),
            )
            created = workloads.ApplyWorkload(pb.ApplyWorkloadRequest(spec=spec), metadata=metadata)
            while True:
                w = workloads.GetWorkload(pb.GetWorkloadRequest(id=created.id), metadata=metadata)
                if w.status == "RUNNING":
                    break
                time.sleep(0.05)
            run_task(pb, workloads, metadata, w.id, "exec",
                     ["sh", "-c", f'dd if=/dev/urandom of="$CHECKPOINT_DIR/blob" bs=1M count={args.mib} status=none && sync'])
            checkpoint_s, output = run_task(pb, workloads, metadata, w.id, "checkpoint")
            notice = time.perf_counter()
            admin.InjectInterruption(pb.InjectInterruptionRequest(workload_id=w.id, delay_ms=0), metadata=metadata)
            state_url = w.endpoint + "state"
            while True:
                try:
                    status, body = get(state_url, w.access_token)
                    if status == 200 and json.loads(body).get("restored"):
                        break
                except OSError:
                    pass
                if time.perf_counter() - notice > 600:
                    raise SystemExit("checkpoint_gib: the replacement did not serve within 600 s")
                time.sleep(0.05)
            move_s = time.perf_counter() - notice
            restores = agent_durations(tmp / "data", "checkpoint restored")
            if not restores:
                raise SystemExit("checkpoint_gib: no `checkpoint restored` line in the agents' logs")
            restore_s = max(restores)
            final_bytes = final_checkpoint_bytes(tmp / "data")
            workloads.DeleteWorkload(pb.DeleteWorkloadRequest(id=w.id), metadata=metadata)
        finally:
            process.terminate()
            process.wait(timeout=60)
        baseline, synced = cp_seconds(tmp, args.mib)
    mib = args.mib
    print(f"Binaries: {args.bin_dir}; {mib} MiB of random bytes in $CHECKPOINT_DIR; local storage.\n")
    print(f"Checkpoint task: {output.strip()}\n")
    print("| path | time | MiB/s | against cp |")
    print("|---|---:|---:|---:|")
    print(f"| `cp`, same disk (into the page cache, as the agent's uploads land) | {baseline:.2f} s | {mib / baseline:.0f} | 1.00 |")
    print(f"| `cp` then `sync` | {synced:.2f} s | {mib / synced:.0f} | {baseline / synced:.2f} |")
    print(f"| checkpoint task (pack, hash, upload through signed URLs) | {checkpoint_s:.2f} s | {mib / checkpoint_s:.0f} | {baseline / checkpoint_s:.2f} |")
    print(f"| restore on the replacement (download, verify, write; its agent's own timing) | {restore_s:.2f} s | {mib / restore_s:.0f} | {baseline / restore_s:.2f} |")
    sent = "unknown" if final_bytes is None else f"{final_bytes:,} bytes"
    print(f"\nThe whole move, notice → serving restored (final checkpoint, restore, start): {move_s:.2f} s. The final checkpoint uploaded {sent} of the {mib} MiB directory.")


if __name__ == "__main__":
    main()
