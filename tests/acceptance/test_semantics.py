"""Terraform semantics of computearbitrage_workload that users rely on, under both
Terraform versions: saved plans applied later, drift, storage changes, adoption, import
of every accepted spelling, creates that lose the service, and diagnostics that name
their cause."""

import json
import sys
import time
import urllib.request

from conftest import TOKEN, WORKLOAD_SERVER, Service, free_port


def unique(name, terraform):
    return f"{name}-{terraform.name.split('-')[-1].replace('.', '')}"


def workload(name, status_file, tags='{ team = "ml" }', extra="", requirements="", health=""):
    return f"""
resource "computearbitrage_workload" "web" {{
  name    = "{name}"
  command = ["{sys.executable}", "{WORKLOAD_SERVER}"]
  env     = {{ WORKLOAD_NAME = "{name}", HEALTH_STATUS_FILE = "{status_file}" }}
  tags    = {tags}
  requirements {{
    min_vcpus      = 2
    min_memory_gib = 4
    {requirements}
  }}
  health_check {{
    interval_seconds    = 1
    unhealthy_threshold = 1
    {health}
  }}
  {extra}
}}
output "web" {{
  value     = computearbitrage_workload.web
  sensitive = true
}}
"""


def wait_status(service, workload_id, wanted, timeout=30):
    deadline = time.monotonic() + timeout
    while True:
        status = service.cli("workload", "get", workload_id)["status"]
        if status == wanted:
            return
        assert time.monotonic() < deadline, f"{workload_id} is {status}, not {wanted}"
        time.sleep(0.3)


def test_a_saved_in_place_plan_applies_after_the_workload_changed_status(workload_service, workload_for_service, terraform, tmp_path):
    name = unique("saved", terraform)
    health = tmp_path / "health"
    health.write_text("ok")
    ws = workload_for_service(workload_service)
    ws.write(workload(name, health))
    ws.apply()
    web = ws.outputs()["web"]
    assert web["status"] == "RUNNING"

    ws.write(workload(name, health, tags='{ team = "ml", env = "prod" }'))
    plan = ws.run("plan", "-out=p").stdout
    assert "update in-place" in plan and "must be replaced" not in plan
    # What the service may change by itself is unknown in the plan; what never
    # changes is not.
    shown = json.loads(ws.run("show", "-json", "p").stdout)
    change = next(c for c in shown["resource_changes"] if c["address"] == "computearbitrage_workload.web")
    unknown = change["change"]["after_unknown"]
    for volatile in ["status", "cloud", "region", "instance_type", "instance_id", "backend_endpoint", "price_per_hour"]:
        assert unknown.get(volatile) is True, volatile
    for stable in ["id", "endpoint", "access_token", "created_at"]:
        assert not unknown.get(stable), stable
        assert change["change"]["after"][stable] == change["change"]["before"][stable]

    # Between the plan and its apply the workload turns UNHEALTHY.
    health.write_text("fail")
    wait_status(workload_service, web["id"], "UNHEALTHY")
    applied = ws.run("apply", "p", check=False)
    assert applied.returncode == 0, applied.stdout + applied.stderr
    after = ws.outputs()["web"]
    assert after["id"] == web["id"] and after["status"] == "UNHEALTHY"
    assert workload_service.cli("workload", "get", web["id"])["spec"]["tags"] == {"team": "ml", "env": "prod"}
    health.write_text("ok")
    ws.run("destroy", "-auto-approve")


