# Where would "4 vCPU, 16 GiB, any cloud, at most 10 % interruption risk" run now?
data "computearbitrage_placement" "web" {
  requirements {
    min_vcpus             = 4
    min_memory_gib        = 16
    clouds                = ["aws", "gcp", "azure"]
    max_interruption_rate = 10
    exclude_regions       = ["me-central1"]
  }
  max_alternatives = 3
}

output "placement" {
  value = {
    where           = "${data.computearbitrage_placement.web.cloud}/${data.computearbitrage_placement.web.region}/${data.computearbitrage_placement.web.instance_type}"
    spot_price      = data.computearbitrage_placement.web.spot_price
    savings_percent = data.computearbitrage_placement.web.savings_percent
    reason          = data.computearbitrage_placement.web.reason
    runners_up      = [for a in data.computearbitrage_placement.web.alternatives : "${a.cloud}/${a.region}/${a.instance_type} at ${a.spot_price} USD/h"]
  }
}
