"""Bad input and broken connections give diagnostics that name the attribute and the fix."""

import re

from conftest import TOKEN, free_port


def plan_fails(ws, config):
    ws.write(config)
    result = ws.run("plan", check=False)
    assert result.returncode == 1, result.stdout + result.stderr
    text = re.sub(r"\s+", " ", result.stderr + result.stdout)
    assert "stack backtrace" not in text and "backtrace" not in text.lower()
    return text


def test_invalid_values_point_at_their_attribute(fixture_service, workspace_for):
    ws = workspace_for(fixture_service)
    text = plan_fails(
        ws,
        """
data "computearbitrage_placement" "p" {
  requirements {
    min_vcpus = -1
    providers = ["aws", "awz"]
    regions   = [""]
  }
}
""",
    )
    assert "Invalid value for requirements.min_vcpus" in text
    assert "-1 is negative; use 0 or more" in text
    assert "Invalid value for requirements.providers[1]" in text
    assert 'did you mean "aws"?' in text
    assert "Invalid value for requirements.regions[0]" in text
    assert "an empty string is not allowed here" in text
    # Terraform quotes the offending line of the configuration.
    assert 'providers = ["aws", "awz"]' in text


def test_spot_prices_limit_and_gpu_count_are_checked(fixture_service, workspace_for):
    ws = workspace_for(fixture_service)
    text = plan_fails(
        ws,
        """
data "computearbitrage_spot_prices" "x" {
  limit    = 0
  min_gpus = -3
  providers = ["GCP"]
}
""",
    )
    assert "Invalid value for limit" in text and "outside 1..=10000" in text
    assert "Invalid value for min_gpus" in text
    assert "Invalid value for providers[0]" in text and "lower case" in text


def test_nothing_matches_explains_constraint_and_nearest_miss(fixture_service, workspace_for):
    ws = workspace_for(fixture_service)
    text = plan_fails(
        ws,
        """
data "computearbitrage_placement" "p" {
  requirements {
    min_memory_gib = 2048
  }
}
""",
    )
    assert "No spot offer matches the requirements" in text
    assert "min_memory_gib = 2048 excluded all 16 offers; the largest is 961 GiB" in text


def test_nothing_matches_on_the_full_snapshot(full_service, workspace_for):
    ws = workspace_for(full_service)
    text = plan_fails(
        ws,
        """
data "computearbitrage_placement" "p" {
  requirements {
    min_memory_gib = 20000
    providers      = ["aws"]
  }
}
""",
    )
    assert "min_memory_gib = 20000 excluded all 9,820 offers; the largest is 11,776 GiB" in text
    assert "Nearest miss: without min_memory_gib" in text


def test_unreachable_service_names_the_endpoint_and_how_to_start_it(workspace_for):
    endpoint = f"http://127.0.0.1:{free_port()}"
    ws = workspace_for(None, endpoint=endpoint)
    text = plan_fails(ws, 'data "computearbitrage_spot_prices" "x" {}\n')
    assert f"Cannot reach the computearbitrage service at {endpoint}" in text
    assert "computearbitrage serve" in text


def test_rejected_token_is_not_echoed(fixture_service, workspace_for):
    wrong = "wrong-token-that-must-not-appear-anywhere"
    ws = workspace_for(fixture_service, token=wrong)
    text = plan_fails(ws, 'data "computearbitrage_spot_prices" "x" {}\n')
    assert "rejected the token" in text
    assert wrong not in text
    assert TOKEN not in text


def test_missing_token_says_where_to_get_one(fixture_service, workspace_for):
    ws = workspace_for(fixture_service, token=None)
    text = plan_fails(ws, 'data "computearbitrage_spot_prices" "x" {}\n')
    assert "No API token for the computearbitrage service" in text
    assert "COMPUTEARBITRAGE_TOKEN" in text and "admin-token" in text


def test_fractional_counts_are_rejected_and_fractional_limits_accepted(fixture_service, workspace_for):
    ws = workspace_for(fixture_service)
    text = plan_fails(
        ws,
        """
data "computearbitrage_placement" "p" {
  requirements {
    min_memory_gib     = 0.6
    max_price_per_hour = 0.0035
    min_gpus           = 1.5
  }
  max_alternatives = 2.5
}
""",
    )
    assert "Invalid value for requirements.min_gpus" in text and "1.5 is not a whole number" in text
    assert "Invalid value for max_alternatives" in text and "2.5 is not a whole number" in text
    assert "Invalid value for requirements.min_memory_gib" not in text


def test_fractional_numbers_reach_the_service_exactly(fixture_service, workspace_for):
    ws = workspace_for(fixture_service)
    ws.write(
        """
data "computearbitrage_placement" "p" {
  requirements {
    min_memory_gib     = 0.6
    max_price_per_hour = 0.0035
  }
}
output "p" { value = data.computearbitrage_placement.p.instance_type }
"""
    )
    ws.apply()
    assert ws.outputs()["p"] == "f1-micro"
    assert ws.plan_is_noop()
