#!/usr/bin/env bash
# Installs the system packages stackbook's tests need, only where they are missing.
# PostgreSQL binaries are optional: without them stackbook uses the pgserver wheel's bundled ones.
set -euo pipefail
missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)  # promtool: the tests check the alerting rules
if [ ${#missing[@]} -eq 0 ]; then exit 0; fi
if [ "$(id -u)" -ne 0 ]; then
  echo "system-deps: missing ${missing[*]}; install them with: sudo apt-get install ${missing[*]}" >&2
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "system-deps: missing ${missing[*]} and no apt-get here; install them with your package manager" >&2
  exit 0
fi
echo "system-deps: installing ${missing[*]}" >&2
apt-get -o DPkg::Lock::Timeout=600 update -qq
DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
