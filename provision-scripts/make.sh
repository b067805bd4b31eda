#!/bin/sh
# Builds the context with `make` and puts the program and a build description in
# $RUNNER_OUT. Reusable by any project whose context has a Makefile with a default target,
# on any distribution (examples/distros runs it on six).
# Inputs: RUNNER_TARGET, RUNNER_OUT, SOURCE_DATE_EPOCH (set by runner), CFLAGS (optional).
set -eu
echo "building $RUNNER_TARGET with $(cc --version | head -n1)"
make CFLAGS="${CFLAGS:--O2}"
cp hello "$RUNNER_OUT/"
{
  echo "target: $RUNNER_TARGET"
  echo "compiler: $(cc --version | head -n1)"
  echo "machine: $(uname -m)"
  echo "os: $(. /etc/os-release && echo "$PRETTY_NAME")"
} > "$RUNNER_OUT/build-info.txt"
echo "done"
