# The five cheapest spot offers with an NVIDIA A100, on any cloud.
data "computearbitrage_spot_prices" "a100" {
  gpu_name = "A100"
  limit    = 5
}

output "cheapest_a100" {
  value = [
    for o in data.computearbitrage_spot_prices.a100.offers :
    "${o.cloud} ${o.instance_type} (${o.gpu_count}x${o.gpu_name}) in ${o.region}: ${o.spot_price} USD/h, observed ${o.observed_at} by ${o.source}, interruption rate ${o.interruption_rate}"
  ]
}
