"""Per-call latency as real clients see it, on loopback.

1. A third-party gRPC client (grpcio, with stubs generated from our .proto) calls the
   running service's FindPlacement and ListOffers: min, p50, p99, max per call.
2. Real Terraform (every version in .tools/bin) plans an empty configuration and one
   with a single `computearbitrage_placement` data source, alternately: the median wall
   time of each and their difference is what one data source costs a plan.
3. One traced plan (TF_LOG=trace) of the data-source configuration: for every provider
   RPC Terraform logs (`GRPCProvider.v6: NAME`), the time until Terraform's next log
   line, which is when the call returned to it.

Prints a Markdown report. Targets (docs/benchmarks.md): ≤ 2 ms per gRPC call, and a
one-data-source plan within 50 ms of an empty plan; --strict exits 1 when one is missed.

Usage: latency.py --bin-dir DIR [--calls N] [--plans N] [--strict]
"""

import argparse
import datetime
import os
import pathlib
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[2]
PROTO_DIR = REPO / "service" / "api" / "proto"
TOKEN = "latency-bench-token-0123456789abcdef"
GRPC_TARGET_MS = 2.0
PLAN_TARGET_MS = 50.0


def percentile(values, p):
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[index]


def start_service(bin_dir, data_dir):
    env = dict(os.environ, COMPUTEARBITRAGE_BOOTSTRAP_TOKEN=TOKEN, RUST_LOG="warn")
    env["COMPUTEARBITRAGE_ROUTER__LISTEN"] = "127.0.0.1:0"
    env["COMPUTEARBITRAGE_ROUTER__METRICS_LISTEN"] = ""
    # The per-token API limit (50 calls/s by default) would measure the limiter, not the call.
    env["COMPUTEARBITRAGE_API__RATE_LIMIT_PER_SECOND"] = "0"
    process = subprocess.Popen(
        [str(bin_dir / "computearbitrage"), "serve", "--listen", "127.0.0.1:0", "--data-dir", str(data_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        if "listening on " in line:
            return process, line.strip().split("listening on ", 1)[1]
    process.kill()
    raise SystemExit("latency: the service did not start")


def grpc_stubs(out_dir):
    from grpc_tools import protoc

    out_dir.mkdir(parents=True, exist_ok=True)
    proto = "computearbitrage/v1/computearbitrage.proto"
    include = pathlib.Path(protoc.__file__).parent / "_proto"
    code = protoc.main(
        ["protoc", f"-I{PROTO_DIR}", f"-I{include}", f"--python_out={out_dir}", f"--grpc_python_out={out_dir}", proto]
    )
    if code != 0:
        raise SystemExit("latency: cannot generate the Python stubs")
    sys.path.insert(0, str(out_dir))
    from computearbitrage.v1 import computearbitrage_pb2 as pb
    from computearbitrage.v1 import computearbitrage_pb2_grpc as pb_grpc

    return pb, pb_grpc


def measure_grpc(endpoint, calls, stubs_dir):
    import grpc

    pb, pb_grpc = grpc_stubs(stubs_dir)
    channel = grpc.insecure_channel(endpoint.removeprefix("http://"))
    pricing = pb_grpc.PricingStub(channel)
    metadata = (("authorization", f"Bearer {TOKEN}"),)
    requests = {
        "FindPlacement (≥4 vCPU, ≥16 GiB, 5 alternatives)": lambda: pricing.FindPlacement(
            pb.FindPlacementRequest(requirements=pb.Requirements(min_vcpus=4, min_memory_gib=16), alternatives=5),
            metadata=metadata,
        ),
        "ListOffers (first page of 100)": lambda: pricing.ListOffers(
            pb.ListOffersRequest(filter=pb.OfferFilter(min_vcpus=4), page_size=100), metadata=metadata
        ),
    }
    results = {}
    for name, call in requests.items():
        for _ in range(20):
            call()
        samples = []
        for _ in range(calls):
            started = time.perf_counter()
            call()
            samples.append((time.perf_counter() - started) * 1000)
        results[name] = samples
    channel.close()
    return results


def write_workspace(directory, bin_dir, endpoint, with_data_source):
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "cli.tfrc").write_text(
        "provider_installation {\n"
        f'  dev_overrides {{ "computearbitrage/computearbitrage" = "{bin_dir}" }}\n'
        "  direct {}\n}\n"
    )
    config = (
        'terraform {\n  required_providers {\n    computearbitrage = { source = "computearbitrage/computearbitrage" }\n  }\n}\n'
        'provider "computearbitrage" {}\n'
    )
    if with_data_source:
        config += 'data "computearbitrage_placement" "web" {\n  requirements {\n    min_vcpus      = 4\n    min_memory_gib = 16\n  }\n}\n'
    (directory / "main.tf").write_text(config)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TF_", "COMPUTEARBITRAGE_"))}
    env.update(
        TF_CLI_CONFIG_FILE=str(directory / "cli.tfrc"),
        TF_IN_AUTOMATION="1",
        TF_INPUT="0",
        CHECKPOINT_DISABLE="1",
        RUST_LIB_BACKTRACE="0",
        COMPUTEARBITRAGE_ENDPOINT=endpoint,
        COMPUTEARBITRAGE_TOKEN=TOKEN,
    )
    return env


def plan(terraform, directory, env):
    started = time.perf_counter()
    result = subprocess.run([str(terraform), "plan", "-no-color"], cwd=directory, env=env, capture_output=True, text=True)
    elapsed = (time.perf_counter() - started) * 1000
    if result.returncode != 0:
        raise SystemExit(f"latency: terraform plan failed:\n{result.stdout}\n{result.stderr}")
    return elapsed


TRACE_LINE = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3})Z \[")
RPC = re.compile(r"GRPCProvider(?:\.v6)?: (\w+)")


def plugin_starts(trace_lines):
    """Per plugin start: (Terraform's client certificate, our start to the handshake,
    the handshake to the first call answered) in ms."""
    starts = []
    current = {}
    for at, line in trace_lines:
        if "configuring client automatic mTLS" in line:
            current = {"mtls": at}
        elif "starting plugin:" in line and "mtls" in current:
            current["started"] = at
        elif "using plugin:" in line and "started" in current:
            current["handshake"] = at
        elif "GRPCProvider" in line and "handshake" in current and "first" not in current:
            current["first"] = at
            starts.append(tuple(
                (current[b] - current[a]).total_seconds() * 1000
                for a, b in (("mtls", "started"), ("started", "handshake"), ("handshake", "first"))
            ))
    return starts


def stamped_trace(terraform, directory, env):
    traced = dict(env, TF_LOG="trace")
    result = subprocess.run([str(terraform), "plan", "-no-color"], cwd=directory, env=traced, capture_output=True, text=True)
    stamped = []
    for line in result.stderr.splitlines():
        match = TRACE_LINE.match(line)
        if match:
            stamped.append((datetime.datetime.fromisoformat(match.group(1)), line))
    return stamped


def traced_calls(terraform, directory, env):
    """(rpc name, ms until Terraform's next log line) for every provider call.

    Terraform logs `GRPCProvider.v6: NAME` when it makes a call. A
    `GetProviderSchema` line right after another call's line is Terraform reading its
    schema cache for that call, not a call of its own, and is skipped."""
    stamped = stamped_trace(terraform, directory, env)
    calls = []
    previous_was_call = False
    for i, (at, line) in enumerate(stamped):
        rpc = RPC.search(line)
        if not rpc:
            previous_was_call = False
            continue
        name = rpc.group(1)
        if name == "GetProviderSchema" and previous_was_call:
            continue
        previous_was_call = True
        returned = next(
            (t for t, later in stamped[i + 1 :] if not RPC.search(later) and "provider.stdio" not in later),
            at,
        )
        calls.append((name, (returned - at).total_seconds() * 1000))
    return calls


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--bin-dir", required=True, type=pathlib.Path)
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--plans", type=int, default=10)
    parser.add_argument("--strict", action="store_true")
    args = parser.parse_args()
    bin_dir = args.bin_dir.resolve()
    missed = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        service, endpoint = start_service(bin_dir, tmp / "data")
        try:
            print(f"Binaries: {bin_dir}\n")
            print(f"### gRPC: grpcio {__import__('grpc').__version__} client → service ({args.calls} calls each, after 20 warm-up calls)\n")
            print("| call | min | p50 | p99 | max |\n|---|---:|---:|---:|---:|")
            for name, samples in measure_grpc(endpoint, args.calls, tmp / "stubs").items():
                p50 = statistics.median(samples)
                print(f"| {name} | {min(samples):.2f} ms | {p50:.2f} ms | {percentile(samples, 99):.2f} ms | {max(samples):.2f} ms |")
                if p50 > GRPC_TARGET_MS:
                    missed.append(f"{name}: p50 {p50:.2f} ms > {GRPC_TARGET_MS} ms")
            for terraform in sorted((REPO / ".tools" / "bin").glob("terraform-*")):
                version = terraform.name.split("-", 1)[1]
                empty_dir, one_dir = tmp / f"empty-{version}", tmp / f"one-{version}"
                empty_env = write_workspace(empty_dir, bin_dir, endpoint, False)
                one_env = write_workspace(one_dir, bin_dir, endpoint, True)
                plan(terraform, empty_dir, empty_env)
                plan(terraform, one_dir, one_env)
                empty, one = [], []
                for _ in range(args.plans):
                    empty.append(plan(terraform, empty_dir, empty_env))
                    one.append(plan(terraform, one_dir, one_env))
                difference = statistics.median(one) - statistics.median(empty)
                print(f"\n### Terraform {version}: `terraform plan` wall time ({args.plans} runs each, alternating)\n")
                print("| configuration | min | median | max |\n|---|---:|---:|---:|")
                for label, samples in (("empty (provider block only)", empty), ("one placement data source", one)):
                    print(f"| {label} | {min(samples):.0f} ms | {statistics.median(samples):.0f} ms | {max(samples):.0f} ms |")
                print(f"\nOne data source costs {difference:.0f} ms (median difference; target ≤ {PLAN_TARGET_MS:.0f} ms).")
                if difference > PLAN_TARGET_MS:
                    missed.append(f"Terraform {version}: one data source costs {difference:.0f} ms > {PLAN_TARGET_MS:.0f} ms")
                calls = traced_calls(terraform, one_dir, one_env)
                print(f"\nProvider calls in one traced plan (time from Terraform's `GRPCProvider` line to its next log line, ms resolution):\n")
                print("| call | times | max |\n|---|---|---:|")
                by_name = {}
                for name, ms in calls:
                    by_name.setdefault(name, []).append(ms)
                for name, samples in by_name.items():
                    print(f"| {name} | {', '.join(f'{s:.0f}' for s in samples)} ms | {max(samples):.0f} ms |")
                empty_starts = len(plugin_starts(stamped_trace(terraform, empty_dir, empty_env)))
                starts = plugin_starts(stamped_trace(terraform, one_dir, one_env))
                print(f"\nPlugin starts: {len(starts)} for the data-source plan, {empty_starts} for the empty plan. Each start, in ms:\n")
                print("| start | Terraform makes its client certificate | provider process start to handshake | handshake to the first call |\n|---|---:|---:|---:|")
                for i, (mtls, handshake, first) in enumerate(starts, 1):
                    print(f"| {i} | {mtls:.0f} | {handshake:.0f} | {first:.0f} |")
        finally:
            service.send_signal(signal.SIGTERM)
            try:
                service.wait(timeout=20)
            except subprocess.TimeoutExpired:
                service.kill()
    if missed:
        print("\nMissed targets:\n" + "\n".join(f"- {m}" for m in missed))
        if args.strict:
            sys.exit(1)
    else:
        print("\nAll latency targets met.")


if __name__ == "__main__":
    main()