def test_changes_made_outside_terraform_show_in_the_plan(workload_service, workload_for_service, terraform, tmp_path):
    name = unique("drift", terraform)
    health = tmp_path / "health"
    ws = workload_for_service(workload_service)
    ws.write(workload(name, health, extra="storage {\n    enabled  = true\n    quota_gb = 5\n  }"))
    ws.apply()
    web = ws.outputs()["web"]
    assert ws.plan_is_noop()
    workload_service.cli(
        "workload", "update", web["id"],
        "--tag", "owner=someone", "--env", "EXTRA=1", "--on-interruption", "terminate",
        "--health-path", "/healthz", "--storage-quota-gb", "9",
        "--on-unhealthy", "replace", "--replace-unhealthy-after", "60", "--fallback", "on_demand",
    )
    plan = ws.run("plan", "-detailed-exitcode", check=False)
    assert plan.returncode == 2, plan.stdout + plan.stderr
    text = " ".join(plan.stdout.split())
    for drift in ['- "owner" = "someone" -> null', '- "EXTRA" = "1" -> null', 'on_interruption = "terminate" -> "migrate"', 'path = "/healthz" -> "/health"', "quota_gb = 9 -> 5", 'on_unhealthy = "replace" -> "keep"', "replace_unhealthy_after_seconds = 60 -> 300", 'fallback = "on_demand" -> "none"']:
        assert drift in text, f"{drift} missing from\n{text}"
    assert "update in-place" in text and "must be replaced" not in text
    ws.apply()
    spec = workload_service.cli("workload", "get", web["id"])["spec"]
    assert spec["tags"] == {"team": "ml"} and "EXTRA" not in spec["env"]
    assert spec["on_interruption"] == "migrate" and spec["health_check"]["path"] == "/health"
    assert spec["storage"]["quota_gb"] == 5
    assert spec["on_unhealthy"] == "keep" and spec["replace_unhealthy_after_seconds"] == 300
    assert ws.plan_is_noop()
    ws.run("destroy", "-auto-approve")


def test_storage_quota_changes_in_place_and_enabled_replaces(workload_service, workload_for_service, terraform, tmp_path):
    name = unique("store", terraform)
    health = tmp_path / "health"
    ws = workload_for_service(workload_service)
    storage = "storage {{\n    enabled        = {enabled}\n    quota_gb       = {quota}\n    retention_days = 7\n  }}"
    ws.write(workload(name, health, extra=storage.format(enabled="true", quota=5)))
    ws.apply()
    first = ws.outputs()["web"]
    ws.write(workload(name, health, extra=storage.format(enabled="true", quota=20)))
    plan = ws.run("plan").stdout
    assert "update in-place" in plan and "must be replaced" not in plan
    ws.apply()
    assert ws.outputs()["web"]["id"] == first["id"]
    assert workload_service.cli("workload", "get", first["id"])["spec"]["storage"] == {"enabled": True, "quota_gb": 20, "retention_days": 7}
    ws.write(workload(name, health, extra=storage.format(enabled="false", quota=20)))
    plan = ws.run("plan").stdout
    assert "must be replaced" in plan and "forces replacement" in plan
    ws.apply()
    assert ws.outputs()["web"]["id"] != first["id"]
    ws.run("destroy", "-auto-approve")


def test_the_checkpoint_block_changes_in_place_reads_back_and_names_its_mistakes(workload_service, workload_for_service, terraform, tmp_path):
    name = unique("ckpt", terraform)
    health = tmp_path / "health"
    ws = workload_for_service(workload_service)
    block = 'storage {{\n    enabled  = true\n    quota_gb = 1\n  }}\n  checkpoint {{\n    {body}\n  }}'
    ws.write(workload(name, health, extra=block.format(body='interval = "10m"')))
    ws.apply()
    first = ws.outputs()["web"]
    stored = workload_service.cli("workload", "get", first["id"])["spec"]["checkpoint"]
    assert stored == {"signal": "SIGTERM", "command": [], "interval_seconds": 600, "keep": 3}, stored
    assert ws.plan_is_noop(), "defaults and the written 10m read back without a diff"

    # Every attribute changes in place, and a spelling of the same interval is no diff.
    ws.write(workload(name, health, extra=block.format(body='interval = "1h"\n    keep = 5\n    signal = "SIGUSR1"\n    command = ["true"]')))
    plan = ws.run("plan").stdout
    assert "update in-place" in plan and "must be replaced" not in plan, plan
    ws.apply()
    assert ws.outputs()["web"]["id"] == first["id"]
    stored = workload_service.cli("workload", "get", first["id"])["spec"]["checkpoint"]
    assert stored == {"signal": "SIGUSR1", "command": ["true"], "interval_seconds": 3600, "keep": 5}, stored
    ws.write(workload(name, health, extra=block.format(body='interval = "60m"\n    keep = 5\n    signal = "SIGUSR1"\n    command = ["true"]')))
    assert ws.plan_is_noop(), "60m is the 1h in the state"

    # A change through the CLI (periodic copies turned off) shows in the plan.
    workload_service.cli("workload", "update", first["id"], "--checkpoint-interval", "0")
    plan = ws.run("plan", "-detailed-exitcode", check=False)
    assert plan.returncode == 2 and '"1h"' in plan.stdout, plan.stdout

    # Mistakes are named on their attribute, at plan time.
    ws.write(workload(name, health, extra='checkpoint {\n    interval = "5m"\n    signal = "SIGKILL"\n    keep = 0\n  }'))
    bad = ws.run("plan", check=False)
    text = " ".join(bad.stderr.split())  # Terraform wraps long lines
    assert bad.returncode != 0
    assert "Periodic checkpoints need storage" in text and "storage { enabled = true }" in text, text
    assert "checkpoint" in text and "signal" in text and "SIGTERM, SIGINT" in text, text
    assert "keeps no checkpoint to restore" in text, text
    ws.write(workload(name, health, extra=block.format(body='interval = "ten minutes"')))
    bad = ws.run("plan", check=False)
    assert bad.returncode != 0 and "is not a duration" in bad.stderr, bad.stderr
    ws.write(workload(name, health, extra=block.format(body='interval = "10m"')))
    ws.run("destroy", "-auto-approve")


