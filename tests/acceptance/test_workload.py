"""computearbitrage_workload under real Terraform, on the local driver: real processes,
real HTTP, the service's own ledger and billing."""

import json
import socket
import sys
import time
import urllib.error
import urllib.request

import pytest

from conftest import WORKLOAD_SERVER, process_alive


def config(name, command_extra="", tags='{ team = "ml" }', health="", extra=""):
    return f"""
resource "computearbitrage_workload" "web" {{
  name    = "{name}"
  command = ["{sys.executable}", "{WORKLOAD_SERVER}"{command_extra}]
  env     = {{ WORKLOAD_NAME = "{name}" }}
  tags    = {tags}
  requirements {{
    min_vcpus      = 2
    min_memory_gib = 4
  }}
  health_check {{
    interval_seconds = 2
    timeout_seconds  = 1
    {health}
  }}
  {extra}
}}
output "web" {{
  value     = computearbitrage_workload.web
  sensitive = true
}}
"""


def get(web, path="/"):
    """GET through the router: the workload's stable `endpoint`, with its access token."""
    request = urllib.request.Request(web["endpoint"] + path.lstrip("/"), headers={"Authorization": f"Bearer {web['access_token']}"})
    with urllib.request.urlopen(request, timeout=5) as r:
        return json.loads(r.read())


def unique(name, terraform):
    return f"{name}-{terraform.name.split('-')[-1].replace('.', '')}"


def test_apply_update_replace_destroy(workload_service, workload_for_service, terraform):
    name = unique("web", terraform)
    ws = workload_for_service(workload_service)
    ws.write(config(name))
    ws.apply()
    web = ws.outputs()["web"]
    assert web["status"] == "RUNNING"
    assert web["storage_prefix"] is None, "no storage block, no namespace"
    assert web["provider"] in ("aws", "gcp", "azure") and web["instance_type"] and web["price_per_hour"] > 0
    answer = get(web)
    assert answer["workload"] == name
    first_pid = answer["pid"]
    assert ws.plan_is_noop(), "a second plan must be a no-op"

    # Tags change in place: same workload, same process.
    ws.write(config(name, tags='{ team = "ml", env = "prod" }'))
    plan = ws.run("plan").stdout
    assert "update in-place" in plan and "must be replaced" not in plan
    ws.apply()
    after_tags = ws.outputs()["web"]
    assert after_tags["id"] == web["id"]
    assert workload_service.cli("workload", "get", web["id"])["spec"]["tags"] == {"team": "ml", "env": "prod"}
    assert get(after_tags)["pid"] == first_pid

    # The command forces a replacement.
    ws.write(config(name, command_extra=', "--v2"', tags='{ team = "ml", env = "prod" }'))
    plan = ws.run("plan").stdout
    assert "forces replacement" in plan and "must be replaced" in plan
    ws.apply()
    replaced = ws.outputs()["web"]
    assert replaced["id"] != web["id"]
    second_pid = get(replaced)["pid"]
    assert not process_alive(first_pid), "the replaced workload's process is gone"
    assert workload_service.cli("workload", "get", web["id"])["status"] == "TERMINATED"

    ws.run("destroy", "-auto-approve")
    assert not process_alive(second_pid), "destroy stops the process"
    assert workload_service.cli("workload", "get", replaced["id"])["status"] == "TERMINATED"
    billing = workload_service.cli("workload", "billing", replaced["id"])
    assert len(billing["records"]) == 1
    record = billing["records"][0]
    assert record["cost"] > 0 and billing["total_cost"] == record["cost"]
    assert abs(record["cost"] - record["price_per_hour"] * record["duration_seconds"] / 3600) < 1e-12


