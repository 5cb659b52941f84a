terraform {
  required_providers {
    computearbitrage = {
      source = "computearbitrage/computearbitrage"
    }
  }
}

# `endpoint` and `token` fall back to COMPUTEARBITRAGE_ENDPOINT and
# COMPUTEARBITRAGE_TOKEN, which `computearbitrage serve` prints when it starts.
provider "computearbitrage" {}