def test_a_name_taken_by_a_different_workload_is_not_adopted(workload_service, workload_for_service, terraform, tmp_path):
    name = unique("taken", terraform)
    health = tmp_path / "health"
    first = workload_for_service(workload_service)
    first.write(workload(name, health))
    first.apply()
    existing = first.outputs()["web"]["id"]
    other = workload_for_service(workload_service, directory=tmp_path / "other")
    other.write(workload(name, health, tags='{ team = "someone-else" }'))
    result = other.run("apply", "-auto-approve", check=False)
    text = " ".join((result.stdout + result.stderr).split())
    assert result.returncode != 0
    assert "A workload with this name already exists" in text
    assert existing in text and "terraform import" in text and "differs in tags" in text
    assert "computearbitrage_workload.web" not in other.run("state", "list", check=False).stdout
    assert workload_service.cli("workload", "get", existing)["spec"]["tags"] == {"team": "ml"}, "left as it was"
    first.run("destroy", "-auto-approve")


def test_import_plans_clean_whatever_spelling_was_written(workload_service, workload_for_service, terraform, tmp_path):
    name = unique("spell", terraform)
    health = tmp_path / "health"
    config = workload(
        name,
        health,
        tags="{}",
        requirements='architecture = "amd64"\n    allow_unknown_interruption_rate = true\n    clouds = []\n    regions = []',
        extra="storage {}",
    )
    ws = workload_for_service(workload_service)
    ws.write(config)
    ws.apply()
    created = ws.outputs()["web"]
    assert ws.plan_is_noop()
    stored = workload_service.cli("workload", "get", created["id"])["spec"]["requirements"]
    assert stored["architecture"] == "x86_64" and stored["allow_unknown_interruption_rate"] is True
    importer = workload_for_service(workload_service, directory=tmp_path / "importer")
    importer.write(config.split('output "web"')[0])
    importer.run("import", "computearbitrage_workload.web", created["id"])
    plan = importer.run("plan", "-detailed-exitcode", check=False)
    assert plan.returncode == 0, plan.stdout
    importer.run("destroy", "-auto-approve")


def test_only_the_interval_sets_a_fitting_default_timeout(workload_service, workload_for_service, terraform, tmp_path):
    name = unique("interval", terraform)
    ws = workload_for_service(workload_service)
    config = workload(name, tmp_path / "health").replace("    interval_seconds    = 1\n", "    interval_seconds    = 2\n")
    ws.write(config)
    ws.apply()
    web = ws.outputs()["web"]
    assert web["health_check"][0]["timeout_seconds"] == 2
    assert workload_service.cli("workload", "get", web["id"])["spec"]["health_check"]["timeout_seconds"] == 2
    assert ws.plan_is_noop()
    ws.run("destroy", "-auto-approve")