def test_the_endpoint_is_the_router_address_for_http_and_tcp(workload_service, workload_for_service, terraform):
    name = unique("routed", terraform)
    ws = workload_for_service(workload_service)
    ws.write(config(name, extra="tcp_port = 9000"))
    ws.apply()
    web = ws.outputs()["web"]
    assert web["endpoint"] == f"{workload_service.router}/w/{web['id']}/"
    assert web["backend_endpoint"] and web["backend_endpoint"] not in web["endpoint"]
    answer = get(web, "/some/path?q=1")
    assert answer["workload"] == name and answer["path"] == "/some/path?q=1"
    assert answer["headers"]["x-workload-id"] == web["id"]

    # No credential: 401; a browser's ?token= works and is not forwarded.
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(web["endpoint"], timeout=5)
    assert refused.value.code == 401
    with urllib.request.urlopen(f"{web['endpoint']}page?token={web['access_token']}&a=b", timeout=5) as r:
        assert json.loads(r.read())["path"] == "/page?a=b"

    # TCP: the router's stable listener echoes through to the workload's TCP_PORT.
    host, port = web["tcp_endpoint"].rsplit(":", 1)
    assert int(port) == web["tcp_listen_port"]
    with socket.create_connection((host, int(port)), timeout=5) as connection:
        connection.sendall(b"ping")
        assert connection.recv(100) == f"{name}: ping".encode()
    assert ws.plan_is_noop(), "tcp_listen_port and the endpoints plan clean"

    # Who may connect changes in place; this machine is then outside the ranges.
    ws.write(config(name, extra='tcp_port = 9000\n  tcp_allowed_cidrs = ["10.0.0.0/8", "192.168.1.7"]'))
    plan = ws.run("plan")
    assert "updated in-place" in plan.stdout and "forces replacement" not in plan.stdout, plan.stdout
    ws.apply()
    assert ws.outputs()["web"]["id"] == web["id"]
    deadline = time.monotonic() + 10
    while True:
        with socket.create_connection((host, int(port)), timeout=5) as connection:
            try:
                connection.sendall(b"ping")
                answer = connection.recv(100)
            except ConnectionResetError:
                answer = b""
        if answer == b"":
            break
        assert time.monotonic() < deadline, "a connection from outside tcp_allowed_cidrs was still forwarded"
        time.sleep(0.1)
    assert ws.plan_is_noop(), "192.168.1.7 and 192.168.1.7/32 are one range"

    # A range with host bits set names the attribute element and the range to write.
    ws.write(config(name, extra='tcp_port = 9000\n  tcp_allowed_cidrs = ["10.0.0.1/8"]'))
    bad = ws.run("plan", check=False)
    text = " ".join(bad.stderr.split())
    assert bad.returncode == 1 and "tcp_allowed_cidrs[0]" in text and "write the network, 10.0.0.0/8" in text, text
    ws.write(config(name, extra="tcp_port = 9000"))
    ws.run("destroy", "-auto-approve")


def test_router_tcp_ports_that_cannot_be_had_are_diagnostics_on_tcp_listen_port(workload_service, workload_for_service, terraform, tmp_path):
    low, high = workload_service.tcp_ports
    first = workload_for_service(workload_service)
    first.write(config(unique("tcpa", terraform), extra=f"tcp_port = 9000\n  tcp_listen_port = {high}"))
    first.apply()
    assert first.outputs()["web"]["tcp_listen_port"] == high

    second = workload_for_service(workload_service, directory=tmp_path / "second")
    second.write(config(unique("tcpb", terraform), extra=f"tcp_port = 9000\n  tcp_listen_port = {high}"))
    taken = second.run("apply", "-auto-approve", check=False)
    assert taken.returncode != 0
    assert "Invalid value for tcp_listen_port" in taken.stderr and "already used by another workload" in taken.stderr, taken.stderr
    assert "tcp_listen_port" in taken.stderr.split("Invalid value for tcp_listen_port")[1]

    second.write(config(unique("tcpb", terraform), extra=f"tcp_port = 9000\n  tcp_listen_port = {high + 1}"))
    outside = second.run("apply", "-auto-approve", check=False)
    assert outside.returncode != 0
    assert f"outside the router's TCP port range {low}-{high}" in outside.stderr, outside.stderr

    # A port without tcp_port is caught at plan time.
    second.write(config(unique("tcpb", terraform), extra=f"tcp_listen_port = {low}"))
    plan = second.run("plan", check=False)
    assert plan.returncode != 0 and "only means something with tcp_port" in plan.stderr, plan.stderr
    first.run("destroy", "-auto-approve")


