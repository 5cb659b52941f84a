# Look before you leap: the placement data source shows in the plan where a workload
# would run and what it would cost; the workload then asks for the same requirements.
#
# Feed the data source's *inputs* to the workload, not its outputs: copying
# `cloud`/`region` into `requirements` pins the workload to today's cheapest offer and
# forces a replacement at every price move. Shared requirements let the service place
# (and later move) the workload itself, and the plan stays clean.
locals {
  needs = {
    min_vcpus             = 2
    min_memory_gib        = 4
    max_interruption_rate = 10
  }
}

data "computearbitrage_placement" "web" {
  requirements {
    min_vcpus             = local.needs.min_vcpus
    min_memory_gib        = local.needs.min_memory_gib
    max_interruption_rate = local.needs.max_interruption_rate
  }
}

resource "computearbitrage_workload" "web" {
  name    = "placed-web"
  command = ["sh", "-c", "exec python3 -m http.server \"$PORT\" --bind 0.0.0.0"]

  requirements {
    min_vcpus             = local.needs.min_vcpus
    min_memory_gib        = local.needs.min_memory_gib
    max_interruption_rate = local.needs.max_interruption_rate
    # A budget is a constant too: a price taken from the data source would move.
    max_price_per_hour = 0.5
  }

  health_check {
    path = "/"
  }
}

output "planned_offer" {
  value = "${data.computearbitrage_placement.web.cloud}/${data.computearbitrage_placement.web.instance_type} at ${data.computearbitrage_placement.web.spot_price} USD/h: ${data.computearbitrage_placement.web.reason}"
}

output "running_on" {
  value = "${computearbitrage_workload.web.cloud}/${computearbitrage_workload.web.instance_type} at ${computearbitrage_workload.web.price_per_hour} USD/h"
}
