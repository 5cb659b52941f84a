# A small web server on the cheapest spot capacity with at least 2 vCPUs and 4 GiB, on
# any cloud. On embedded defaults the local driver runs the command as a local process
# with PORT set. `endpoint` is its stable address on the router, which stays the same
# when the workload moves; requests need `access_token` (or the tenant's token).
resource "computearbitrage_workload" "web" {
  name    = "hello-web"
  command = ["sh", "-c", "exec python3 -m http.server \"$PORT\" --bind 0.0.0.0"]

  requirements {
    min_vcpus             = 2
    min_memory_gib        = 4
    max_interruption_rate = 10
  }

  health_check {
    path             = "/"
    interval_seconds = 10
    timeout_seconds  = 2
  }

  on_interruption = "migrate"
  tags            = { team = "platform" }

  timeouts {
    create = "5m"
  }
}

output "web" {
  value = {
    endpoint = computearbitrage_workload.web.endpoint
    where    = "${computearbitrage_workload.web.cloud}/${computearbitrage_workload.web.region}/${computearbitrage_workload.web.instance_type}"
    price    = computearbitrage_workload.web.price_per_hour
    status   = computearbitrage_workload.web.status
  }
}

# curl -H "Authorization: Bearer $(terraform output -raw web_token)" <endpoint>
output "web_token" {
  value     = computearbitrage_workload.web.access_token
  sensitive = true
}
