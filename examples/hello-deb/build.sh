#!/bin/sh
# GNU hello's Debian package from the Debian source archive: deb-src enabled, build-deps
# installed, `apt-get source`, `dpkg-buildpackage -b` with ccache in front of the compiler,
# hello_*.deb into $RUNNER_OUT. The same steps with or without runner's build caches: what the
# caches keep (apt's downloaded .debs and lists, ccache's objects) only makes them faster.
set -eu
export DEBIAN_FRONTEND=noninteractive
# Downloaded .debs stay in /var/cache/apt/archives (a cached path) instead of being deleted
# after installation; this script never runs `apt-get clean`.
apt="apt-get -y -q -o APT::Keep-Downloaded-Packages=true"
# The same path every build: it ends up in the package's debug info and in ccache's hashes,
# so a fixed one keeps the .deb bit-identical and lets ccache hit.
work=/srv/hello
start=$(date +%s)
phase() { echo "== [$(($(date +%s) - start))s] $*"; }

# An image that deletes the archives after each install (docker-clean and the like) would
# leave nothing to cache: say so rather than silently caching nothing.
if apt-config dump | grep -i 'Invoke' | grep -q 'archives'; then
  echo "apt is configured to delete downloaded packages:" >&2
  apt-config dump | grep -i 'Invoke' >&2
  exit 1
fi

phase "deb-src from the image's own deb lines"
# Derived at run time, so whatever mirror the image points at serves the sources too.
list=/etc/apt/sources.list.d/runner-deb-src.list
for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
  [ -f "$f" ] && [ "$f" != "$list" ] || continue
  sed -n 's/^[[:space:]]*deb\([[:space:]]\)/deb-src\1/p' "$f"
done > "$list.new"
mv "$list.new" "$list"
for f in /etc/apt/sources.list.d/*.sources; do
  [ -f "$f" ] || continue
  sed -i 's/^Types:[[:space:]]*deb[[:space:]]*$/Types: deb deb-src/' "$f"
done
if [ ! -s "$list" ] && ! grep -qs '^Types:.*deb-src' /etc/apt/sources.list.d/*.sources; then
  echo "no deb line in the image's apt sources to derive deb-src from" >&2
  exit 1
fi
cat "$list"

phase "apt-get update"
$apt update
phase "install ccache dpkg-dev and hello's build-deps"
$apt install --no-install-recommends ccache dpkg-dev
$apt build-dep hello

phase "apt-get source hello into $work"
rm -rf "$work"
mkdir -p "$work"
cd "$work"
$apt source hello

phase "dpkg-buildpackage"
export PATH="/usr/lib/ccache:$PATH" CCACHE_DIR=/root/.cache/ccache
# Zeroed first, so the statistics printed after the build are this build's alone.
ccache -z
built=$(date +%s)
(cd hello-*/ && dpkg-buildpackage -b -uc -us)
# Its output carries no timestamps: when each step ended, in seconds since it started, read
# from the mtime of what the step leaves behind.
set -- autoreconf hello-*/Makefile.in configure hello-*/config.status make hello-*/hello \
  "make check" hello-*/test-suite.log packaging hello_*.deb
while [ $# -ge 2 ]; do
  if [ -e "$2" ]; then echo "  +$(($(stat -c %Y "$2") - built))s $1 ($2)"; fi
  shift 2
done
phase "ccache statistics of this build"
ccache -s
du -sh /var/cache/apt/archives /var/lib/apt/lists /root/.cache/ccache

cp "$work"/hello_*.deb "$RUNNER_OUT/"
sha256sum "$RUNNER_OUT"/hello_*.deb
phase "done"