def test_storage_namespace_is_the_resources_and_holds_what_is_uploaded(workload_service, workload_for_service, terraform, tmp_path):
    name = unique("stored", terraform)
    ws = workload_for_service(workload_service)
    storage = 'storage {\n    enabled        = true\n    quota_gb       = %d\n    retention_days = 3\n  }'
    ws.write(config(name, extra=storage % 1))
    ws.apply()
    web = ws.outputs()["web"]
    assert web["storage_prefix"] == f"workloads/{web['id']}/"
    assert ws.plan_is_noop()

    # An artifact goes in and comes back out through signed URLs, via the CLI.
    artifact = tmp_path / "out.csv"
    artifact.write_bytes(b"epoch,loss\n1,0.5\n")
    workload_service.cli("workload", "upload", web["id"], "artifacts/results/out.csv", str(artifact))
    listed = workload_service.cli("workload", "objects", web["id"], "--prefix", "artifacts/")
    assert [(o["key"], o["size_bytes"]) for o in listed["objects"]] == [("artifacts/results/out.csv", artifact.stat().st_size)]
    assert listed["storage_prefix"] == web["storage_prefix"] and listed["quota_bytes"] == 1 << 30
    back = tmp_path / "back.csv"
    workload_service.cli("workload", "download", web["id"], "artifacts/results/out.csv", "-o", str(back))
    assert back.read_bytes() == artifact.read_bytes()
    assert ws.plan_is_noop(), "storage use is not drift"

    # The quota changes in place; the namespace, id and endpoint stay.
    ws.write(config(name, extra=storage % 2))
    ws.apply()
    after = ws.outputs()["web"]
    assert (after["id"], after["storage_prefix"], after["endpoint"]) == (web["id"], web["storage_prefix"], web["endpoint"])
    assert workload_service.cli("workload", "objects", web["id"])["quota_bytes"] == 2 << 30
    assert ws.plan_is_noop()

    # Import with storage plans clean too (storage_prefix comes back as it was).
    other = workload_for_service(workload_service, directory=tmp_path / "importer")
    other.write(config(name, extra=storage % 2).split('output "web"')[0])
    other.run("import", "computearbitrage_workload.web", web["id"])
    assert other.plan_is_noop(), other.run("plan", check=False).stdout
    ws.run("destroy", "-auto-approve")


def test_out_of_band_termination_is_recreated(workload_service, workload_for_service, terraform):
    name = unique("oob", terraform)
    ws = workload_for_service(workload_service)
    ws.write(config(name))
    ws.apply()
    first = ws.outputs()["web"]
    workload_service.cli("workload", "delete", first["id"], "--reason", "operator cleanup")
    deadline = time.monotonic() + 30
    while workload_service.cli("workload", "get", first["id"])["status"] != "TERMINATED":
        assert time.monotonic() < deadline, "out-of-band delete did not finish"
        time.sleep(0.3)
    plan = ws.run("plan", "-detailed-exitcode", check=False)
    assert plan.returncode == 2, plan.stdout + plan.stderr
    assert "will be created" in plan.stdout
    ws.apply()
    second = ws.outputs()["web"]
    assert second["id"] != first["id"] and second["status"] == "RUNNING"
    ws.run("destroy", "-auto-approve")


def test_import_by_id_gives_a_clean_plan(workload_service, workload_for_service, terraform, tmp_path):
    name = unique("imp", terraform)
    ws = workload_for_service(workload_service)
    ws.write(config(name))
    ws.apply()
    created = ws.outputs()["web"]
    # A second working directory with the same configuration and no state.
    other = workload_for_service(workload_service, directory=tmp_path / "importer")
    # No output block: `import` writes no outputs, and the resource is what must plan clean.
    other.write(config(name).split('output "web"')[0])
    result = other.run("import", "computearbitrage_workload.web", created["id"])
    assert "Import successful" in result.stdout
    assert other.plan_is_noop(), other.run("plan", check=False).stdout
    other.run("destroy", "-auto-approve")
    assert workload_service.cli("workload", "get", created["id"])["status"] == "TERMINATED"


def test_invalid_values_give_diagnostics_on_their_attributes(workload_service, workload_for_service):
    ws = workload_for_service(workload_service)
    ws.write(
        config(
            "bad-values",
            health='path = "health"\n    unhealthy_threshold = 0',
            extra='on_interruption = "pause"\n  on_unhealthy = "restart"\n  replace_unhealthy_after_seconds = 0\n  timeouts {\n    create = "ten minutes"\n  }',
        ).replace("timeout_seconds  = 1", "timeout_seconds  = 10")
    )
    result = ws.run("plan", check=False)
    text = " ".join((result.stdout + result.stderr).split())
    assert result.returncode == 1
    assert 'Invalid value for on_interruption' in text and 'use "migrate" (move the workload) or "terminate"' in text
    assert 'Invalid value for on_unhealthy' in text and 'use "keep" (stay on the instance) or "replace"' in text
    assert "Invalid value for replace_unhealthy_after_seconds" in text and "0 is less than 1" in text
    assert "Invalid value for health_check[0].path" in text and 'must start with "/"' in text
    assert "Invalid value for health_check[0].timeout_seconds" in text and "longer than the 2 s interval" in text
    assert "Invalid value for health_check.unhealthy_threshold" in text
    assert "Invalid value for timeouts.create" in text and '"ten minutes" is not a duration' in text
    assert "backtrace" not in text.lower()


