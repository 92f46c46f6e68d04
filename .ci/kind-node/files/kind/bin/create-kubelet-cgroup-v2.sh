#!/usr/bin/env bash
# cgroup v2: enable every controller for the kubelet's cgroups (/kubelet, /kubelet.slice).
set -o errexit -o nounset -o pipefail
enable() { sed -e 's/ / +/g' -e 's/^/+/' <"/sys/fs/cgroup/$1/cgroup.controllers" >"/sys/fs/cgroup/$1/cgroup.subtree_control"; }
enable /
mkdir -p /sys/fs/cgroup/kubelet /sys/fs/cgroup/kubelet.slice
enable /kubelet
enable /kubelet.slice
