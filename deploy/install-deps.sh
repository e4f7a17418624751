#!/usr/bin/env bash
# Install every Debian 12 package ctrps needs to build, test and run.
# Idempotent: apt-get install of packages already present changes nothing.
set -euo pipefail

PACKAGES=(
  gcc clang pkg-config meson ninja-build python3 procps
  protobuf-c-compiler libprotobuf-c-dev
  libuv1-dev librocksdb-dev libcriterion-dev
  libopenblas0-openmp libopenblas-openmp-dev
  libxxhash-dev libinih-dev libmicrohttpd-dev libsodium-dev
  libclang-rt-14-dev
  librdkafka-dev  # the worker's kafka:// input
  # tests/deploy: systemd-analyze and systemd-sysusers (systemd units), the
  # Kubernetes API types and YAML for Debian's python3 (manifests); podman,
  # run as root, with runc (crun refuses hybrid cgroup hierarchies), and
  # mmdebstrap for a base image made of Debian packages (container image).
  systemd python3-yaml python3-kubernetes
  podman runc mmdebstrap
  protobuf-compiler python3-protobuf python3-numpy python3-xxhash python3-pytest  # clients/python
  gnuplot-nox  # bench/soak.sh's plot
  prometheus  # promtool check metrics, and a real Prometheus scraping a cluster (tests/metrics)
  iproute2 util-linux  # tests/multihost.sh: ip netns, veth pairs, unshare
)

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
# Try without refreshing the package lists first (fast when all is there);
# refresh and retry when something is missing from them.
if ! $SUDO apt-get install -y -q --no-install-recommends "${PACKAGES[@]}" >/tmp/ctrps-apt.log 2>&1; then
  $SUDO apt-get update -q >>/tmp/ctrps-apt.log 2>&1
  $SUDO apt-get install -y -q --no-install-recommends "${PACKAGES[@]}" >>/tmp/ctrps-apt.log 2>&1 || {
    cat /tmp/ctrps-apt.log >&2
    echo "install-deps: apt-get install failed" >&2
    exit 1
  }
fi
echo "install-deps: ${#PACKAGES[@]} Debian packages present" >&2