def test_updating_a_workload_that_ended_says_so(workload_service, workload_for_service, terraform, tmp_path):
    name = unique("ended", terraform)
    health = tmp_path / "health"
    ws = workload_for_service(workload_service)
    ws.write(workload(name, health))
    ws.apply()
    web = ws.outputs()["web"]
    workload_service.cli("workload", "delete", web["id"])
    wait_status(workload_service, web["id"], "TERMINATED")
    ws.write(workload(name, health, tags='{ team = "new" }'))
    result = ws.run("apply", "-auto-approve", "-refresh=false", check=False)
    text = " ".join((result.stdout + result.stderr).split())
    assert result.returncode != 0
    assert "The workload has ended and cannot change" in text, text
    assert "No spot offer" not in text
    # A normal apply refreshes, drops it, and creates it again.
    ws.apply()
    assert ws.outputs()["web"]["id"] != web["id"]
    ws.run("destroy", "-auto-approve")


def _workload_pids(name):
    import os

    from conftest import process_alive

    marker = f"WORKLOAD_NAME={name}".encode()
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/environ", "rb") as f:
                    if marker in f.read().split(b"\0") and process_alive(int(entry)):
                        pids.append(int(entry))
            except OSError:
                pass
    return pids


def restartable_service(tmp_path, name):
    port = free_port()
    return Service(tmp_path / name, None, listen=f"127.0.0.1:{port}")