def test_a_workload_that_never_gets_healthy_fails_create_naming_the_step(workload_service, workload_for_service, terraform, tmp_path):
    name = unique("sick", terraform)
    status_file = tmp_path / "health"
    status_file.write_text("fail")
    ws = workload_for_service(workload_service)
    ws.write(
        config(name, extra='timeouts {\n    create = "5s"\n  }').replace(
            f'WORKLOAD_NAME = "{name}"', f'WORKLOAD_NAME = "{name}", HEALTH_STATUS_FILE = "{status_file}"'
        )
    )
    started = time.monotonic()
    result = ws.run("apply", "-auto-approve", check=False)
    elapsed = time.monotonic() - started
    text = " ".join((result.stdout + result.stderr).split())
    assert result.returncode == 1
    assert f'Workload "{name}" failed to start: step wait-healthy failed' in text, text
    assert "HTTP 503" in text and "create timeout (5 s)" in text
    assert elapsed < 60
    # Nothing of it is left running, and the next plan wants to create it again.
    assert "will be created" in ws.run("plan").stdout


def workload_pids(name):
    """Live processes whose environment has WORKLOAD_NAME=name."""
    import os

    marker = f"WORKLOAD_NAME={name}".encode()
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                if marker in f.read().split(b"\0") and process_alive(int(entry)):
                    pids.append(int(entry))
        except OSError:
            pass
    return pids


def test_a_create_interrupted_by_ctrl_c_is_adopted_on_the_next_apply(workload_service, workload_for_service, terraform, tmp_path):
    import os
    import signal
    import subprocess

    name = unique("ctrlc", terraform)
    status_file = tmp_path / "health"
    status_file.write_text("fail")
    ws = workload_for_service(workload_service)
    ws.write(config(name).replace(f'WORKLOAD_NAME = "{name}"', f'WORKLOAD_NAME = "{name}", HEALTH_STATUS_FILE = "{status_file}"'))
    # Its own session, so Ctrl-C can reach the whole process group as a terminal's does
    # (Terraform and its provider plugin alike).
    apply = subprocess.Popen(
        [str(ws.terraform), "apply", "-auto-approve", "-no-color"],
        cwd=ws.dir, env=ws.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )
    # Wait until the service has started the workload's process, then press Ctrl-C.
    deadline = time.monotonic() + 60
    while not workload_pids(name):
        assert time.monotonic() < deadline and apply.poll() is None, "the create never started a process"
        time.sleep(0.1)
    os.killpg(apply.pid, signal.SIGINT)
    output, _ = apply.communicate(timeout=60)
    assert apply.returncode != 0, output
    assert "computearbitrage_workload.web" not in ws.run("state", "list", check=False).stdout
    first_pids = workload_pids(name)
    assert len(first_pids) == 1

    # The workload gets healthy; applying again adopts it instead of starting another.
    status_file.write_text("ok")
    ws.apply()
    web = ws.outputs()["web"]
    assert web["status"] == "RUNNING"
    assert workload_pids(name) == first_pids, "no second process was started"
    assert get(web)["pid"] == first_pids[0]
    runs = workload_service.cli("workload", "runs", web["id"])["runs"]
    assert len(runs) == 1, "one provisioning run, adopted"
    ws.run("destroy", "-auto-approve")
    assert not workload_pids(name)


