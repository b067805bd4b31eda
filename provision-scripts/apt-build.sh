#!/bin/sh
# Installs $APT_PACKAGES from the guest's Debian mirror, then runs the context's ./build.sh.
# Reusable by any project that keeps its build steps in build.sh.
set -eu
export DEBIAN_FRONTEND=noninteractive
if [ -n "${APT_PACKAGES:-}" ]; then
  echo "installing: $APT_PACKAGES"
  apt-get update -qq
  # shellcheck disable=SC2086 # a list of package names
  apt-get install -y -qq --no-install-recommends $APT_PACKAGES >/dev/null
fi
exec ./build.sh
