#!/bin/sh
# Normalises the package inventory with jq (installed in the guest by apt-build.sh).
set -eu
jq -S . packages.json > "$RUNNER_OUT/inventory.json"
jq -r '.packages[] | "\(.name)\t\(.version)"' packages.json | sort > "$RUNNER_OUT/versions.tsv"
