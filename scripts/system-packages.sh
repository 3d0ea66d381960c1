#!/usr/bin/env bash
# The system packages Ferry's tests need, installed when missing (npm test runs this first; .ci/run
# too). As root it installs them with apt-get; otherwise it stops and prints the one command to run.
#   qemu-img and qemu-io (qemu-utils): the reference the VMDK code is checked against.
#   initdb and pg_ctl (postgresql): the center store's tests start a throwaway PostgreSQL cluster
#   (test/helpers/postgres.ts); Debian keeps them in /usr/lib/postgresql/<version>/bin, off PATH.
#   ip and ss (iproute2): the data-plane tests build network namespaces, VXLAN links and routes, and read
#   sockets (test/helpers/netns.ts); those tests need root, as .ci/run has.
#   chromium: the web UI's browser tests (test/web/) drive Debian's Chromium with playwright-core
#   (never a downloaded browser); they expect it at /usr/bin/chromium.
set -euo pipefail
need=()
{ command -v qemu-img && command -v qemu-io; } >/dev/null 2>&1 || need+=(qemu-utils)
{ command -v ip && command -v ss; } >/dev/null 2>&1 || need+=(iproute2)
has_postgres_server() {
  local d
  for d in /usr/lib/postgresql/*/bin; do
    [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ] && return 0
  done
  return 1
}
has_postgres_server || need+=(postgresql)
[ -x /usr/bin/chromium ] || need+=(chromium)
if [ ${#need[@]} -eq 0 ]; then exit 0; fi
if [ "$(id -u)" -ne 0 ]; then
  echo "ferry: the tests need these system packages: ${need[*]}" >&2
  echo "ferry: install them with:  sudo apt-get update && sudo apt-get install -y ${need[*]}" >&2
  exit 1
fi
echo "ferry: installing system packages for the tests: ${need[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >&2
apt-get install -y -qq --no-install-recommends "${need[@]}" >&2
# A browser that installed but cannot start (a missing library) fails here, not in the middle of a test.
if [[ " ${need[*]} " == *" chromium "* ]]; then
  /usr/bin/chromium --version >&2 || { echo "ferry: /usr/bin/chromium was installed but does not start" >&2; exit 1; }
fi
