#!/bin/sh
# The hello-c build on a stock Debian AMI: install the compiler, then build as make.sh does.
set -eu
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends gcc make libc6-dev >/dev/null
make CFLAGS="${CFLAGS:--O2}"
cp hello "$RUNNER_OUT/"