def test_an_interrupted_workload_migrates_with_its_state_and_terraform_sees_no_change(workload_service, workload_for_service, terraform):
    """The documented default, on_interruption = "migrate": the notice reaches the agent on
    the instance's metadata endpoint, the workload checkpoints on SIGTERM, and it comes back
    on another offer with the same id, endpoint and token, its checkpoint restored."""
    name = unique("mover", terraform)
    ws = workload_for_service(workload_service)
    storage = 'storage {\n    enabled        = true\n    quota_gb       = 1\n    retention_days = 1\n  }'
    # Periodic copies on (hourly: the final one on the notice is what this restores).
    storage += '\n  checkpoint {\n    interval = "1h"\n    keep     = 2\n  }'
    # What a user's module exports: the stable values. (An output of the whole resource
    # would show its new placement as an output change, which is Terraform reporting
    # the move, not a change to make.)
    stable = """output "web" {
  value = {
    id           = computearbitrage_workload.web.id
    endpoint     = computearbitrage_workload.web.endpoint
    access_token = computearbitrage_workload.web.access_token
  }
  sensitive = true
}
"""
    ws.write(config(name, extra=storage).split('output "web"')[0] + stable)
    ws.apply()
    web = ws.outputs()["web"]
    before = workload_service.cli("workload", "get", web["id"])
    assert before["status"] == "RUNNING"
    assert [get(web, "/count")["count"] for _ in range(3)] == [1, 2, 3]
    assert get(web, "/state")["restored"] is False

    workload_service.cli("workload", "interrupt", web["id"])
    deadline = time.monotonic() + 60
    while True:
        now = workload_service.cli("workload", "get", web["id"])
        if now["status"] == "RUNNING" and now["instance_id"] != before["instance_id"]:
            break
        assert time.monotonic() < deadline, f"no migration: {now['status']} ({now['status_reason']})"
        time.sleep(0.2)
    offer = lambda w: (w["cloud"], w["region"], w["zone"], w["instance_type"])
    assert offer(now) != offer(before), "the reclaimed offer is excluded"

    # The same endpoint and token reach the replacement, which restored the checkpoint.
    state = get(web, "/state")
    assert state == {"count": 3, "restored": True, "generation": 1}, state
    assert get(web, "/count")["count"] == 4
    # The reclaimed instance is gone: nothing answers on its address any more.
    host, port = before["backend_endpoint"].rsplit(":", 1)
    with pytest.raises(OSError):
        socket.create_connection((host, int(port)), timeout=2).close()

    # Terraform sees the same resource: the plan is a no-op, before and after a refresh.
    assert ws.plan_is_noop(), ws.run("plan", check=False).stdout
    ws.run("apply", "-refresh-only", "-auto-approve")
    assert ws.outputs()["web"] == web
    assert ws.plan_is_noop()
    state_show = ws.run("state", "show", "computearbitrage_workload.web").stdout
    assert now["instance_id"] in state_show, "the refreshed state follows the new instance"
    import re
    cost = re.search(r'cost_to_date\s*=\s*([0-9.e-]+)', state_show)
    assert cost and float(cost.group(1)) > 0, state_show
    billing = workload_service.cli("workload", "billing", web["id"])
    assert [r.get("open", False) for r in billing["records"]] == [False, True] and billing["migrations"] == 1, billing
    runs = workload_service.cli("workload", "runs", web["id"])["runs"]
    assert [r["kind"] for r in runs] == ["provision", "migrate"] and runs[1]["status"] == "completed"
    ws.run("destroy", "-auto-approve")


def test_terraform_refreshes_and_destroys_a_workload_in_the_middle_of_its_move(workload_service, workload_for_service, terraform):
    """A plan while the workload moves (PROVISIONING, its replacement restoring) is a
    no-op, and a destroy then stops the move and leaves nothing running."""
    name = unique("midmove", terraform)
    ws = workload_for_service(workload_service)
    storage = 'storage {\n    enabled        = true\n    quota_gb       = 1\n    retention_days = 1\n  }'
    text = config(name, extra=storage)
    # The replacement takes 10 s after its restore to serve: the move lasts that long.
    text = text.replace(f'env     = {{ WORKLOAD_NAME = "{name}" }}', f'env     = {{ WORKLOAD_NAME = "{name}", SLOW_RESTORE_SECONDS = "10" }}')
    assert "SLOW_RESTORE_SECONDS" in text
    # The stable values as a module exports them (an output of the whole resource shows
    # its status change, which is Terraform reporting the move, not a change to make).
    text = text.split('output "web"')[0] + """output "web" {
  value = {
    id           = computearbitrage_workload.web.id
    endpoint     = computearbitrage_workload.web.endpoint
    access_token = computearbitrage_workload.web.access_token
  }
  sensitive = true
}
"""
    ws.write(text)
    ws.apply()
    web = ws.outputs()["web"]
    before = workload_service.cli("workload", "get", web["id"])
    workload_service.cli("workload", "interrupt", web["id"])
    deadline = time.monotonic() + 30
    while workload_service.cli("workload", "get", web["id"])["status"] != "PROVISIONING":
        assert time.monotonic() < deadline, "the move did not start"
        time.sleep(0.1)

    assert ws.plan_is_noop(), ws.run("plan", check=False).stdout
    during = workload_service.cli("workload", "get", web["id"])
    assert during["status"] == "PROVISIONING", f"the move ended before the plan did: {during['status']}"

    ws.run("destroy", "-auto-approve")
    after = workload_service.cli("workload", "get", web["id"])
    assert after["status"] == "TERMINATED", after
    deadline = time.monotonic() + 10
    while workload_pids(name):
        assert time.monotonic() < deadline, f"left running: {workload_pids(name)}"
        time.sleep(0.2)
    assert before["instance_id"] != ""
