"""Every example the docs use is applied against the service on the bundled snapshot."""

import json
import pathlib
import urllib.request

import pytest

from conftest import REPO

EXAMPLES = REPO / "examples"
DATA_SOURCE_EXAMPLES = sorted((EXAMPLES / "data-sources").glob("*/data-source.tf"))
RESOURCE_EXAMPLES = sorted((EXAMPLES / "resources").glob("*/resource.tf"))
WORKLOAD_EXAMPLES = sorted((EXAMPLES / "workloads").glob("*/main.tf"))


def test_every_documented_example_exists():
    names = {p.parent.name for p in DATA_SOURCE_EXAMPLES}
    assert names == {"computearbitrage_spot_prices", "computearbitrage_placement"}
    for name in names:
        doc = (REPO / "docs" / "data-sources" / f"{name.removeprefix('computearbitrage_')}.md").read_text()
        assert (EXAMPLES / "data-sources" / name / "data-source.tf").read_text().strip() in doc
    assert [p.parent.name for p in RESOURCE_EXAMPLES] == ["computearbitrage_workload"]
    doc = (REPO / "docs" / "resources" / "workload.md").read_text()
    assert RESOURCE_EXAMPLES[0].read_text().strip() in doc
    assert (EXAMPLES / "resources" / "computearbitrage_workload" / "import.sh").read_text().strip() in doc
    assert sorted(p.parent.name for p in WORKLOAD_EXAMPLES) == ["placement-fed", "tcp"]
    for example in WORKLOAD_EXAMPLES:
        assert f"examples/workloads/{example.parent.name}/main.tf" in doc
    # Every example pins the provider to a version, as a user's configuration should.
    assert 'version = "~> 0.1"' in (EXAMPLES / "provider" / "provider.tf").read_text()


def test_the_import_example_imports(workload_service, workload_for_service):
    """import.sh's command, with a real id, imports into a clean plan."""
    creator = workload_for_service(workload_service)
    creator.copy_in(EXAMPLES / "provider" / "provider.tf", "provider.tf")
    creator.copy_in(RESOURCE_EXAMPLES[0], "main.tf")
    creator.apply()
    created = json.loads(creator.run("show", "-json").stdout)["values"]["root_module"]["resources"][0]["values"]["id"]
    importer = workload_for_service(workload_service, directory=creator.dir.parent / "importer")
    importer.copy_in(EXAMPLES / "provider" / "provider.tf", "provider.tf")
    (importer.dir / "main.tf").write_text(RESOURCE_EXAMPLES[0].read_text().split('output "web"')[0])
    command = next(line for line in (EXAMPLES / "resources" / "computearbitrage_workload" / "import.sh").read_text().splitlines() if line.startswith("terraform import"))
    args = command.split()[1:-1] + [created]
    importer.run(*args)
    assert importer.plan_is_noop()
    importer.run("destroy", "-auto-approve")


@pytest.mark.parametrize("example", DATA_SOURCE_EXAMPLES, ids=lambda p: p.parent.name)
def test_example_applies(full_service, workspace_for, example):
    ws = workspace_for(full_service)
    ws.copy_in(EXAMPLES / "provider" / "provider.tf", "provider.tf")
    ws.copy_in(example, "main.tf")
    ws.apply()
    outputs = ws.outputs()
    assert outputs, "each example exposes its result as outputs"
    assert "${" not in json.dumps(outputs), "every template in the example must render"
    assert ws.plan_is_noop()


@pytest.mark.parametrize("example", RESOURCE_EXAMPLES, ids=lambda p: p.parent.name)
def test_resource_example_applies_answers_and_destroys(isolated_service, workload_for_service, example):
    ws = workload_for_service(isolated_service)
    ws.copy_in(EXAMPLES / "provider" / "provider.tf", "provider.tf")
    ws.copy_in(example, "main.tf")
    ws.apply()
    outputs = ws.outputs()
    web = outputs["web"]
    assert web["status"] == "RUNNING"
    # Through the router, with the token the example exposes (as a sensitive output).
    request = urllib.request.Request(web["endpoint"], headers={"Authorization": f"Bearer {outputs['web_token']}"})
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.status == 200
    assert ws.plan_is_noop()
    ws.run("destroy", "-auto-approve")


@pytest.mark.parametrize("example", WORKLOAD_EXAMPLES, ids=lambda p: p.parent.name)
def test_workload_examples_apply_answer_and_destroy(isolated_service, workload_for_service, example):
    import socket

    ws = workload_for_service(isolated_service)
    ws.copy_in(EXAMPLES / "provider" / "provider.tf", "provider.tf")
    ws.copy_in(example, "main.tf")
    ws.apply()
    outputs = ws.outputs()
    assert "${" not in json.dumps(outputs)
    if "tcp_endpoint" in outputs:
        host, port = outputs["tcp_endpoint"].rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=5) as connection:
            connection.sendall(b"ping")
            assert connection.recv(100) == b"ping"
    else:
        assert "placed-web" not in outputs["running_on"] and "USD/h" in outputs["running_on"]
    assert ws.plan_is_noop()
    ws.run("destroy", "-auto-approve")
