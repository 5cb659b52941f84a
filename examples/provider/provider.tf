terraform {
  required_providers {
    computearbitrage = {
      source  = "computearbitrage/computearbitrage"
      version = "~> 0.1"
    }
  }
}

# `endpoint`, `token` and `ca_file` fall back to COMPUTEARBITRAGE_ENDPOINT,
# COMPUTEARBITRAGE_TOKEN and COMPUTEARBITRAGE_CA_FILE; `computearbitrage serve`
# prints the first two when it starts.
provider "computearbitrage" {}
