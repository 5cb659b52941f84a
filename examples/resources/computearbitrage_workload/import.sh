# A workload the service already runs (created by another configuration, by the API,
# or found by a create that was told to import it) is imported by its id, `wl-…`:
terraform import computearbitrage_workload.web wl-0123456789abcdef0123
# `computearbitrage workload get <id>` shows its spec, to write the configuration from.
# Whichever accepted spelling the configuration uses (`amd64` or `x86_64`, a GPU's
# cloud name or its canonical one), the next `terraform plan` is a no-op.
