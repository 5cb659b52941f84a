"""Every example the docs use is applied against the service on the bundled snapshot."""

import json
import pathlib
import urllib.request

import pytest

from conftest import REPO

EXAMPLES = REPO / "examples"
DATA_SOURCE_EXAMPLES = sorted((EXAMPLES / "data-sources").glob("*/data-source.tf"))
RESOURCE_EXAMPLES = sorted((EXAMPLES / "resources").glob("*/resource.tf"))


def test_every_documented_example_exists():
    names = {p.parent.name for p in DATA_SOURCE_EXAMPLES}
    assert names == {"computearbitrage_spot_prices", "computearbitrage_placement"}
    for name in names:
        doc = (REPO / "docs" / "data-sources" / f"{name.removeprefix('computearbitrage_')}.md").read_text()
        assert (EXAMPLES / "data-sources" / name / "data-source.tf").read_text().strip() in doc
    assert [p.parent.name for p in RESOURCE_EXAMPLES] == ["computearbitrage_workload"]
    doc = (REPO / "docs" / "resources" / "workload.md").read_text()
    assert RESOURCE_EXAMPLES[0].read_text().strip() in doc


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
def test_resource_example_applies_answers_and_destroys(workload_service, workload_for_service, example):
    ws = workload_for_service(workload_service)
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
