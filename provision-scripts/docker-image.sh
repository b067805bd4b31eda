#!/bin/sh
# Builds the Docker image of the context's Dockerfile and saves it to $RUNNER_OUT as
# hello-image.tar. Starts dockerd itself when no init system runs it; any distro whose
# image has Docker installed. Inputs: IMAGE (tag), RUNNER_OUT, SOURCE_DATE_EPOCH.
set -eu
if ! docker info >/dev/null 2>&1; then
  if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
    systemctl start docker
  else
    # Its output goes to a file, so the daemon does not hold the script's output open.
    dockerd >/var/log/dockerd.log 2>&1 &
  fi
  i=0
  until docker info >/dev/null 2>&1; do
    i=$((i + 1))
    if [ "$i" -gt 120 ]; then
      echo "dockerd did not start:"; tail -n 20 /var/log/dockerd.log; exit 1
    fi
    sleep 1
  done
fi
docker version --format 'docker {{.Server.Version}}'
# The image's only file; a Dockerfile that needs more copies it from the context.
[ -e busybox ] || cp "$(command -v busybox)" busybox
docker build -t "$IMAGE" .
docker run --rm "$IMAGE"
docker save "$IMAGE" -o "$RUNNER_OUT/hello-image.tar"
ls -l "$RUNNER_OUT"
