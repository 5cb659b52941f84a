"""computearbitrage_spot_prices under real Terraform, checked against model.py."""

import pytest

import model
from conftest import BUNDLED_PRICES, FIXTURE_PRICES

FIXTURE = model.load(FIXTURE_PRICES)
BUNDLED = model.load(BUNDLED_PRICES)


def hcl_list(values):
    return "[" + ", ".join(f'"{v}"' for v in values) + "]"


def test_fixture_listing_is_sorted_with_tie_break_and_every_field(fixture_service, workspace_for):
    ws = workspace_for(fixture_service)
    ws.write(
        """
data "computearbitrage_spot_prices" "all" {}
output "offers" { value = data.computearbitrage_spot_prices.all.offers }
"""
    )
    ws.apply()
    offers = ws.outputs()["offers"]
    # Hand-checked: 16 rows with a spot price; three tie at $0.055 and sort aws, azure, gcp.
    assert len(offers) == 16
    assert [o["instance_type"] for o in offers[:3]] == ["f1-micro", "e2-small", "Standard_D2ps_v5"]
    tie = [(o["cloud"], o["instance_type"]) for o in offers if o["spot_price"] == 0.055]
    assert tie == [("aws", "m5.xlarge"), ("azure", "Standard_D4s_v5"), ("gcp", "n2-standard-4")]
    assert offers == [model.as_output(o) for o in FIXTURE]
    azure_no_on_demand = next(o for o in offers if o["instance_type"] == "Standard_D2s_v5")
    assert azure_no_on_demand["on_demand_price"] is None
    assert all(o["observed_at"] in ("2026-10-01T00:00:00Z", "2026-09-15T12:00:00Z", "2026-08-01T00:00:00Z") for o in offers)
    assert ws.plan_is_noop(), "a second plan must be a no-op"


@pytest.mark.parametrize(
    "hcl, filters",
    [
        ('clouds = ["gcp"]', {"clouds": ["gcp"]}),
        ('providers = ["gcp"]', {"clouds": ["gcp"]}),
        ('gpu_name = "a100"', {"gpu_name": "a100"}),
        ('gpu_name = "nvidia-tesla-a100"\n min_gpus = 2', {"gpu_name": "nvidia-tesla-a100", "min_gpus": 2}),
        ("min_vcpus = 4\n min_memory_gib = 16\n max_spot_price = 0.2", {"min_vcpus": 4, "min_memory_gib": 16, "max_spot_price": 0.2}),
        ('regions = ["us-east-1", "eastus"]\n limit = 3', {"regions": ["us-east-1", "eastus"], "limit": 3}),
        ('instance_types = ["m5.large", "e2-small"]', {"instance_types": ["m5.large", "e2-small"]}),
    ],
    ids=["clouds", "deprecated-providers", "gpu-canonical", "gpu-original-min-gpus", "size-and-price", "regions-limit", "instance-types"],
)
def test_fixture_filters_match_the_model(fixture_service, workspace_for, hcl, filters):
    ws = workspace_for(fixture_service)
    ws.write(
        f"""
data "computearbitrage_spot_prices" "x" {{
 {hcl}
}}
output "offers" {{ value = data.computearbitrage_spot_prices.x.offers }}
"""
    )
    ws.apply()
    got = ws.outputs()["offers"]
    want = [model.as_output(o) for o in model.listing(FIXTURE, **filters)]
    assert got == want
    assert got, "each case is chosen to match something"


def test_gpu_names_map_across_clouds_on_the_full_snapshot(full_service, workspace_for):
    ws = workspace_for(full_service)
    ws.write(
        """
data "computearbitrage_spot_prices" "a100" {
  gpu_name = "A100"
  limit    = 500
}
data "computearbitrage_spot_prices" "l4" {
  gpu_name = "nvidia-l4"
}
output "a100" { value = data.computearbitrage_spot_prices.a100.offers }
output "l4" { value = data.computearbitrage_spot_prices.l4.offers }
"""
    )
    ws.apply()
    out = ws.outputs()
    assert out["a100"] == [model.as_output(o) for o in model.listing(BUNDLED, limit=500, gpu_name="A100")]
    assert {o["cloud"] for o in out["a100"]} == {"azure", "gcp"}
    assert all(o["gpu_name"] == "A100" for o in out["a100"])
    assert out["l4"] == [model.as_output(o) for o in model.listing(BUNDLED, gpu_name="nvidia-l4")]
    assert all(o["gpu_name"] == "L4" for o in out["l4"])


def test_limits_beyond_one_page_are_paged_in_order(full_service, workspace_for):
    ws = workspace_for(full_service)
    ws.write(
        """
data "computearbitrage_spot_prices" "many" {
  min_vcpus = 4
  limit     = 2500
}
output "offers" { value = data.computearbitrage_spot_prices.many.offers }
"""
    )
    ws.apply()
    got = ws.outputs()["offers"]
    want = model.listing(BUNDLED, limit=2500, min_vcpus=4)
    assert len(got) == 2500
    assert got == [model.as_output(o) for o in want]