def test_a_create_survives_a_service_restart_while_it_waits(tmp_path, workload_for_service, terraform):
    import subprocess

    service = restartable_service(tmp_path, "restart")
    try:
        name = unique("survive", terraform)
        health = tmp_path / "health"
        health.write_text("fail")
        ws = workload_for_service(service)
        ws.write(workload(name, health, extra='timeouts {\n    create = "2m"\n  }'))
        apply = subprocess.Popen(
            [str(ws.terraform), "apply", "-auto-approve", "-no-color"],
            cwd=ws.dir, env=ws.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        deadline = time.monotonic() + 60
        while not list((service.data_dir / "local-driver").glob("*.log")):
            assert time.monotonic() < deadline and apply.poll() is None, "the create never started an instance"
            time.sleep(0.2)
        # The service dies while Terraform polls; Terraform keeps polling.
        service.kill()
        time.sleep(3)
        service.start()
        health.write_text("ok")
        output, _ = apply.communicate(timeout=120)
        assert apply.returncode == 0, output
        web = ws.outputs()["web"]
        assert web["status"] == "RUNNING"
        assert len(service.cli("workload", "runs", web["id"])["runs"]) == 1, "no second workload"
        ws.run("destroy", "-auto-approve")
    finally:
        service.stop()


def test_a_create_that_loses_the_service_keeps_the_workload_tainted(tmp_path, workload_for_service, terraform):
    import subprocess

    service = restartable_service(tmp_path, "lost")
    try:
        name = unique("lost", terraform)
        health = tmp_path / "health"
        health.write_text("fail")
        ws = workload_for_service(service)
        ws.write(workload(name, health, extra='timeouts {\n    create = "15s"\n  }'))
        apply = subprocess.Popen(
            [str(ws.terraform), "apply", "-auto-approve", "-no-color"],
            cwd=ws.dir, env=ws.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        deadline = time.monotonic() + 60
        while not list((service.data_dir / "local-driver").glob("*.log")):
            assert time.monotonic() < deadline and apply.poll() is None, "the create never started an instance"
            time.sleep(0.2)
        service.kill()
        output, _ = apply.communicate(timeout=120)
        text = " ".join(output.split())
        assert apply.returncode != 0
        assert "Lost track of workload" in text and "marked tainted" in text, text
        state = json.loads(ws.run("show", "-json").stdout)
        resource = state["values"]["root_module"]["resources"][0]
        lost = resource["values"]["id"]
        assert lost.startswith("wl-")
        assert resource.get("tainted") is True
        # Back again, the next apply replaces it (or, if its own run gave up meanwhile,
        # drops the FAILED one): either way one RUNNING workload, nothing orphaned.
        service.start()
        health.write_text("ok")
        ws.apply()
        assert ws.outputs()["web"]["id"] != lost
        assert service.cli("workload", "get", lost)["status"] in ("TERMINATED", "FAILED")
        alive = [p for p in _workload_pids(name) if p]
        assert len(alive) == 1, f"only the new workload's process runs: {alive}"
        ws.run("destroy", "-auto-approve")
    finally:
        service.stop()


def test_a_placement_limit_keeps_to_published_rates_and_warns_when_unknown_is_allowed(full_service, workspace_for):
    ws = workspace_for(full_service)
    ws.write(
        """
data "computearbitrage_placement" "strict" {
  requirements {
    min_vcpus             = 4
    min_memory_gib        = 16
    max_interruption_rate = 5
  }
}
data "computearbitrage_placement" "loose" {
  requirements {
    min_vcpus                       = 4
    min_memory_gib                  = 16
    max_interruption_rate           = 5
    allow_unknown_interruption_rate = true
  }
}
output "strict" { value = data.computearbitrage_placement.strict }
output "loose" { value = data.computearbitrage_placement.loose }
"""
    )
    result = ws.run("apply", "-auto-approve")
    out = ws.outputs()
    # Checked against the independent model: AWS t3.2xlarge <5% against GCP e2-standard-4, rate unknown.
    import model
    from conftest import BUNDLED_PRICES

    offers = model.load(BUNDLED_PRICES)
    strict = model.placement(offers, alternatives=0, min_vcpus=4, min_memory_gib=16, max_interruption_rate=5)[0]
    loose = model.placement(offers, alternatives=0, min_vcpus=4, min_memory_gib=16, max_interruption_rate=5,
                            allow_unknown_interruption_rate=True)[0]
    assert (out["strict"]["cloud"], out["strict"]["instance_type"]) == (strict["cloud"], strict["instance_type"])
    assert (out["loose"]["cloud"], out["loose"]["instance_type"]) == (loose["cloud"], loose["instance_type"])
    assert out["strict"]["cloud"] == "aws" and "interruption rate <5%" in out["strict"]["reason"]
    assert "unknown" in out["loose"]["reason"] and "only because allow_unknown_interruption_rate = true" in out["loose"]["reason"]
    text = " ".join((result.stdout + result.stderr).split())
    assert "The chosen offer's interruption rate is unknown" in text
    assert "assumed" not in out["loose"]["reason"]


def test_unknown_names_get_a_warning_with_the_closest_known_ones(full_service, workspace_for):
    ws = workspace_for(full_service)
    ws.write(
        """
data "computearbitrage_spot_prices" "typo" {
  regions  = ["us-eest-1"]
  gpu_name = "A10O"
}
output "n" { value = length(data.computearbitrage_spot_prices.typo.offers) }
"""
    )
    result = ws.run("apply", "-auto-approve")
    text = " ".join((result.stdout + result.stderr).split())
    assert ws.outputs()["n"] == 0
    assert "No offer has this name: regions[0]" in text
    assert 'no offer has the region "us-eest-1"' in text and '"us-east-1"' in text
    assert 'no offer has the GPU "A10O"' in text and '"A100"' in text


def test_the_deprecated_providers_argument_warns_and_still_works(full_service, workspace_for):
    ws = workspace_for(full_service)
    ws.write(
        """
data "computearbitrage_spot_prices" "old" {
  providers = ["gcp"]
  limit     = 3
}
output "clouds" { value = [for o in data.computearbitrage_spot_prices.old.offers : o.cloud] }
"""
    )
    result = ws.run("apply", "-auto-approve")
    text = " ".join((result.stdout + result.stderr).split())
    assert ws.outputs()["clouds"] == ["gcp", "gcp", "gcp"]
    assert "Argument is deprecated" in text and "write `clouds`" in text


def make_certificates(directory):
    """A CA, and a certificate it signs for 127.0.0.1 and localhost, made with openssl."""
    import subprocess

    def run(*args):
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)

    run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2",
        "-subj", "/CN=computearbitrage test CA", "-keyout", "ca.key", "-out", "ca.pem",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign")
    run("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-subj", "/CN=127.0.0.1", "-keyout", "server.key", "-out", "server.csr")
    (directory / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-days", "2", "-extfile", "ext.cnf", "-out", "server.pem")
    return directory / "ca.pem", directory / "server.pem", directory / "server.key"


def test_https_endpoints_connect_with_the_ca_file_and_say_why_not_without(tmp_path, workspace_for):
    ca, cert, key = make_certificates(tmp_path)
    service = Service(
        tmp_path / "tls",
        None,
        extra_env={"COMPUTEARBITRAGE_TLS__CERT_FILE": str(cert), "COMPUTEARBITRAGE_TLS__KEY_FILE": str(key)},
    )
    service.ca_file = ca
    try:
        assert service.endpoint.startswith("https://127.0.0.1:")
        config = """
provider "computearbitrage" {
  %s
}
data "computearbitrage_placement" "p" {
  requirements {
    min_vcpus = 2
  }
}
output "cloud" { value = data.computearbitrage_placement.p.cloud }
"""
        ws = workspace_for(service)
        ws.write(config % f'ca_file = "{ca}"')
        ws.apply()
        assert ws.outputs()["cloud"] in ("aws", "gcp", "azure")
        # The CLI verifies the same way: with the CA file it reaches the service (which
        # knows no such workload), without it it says why not.
        assert "NotFound" in service.cli("workload", "get", "wl-none", check=False)["error"]
        service.ca_file = None
        refused = service.cli("workload", "get", "wl-none", check=False)["error"]
        assert "not trusted" in refused and "--ca-file" in refused, refused
        service.ca_file = ca
        untrusted = workspace_for(service)
        untrusted.write(config % "")
        result = untrusted.run("plan", check=False)
        text = " ".join((result.stdout + result.stderr).split())
        assert result.returncode != 0
        assert f"Cannot reach the computearbitrage service at {service.endpoint}" in text
        assert "not trusted" in text and "ca_file" in text, text
        plain = workspace_for(service, endpoint=service.endpoint.replace("https://", "http://"))
        plain.write(config % "")
        result = plain.run("plan", check=False)
        text = " ".join((result.stdout + result.stderr).split())
        assert result.returncode != 0 and "Cannot reach" in text
        assert "https://" in text, text
    finally:
        service.stop()


def test_a_read_token_plans_but_cannot_apply(workload_service, workload_for_service, terraform, tmp_path):
    token = workload_service.cli("token", "create", "--tenant", "default", "--scopes", "read", "--label", "plan-only")["token"]
    name = unique("readonly", terraform)
    ws = workload_for_service(workload_service)
    ws.env["COMPUTEARBITRAGE_TOKEN"] = token
    ws.write(workload(name, tmp_path / "health") + 'data "computearbitrage_placement" "p" {\n  requirements {\n    min_vcpus = 2\n  }\n}\n')
    plan = ws.run("plan")
    assert "will be created" in plan.stdout
    result = ws.run("apply", "-auto-approve", check=False)
    text = " ".join((result.stdout + result.stderr).split())
    assert result.returncode != 0
    assert "The token may not do this: creating a workload" in text and "`write` scope" in text, text
    audit = workload_service.cli("audit", "--limit", "20")["entries"]
    assert any(e["action"] == "ApplyWorkload" and e["outcome"] == "permission-denied" for e in audit), audit


def test_an_unhealthy_workload_is_replaced_and_terraform_sees_no_change(workload_service, workload_for_service, terraform):
    """on_unhealthy = "replace": a workload that stays UNHEALTHY moves to a fresh instance
    under the same id and endpoint, and the next plan is a no-op."""
    name = unique("healer", terraform)
    ws = workload_for_service(workload_service)
    extra = 'on_unhealthy                    = "replace"\n  replace_unhealthy_after_seconds = 2'
    # Relative: each instance reads the file in its own working directory.
    config = workload(name, "health", extra=extra).split('output "web"')[0]
    config += 'output "web" {\n  value     = { id = computearbitrage_workload.web.id, endpoint = computearbitrage_workload.web.endpoint }\n  sensitive = true\n}\n'
    ws.write(config)
    ws.apply()
    web = ws.outputs()["web"]
    before = workload_service.cli("workload", "get", web["id"])
    assert (before["spec"]["on_unhealthy"], before["spec"]["replace_unhealthy_after_seconds"]) == ("replace", 2)
    assert ws.plan_is_noop()
    exec_ = workload_service.cli("workload", "exec", web["id"], "--", "sh", "-c", "echo fail > health", check=False)
    assert "error" not in exec_, exec_
    deadline = time.monotonic() + 60
    while True:
        now = workload_service.cli("workload", "get", web["id"])
        if now["status"] == "RUNNING" and now["instance_id"] != before["instance_id"]:
            break
        assert time.monotonic() < deadline, f"not replaced: {now['status']} ({now['status_reason']})"
        time.sleep(0.2)
    assert now["endpoint"] == before["endpoint"]
    assert ws.plan_is_noop(), ws.run("plan", check=False).stdout
    ws.run("apply", "-refresh-only", "-auto-approve")
    assert ws.outputs()["web"] == web
    assert now["instance_id"] in ws.run("state", "show", "computearbitrage_workload.web").stdout
    ws.run("destroy", "-auto-approve")


def test_fallback_takes_on_demand_capacity_when_no_spot_offer_matches(workload_service, workload_for_service, terraform, tmp_path):
    """fallback = "on_demand": the plan says what will happen, the workload runs on
    on-demand capacity at the on-demand price, and the next plan is a no-op."""
    name = unique("ondemand", terraform)
    ws = workload_for_service(workload_service)
    # No spot offer publishes a rate under 1 %.
    ws.write(workload(name, tmp_path / "health", requirements="max_interruption_rate = 1", extra='fallback = "on_demand"'))
    plan = ws.run("plan").stdout
    text = " ".join(plan.split())
    assert "No spot offer matches the requirements now" in text and 'With fallback = "on_demand", the apply takes on-demand capacity' in text, text
    ws.apply()
    web = ws.outputs()["web"]
    assert web["status"] == "RUNNING" and web["market"] == "on_demand", web
    assert web["price_per_hour"] == web["on_demand_price_per_hour"], web
    assert ws.plan_is_noop()
    ws.run("destroy", "-auto-approve")


def http_get(url, token):
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=5) as response:
        return response.read().decode()


def write_two_offer_prices(directory, aws_spot, gcp_spot):
    """AWS m5.large and GCP n2-standard-2 (both 2 vCPU, 8 GiB); each file whole."""
    header = "InstanceType,AcceleratorName,AcceleratorCount,vCPUs,MemoryGiB,GpuInfo,Price,SpotPrice,Region,AvailabilityZone\n"
    files = {
        "manifest.toml": '[[files]]\nfile = "aws.csv"\ncloud = "aws"\nobserved_at = "2026-12-01T00:00:00Z"\n\n'
                         '[[files]]\nfile = "gcp.csv"\ncloud = "gcp"\nobserved_at = "2026-12-01T00:00:00Z"\n',
        "aws.csv": header + f"m5.large,,,2.0,8.0,,0.096,{aws_spot},us-east-1,use1-az1\n",
        "gcp.csv": header + f"n2-standard-2,,,2.0,8.0,,0.097,{gcp_spot},us-central1,\n",
    }
    for name, text in files.items():
        tmp = directory / f".{name}.tmp"
        tmp.write_text(text)
        tmp.replace(directory / name)


def test_a_rebalance_moves_the_workload_and_terraform_sees_no_change(tmp_path, workload_for_service, terraform):
    """rebalance { ... }: when another offer stays cheaper enough, the workload moves
    make-before-break (RUNNING throughout, same id, endpoint and token, state restored),
    and the next plan is a no-op; bad values are named on their paths."""
    prices = tmp_path / "prices"
    prices.mkdir()
    write_two_offer_prices(prices, 0.05, 0.08)
    service = Service(tmp_path / "svc", prices, extra_env={
        "COMPUTEARBITRAGE_PRICING__SNAPSHOT__INTERVAL_SECONDS": "1",
        "COMPUTEARBITRAGE_WORKLOADS__REBALANCE_CHECK_MS": "200",
        "COMPUTEARBITRAGE_WORKLOADS__DRAIN_MS": "500",
    })
    try:
        name = unique("mover", terraform)
        ws = workload_for_service(service)
        bad = workload(name, tmp_path / "health", requirements="allow_unknown_interruption_rate = true",
                       extra='rebalance {\n    min_savings_percent = 99\n    min_duration = "soon"\n  }')
        ws.write(bad)
        failed = ws.run("plan", check=False)
        text = " ".join(failed.stderr.split())
        assert failed.returncode != 0
        assert "Invalid value for rebalance.min_duration" in text and '"soon" is not a duration' in text, text
        assert "99 is outside 1 to 95 percent" in text, text
        # Storage left at its default quota of 0 could not hold the move's checkpoint.
        ws.write(workload(name, tmp_path / "health", requirements="allow_unknown_interruption_rate = true",
                          extra='storage {\n    enabled = true\n  }'))
        planned = ws.run("plan")
        warned = " ".join((planned.stdout + planned.stderr).split())
        assert "Storage without a quota holds nothing" in warned and "Set quota_gb" in warned, warned

        extra = ('storage {\n    enabled = true\n    quota_gb = 1\n  }\n'
                 '  rebalance {\n    min_savings_percent = 30\n    min_duration = "2s"\n  }')
        config = workload(name, tmp_path / "health", requirements="allow_unknown_interruption_rate = true", extra=extra)
        config = config.replace('HEALTH_STATUS_FILE', 'SAVE_EVERY_COUNT = "1", HEALTH_STATUS_FILE')
        # What a move leaves as it was: the plan after it has nothing to show.
        config = config.split('output "web"')[0] + (
            'output "web" {\n  value = { id = computearbitrage_workload.web.id, endpoint = computearbitrage_workload.web.endpoint,'
            ' access_token = computearbitrage_workload.web.access_token, rebalance = computearbitrage_workload.web.rebalance }\n'
            '  sensitive = true\n}\n')
        ws.write(config)
        ws.apply()
        web = ws.outputs()["web"]
        assert web["rebalance"] == [{"min_savings_percent": 30, "min_duration": "2s"}], web
        before = service.cli("workload", "get", web["id"])
        assert before["cloud"] == "aws" and before["spec"]["rebalance"] == {"min_savings_percent": 30.0, "min_duration_seconds": 2}, before
        assert ws.plan_is_noop()
        count_url = web["endpoint"] + "count"
        for _ in range(3):
            http_get(count_url, web["access_token"])

        write_two_offer_prices(prices, 0.05, 0.02)
        deadline = time.monotonic() + 60
        statuses = set()
        while True:
            now = service.cli("workload", "get", web["id"])
            statuses.add(now["status"])
            if now["cloud"] == "gcp":
                break
            assert time.monotonic() < deadline, f"not moved: {now['status']} ({now['status_reason']})"
            time.sleep(0.2)
        assert statuses == {"RUNNING"}, statuses
        assert now["endpoint"] == web["endpoint"] and now["instance_id"] != before["instance_id"]
        state = json.loads(http_get(web["endpoint"] + "state", web["access_token"]))
        assert (state["count"], state["restored"]) == (3, True), state
        assert ws.plan_is_noop(), ws.run("plan", check=False).stdout
        ws.run("apply", "-refresh-only", "-auto-approve")
        assert ws.outputs()["web"] == web
        shown = ws.run("state", "show", "computearbitrage_workload.web").stdout
        assert now["instance_id"] in shown and '"n2-standard-2"' in shown and "0.02" in shown, shown
        ws.run("destroy", "-auto-approve")
    finally:
        service.stop()


def test_an_env_change_is_a_rolling_replacement_that_apply_waits_for(workload_service, workload_for_service, terraform, tmp_path):
    """An env change plans an in-place update with a warning that says what it does;
    the apply returns once the replacement serves the new env behind the same endpoint,
    and the next plan is a no-op."""
    name = unique("rolling", terraform)
    ws = workload_for_service(workload_service)
    config = workload(name, tmp_path / "health").split('output "web"')[0]
    config += ('output "web" {\n  value = { id = computearbitrage_workload.web.id, endpoint = computearbitrage_workload.web.endpoint,'
               ' access_token = computearbitrage_workload.web.access_token }\n  sensitive = true\n}\n')
    ws.write(config)
    ws.apply()
    web = ws.outputs()["web"]
    before = workload_service.cli("workload", "get", web["id"])
    assert before["env_applied"] is True, before
    ws.write(config.replace(f'WORKLOAD_NAME = "{name}"', f'WORKLOAD_NAME = "{name}-v2"'))
    plan = ws.run("plan").stdout
    text = " ".join(plan.split())
    assert "1 to change" in text and "forces replacement" not in text, text
    assert "Changing env replaces the workload's instance" in text and "rolling replacement behind the same endpoint" in text, text
    ws.apply()
    # Returned once the replacement serves: no waiting here.
    now = workload_service.cli("workload", "get", web["id"])
    assert (now["status"], now["env_applied"]) == ("RUNNING", True), now
    assert now["instance_id"] != before["instance_id"]
    body = json.loads(http_get(web["endpoint"], web["access_token"]))
    assert body["workload"] == f"{name}-v2", body
    assert ws.outputs()["web"] == web
    assert ws.plan_is_noop(), ws.run("plan", check=False).stdout
    ws.run("destroy", "-auto-approve")
