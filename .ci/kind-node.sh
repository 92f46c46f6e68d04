#!/usr/bin/env bash
# Builds, offline from registry packages, the kind node image CI runs the main job on: it stands
# for kind v0.32.0's default node `kindest/node:v1.36.1`, which cannot be pulled here.
#
#   eval "$(bash .ci/kind-node.sh)"   # exports IRIS_NODE_IMAGE, IRIS_METRICS_SERVER_IMAGE, IRIS_KIND
#
# Logs go to stderr; stdout is only `export` lines.
#
# Also builds, as local Docker images, kind v0.32.0 (into $CACHE/bin/kind) and metrics-server
# v0.8.0 (the harness loads it into the nodes: `--metrics-server-image`). Every component is
# built from its Go module (the Go module proxy) or taken from Debian's packages, by name and
# version; nothing is downloaded from anywhere else, and nothing of kind's sources is copied:
# the files under .ci/kind-node/ are this project's own, written from reading kind's.
#
# Cached by a key of every version and input (this script and .ci/kind-node/): a second run with
# the same key only checks that the images are there. Binaries are cached by module and version
# in $CACHE/bin/<module>@<version>/, the Debian root file system by suite.
# Set IRIS_NODE_CACHE to move the cache (default ~/.cache/iris-serve/kind-node).
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# What the node is made of. Where kind's own choice is not served here, the nearest real
# component is taken and the substitution recorded (printed with the versions).
K8S=1.36.1                 # kind v0.32.0's default node: v1.36.1
ETCD=3.6.8                 # kubeadm 1.36.1's DefaultEtcdVersion 3.6.8-0
COREDNS=1.14.2             # kubeadm 1.36.1's CoreDNSVersion
PAUSE=3.10.2               # kubeadm 1.36.1's PauseVersion; built from the kubernetes module's build/pause
CNI_PLUGINS=1.9.1          # kind v0.32.0's base image: host-local, loopback, ptp, portmap (+ bridge for flannel)
CNI_FLANNEL_PLUGINS=0.9.1  # the last containernetworking/plugins with the `flannel` meta plugin
FLANNEL=0.28.10            # substitute for kindnetd (sigs.k8s.io/kind/images/kindnetd is not served)
CRICTL=1.36.0              # kind v0.32.0's base image
KIND=0.32.0                # the harness's pinned kind
METRICS_SERVER=0.8.0       # v0.9.0 is served but not an approved release
DEBIAN_SUITE=trixie        # kind v0.32.0's base is debian:trixie-slim
# containerd: Debian unstable's 2.1.x (.ci/engine.sh fetches it) for kind's 2.3.1; runc: Debian
# trixie's package for kind's 1.4.2 (a static runc needs cgo and libseccomp-dev at build time).

NODE_REPO=iris-kind/node
CACHE="${IRIS_NODE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/iris-serve/kind-node}"
export GOFLAGS="-mod=mod -trimpath"
export CGO_ENABLED=0

key=$( {
    cat .ci/kind-node.sh
    find .ci/kind-node -type f | LC_ALL=C sort | xargs sha256sum
    go version
} | sha256sum | cut -c1-12)
NODE_IMAGE="$NODE_REPO:v$K8S-$key"
METRICS_SERVER_IMAGE="registry.k8s.io/metrics-server/metrics-server:v$METRICS_SERVER"
OUT="$CACHE/$key"
mkdir -p "$OUT"
# Binaries are cached by their module and version (not by the key): a change to the node's files
# only reassembles the node.
bin_dir() { printf '%s/bin/%s@%s' "$CACHE" "${1//\//_}" "$2"; }
KIND_BIN="$(bin_dir sigs.k8s.io/kind "v$KIND")/kind"

print_exports() {
    printf 'export IRIS_NODE_IMAGE=%q\n' "$NODE_IMAGE"
    printf 'export IRIS_METRICS_SERVER_IMAGE=%q\n' "$METRICS_SERVER_IMAGE"
    printf 'export IRIS_KIND=%q\n' "$KIND_BIN"
}

have_image() { docker image inspect "$1" >/dev/null 2>&1; }

print_versions() {
    cat >&2 <<EOF
==> node image $NODE_IMAGE (cache key $key), standing for kindest/node:v1.36.1 of kind v0.32.0
    Kubernetes v$K8S            Go module k8s.io/kubernetes@v$K8S (+ staging modules v0.${K8S#1.})
    etcd $ETCD                 Go module go.etcd.io/etcd/server/v3@v$ETCD
    CoreDNS v$COREDNS            Go module github.com/coredns/coredns@v$COREDNS
    pause $PAUSE               C source in k8s.io/kubernetes@v$K8S build/pause, gcc -static
    CNI plugins v$CNI_PLUGINS        Go module github.com/containernetworking/plugins@v$CNI_PLUGINS
    CNI flannel plugin v$CNI_FLANNEL_PLUGINS  Go module github.com/containernetworking/plugins@v$CNI_FLANNEL_PLUGINS
    flannel v$FLANNEL          Go module github.com/flannel-io/flannel@v$FLANNEL  (SUBSTITUTE for kindnetd: not served)
    crictl v$CRICTL             Go module sigs.k8s.io/cri-tools@v$CRICTL
    containerd $(cat "$OUT/containerd.version" 2>/dev/null || echo '(Debian unstable)')  (SUBSTITUTE for kind's 2.3.1)
    runc $(cat "$OUT/runc.version" 2>/dev/null || echo "(Debian $DEBIAN_SUITE)")  (SUBSTITUTE for kind's 1.4.2)
    base Debian $DEBIAN_SUITE      debootstrap --variant=minbase
    local-path-provisioner    not built: kind falls back to its host-path StorageClass (no run uses volumes)
    kind v$KIND               Go module sigs.k8s.io/kind@v$KIND -> $KIND_BIN
    metrics-server v$METRICS_SERVER     Go module sigs.k8s.io/metrics-server@v$METRICS_SERVER -> $METRICS_SERVER_IMAGE
    cgroup: $(stat -fc %T /sys/fs/cgroup) ($( [ -f /sys/fs/cgroup/cgroup.controllers ] && echo v2 || echo 'v1: the node entrypoint gives the kubelet --fail-cgroupv1=false, fixture only') )
EOF
}

if have_image "$NODE_IMAGE" && have_image "$METRICS_SERVER_IMAGE" && [ -x "$KIND_BIN" ]; then
    print_versions
    log "cached: $NODE_IMAGE"
    print_exports
    exit 0
fi
started=$(date +%s)

# ---- Go builds ---------------------------------------------------------------------------------

# A throwaway module that requires `$1@$2` (plus any `replace` lines on stdin), then builds the
# packages named after it into its own folder of the cache. A module's own `replace` lines do not apply when it is a
# dependency, which is why Kubernetes (whose staging modules are replaced by folders) is built so.
go_build() {
    local module="$1" version="$2" ldflags="$3" tags="$4"
    shift 4
    local dir="$CACHE/src/${module//\//_}@$version" out
    out=$(bin_dir "$module" "$version")
    mkdir -p "$out"
    local missing=()
    for pkg in "$@"; do [ -x "$out/$(basename "$pkg")" ] || missing+=("$pkg"); done
    [ ${#missing[@]} -gt 0 ] || return 0
    mkdir -p "$dir"
    { printf 'module iris-serve.local/build\n\ngo 1.26.0\n\nrequire %s %s\n\n' "$module" "$version"; cat; } >"$dir/go.mod"
    for pkg in "${missing[@]}"; do
        local t0=$SECONDS
        (cd "$dir" && go build -tags "$tags" -ldflags "-s -w $ldflags" -o "$out/$(basename "$pkg").partial" "$pkg") >&2
        mv "$out/$(basename "$pkg").partial" "$out/$(basename "$pkg")"
        log "built $(basename "$pkg") ($module@$version) in $((SECONDS - t0)) s"
    done
}

k8s_src=$(go mod download -json "k8s.io/kubernetes@v$K8S" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
k8s_ld=""
for p in k8s.io/client-go/pkg/version k8s.io/component-base/version; do
    k8s_ld+=" -X $p.gitVersion=v$K8S -X $p.gitMajor=${K8S%%.*} -X $p.gitMinor=$(cut -d. -f2 <<<"$K8S")"
    k8s_ld+=" -X $p.gitTreeState=clean -X $p.buildDate=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["Time"])' "$(go env GOMODCACHE)/cache/download/k8s.io/kubernetes/@v/v$K8S.info")"
done
grep -oE '^\s*k8s.io/[a-z0-9-]+ => ./staging' "$k8s_src/go.mod" |
    awk -v v="v0.${K8S#1.}" '{print "replace " $1 " => " $1 " " v}' |
    go_build k8s.io/kubernetes "v$K8S" "$k8s_ld" selinux,notest,grpcnotrace \
        k8s.io/kubernetes/cmd/kubeadm k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kubectl \
        k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
        k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kube-proxy

# etcd's own go.mod replaces its sibling modules with folders; as a dependency they resolve to
# their published versions of the same release.
printf 'replace go.etcd.io/etcd/%s => go.etcd.io/etcd/%s v%s\n' \
    api/v3 api/v3 "$ETCD" client/pkg/v3 client/pkg/v3 "$ETCD" client/v3 client/v3 "$ETCD" pkg/v3 pkg/v3 "$ETCD" |
    go_build go.etcd.io/etcd/server/v3 "v$ETCD" "" "" go.etcd.io/etcd/server/v3
</dev/null go_build github.com/coredns/coredns "v$COREDNS" "-X github.com/coredns/coredns/coremain.GitCommit=v$COREDNS" "" github.com/coredns/coredns
</dev/null go_build github.com/containernetworking/plugins "v$CNI_PLUGINS" "" "" \
    github.com/containernetworking/plugins/plugins/ipam/host-local github.com/containernetworking/plugins/plugins/main/loopback \
    github.com/containernetworking/plugins/plugins/main/ptp github.com/containernetworking/plugins/plugins/main/bridge \
    github.com/containernetworking/plugins/plugins/meta/portmap
</dev/null go_build github.com/containernetworking/plugins "v$CNI_FLANNEL_PLUGINS" "" "" github.com/containernetworking/plugins/plugins/meta/flannel
# flanneld imports every backend: its udp backend needs cgo (as upstream builds it; the image is
# Debian-based, so glibc is there), and its tencentvpc backend's SDK module v1.3.188 is not
# served: the oldest served one, v1.1.0, has the API it uses (flannel's host-gw backend runs here).
echo "replace github.com/tencentcloud/tencentcloud-sdk-go/tencentcloud/vpc => github.com/tencentcloud/tencentcloud-sdk-go/tencentcloud/vpc v1.1.0" |
    CGO_ENABLED=1 go_build github.com/flannel-io/flannel "v$FLANNEL" "-X github.com/flannel-io/flannel/pkg/version.Version=v$FLANNEL" "" github.com/flannel-io/flannel
</dev/null go_build sigs.k8s.io/cri-tools "v$CRICTL" "-X sigs.k8s.io/cri-tools/pkg/version.Version=v$CRICTL" "" sigs.k8s.io/cri-tools/cmd/crictl
</dev/null go_build sigs.k8s.io/kind "v$KIND" "" "" sigs.k8s.io/kind
</dev/null go_build sigs.k8s.io/metrics-server "v$METRICS_SERVER" \
    "-X sigs.k8s.io/metrics-server/pkg/version.gitVersion=v$METRICS_SERVER" "" sigs.k8s.io/metrics-server/cmd/metrics-server

pause_dir=$(bin_dir k8s.io/kubernetes/build/pause "$PAUSE")
if [ ! -x "$pause_dir/pause" ]; then
    mkdir -p "$pause_dir"
    gcc -Os -static -Wall -Werror -DVERSION="v$PAUSE" -o "$pause_dir/pause" "$k8s_src/build/pause/linux/pause.c"
    strip "$pause_dir/pause"
fi

# Every binary the images take, under the name it has there.
BIN="$OUT/bin"
rm -rf "$BIN"
mkdir -p "$BIN"
stage() { ln -f "$(bin_dir "$1" "$2")/$3" "$BIN/${4:-$3}"; }
for b in kubeadm kubelet kubectl kube-apiserver kube-controller-manager kube-scheduler kube-proxy; do
    stage k8s.io/kubernetes "v$K8S" "$b"
done
stage go.etcd.io/etcd/server/v3 "v$ETCD" v3 etcd
stage github.com/coredns/coredns "v$COREDNS" coredns
for b in host-local loopback ptp bridge portmap; do stage github.com/containernetworking/plugins "v$CNI_PLUGINS" "$b"; done
stage github.com/containernetworking/plugins "v$CNI_FLANNEL_PLUGINS" flannel
stage github.com/flannel-io/flannel "v$FLANNEL" flannel flanneld
stage sigs.k8s.io/cri-tools "v$CRICTL" crictl
stage sigs.k8s.io/metrics-server "v$METRICS_SERVER" metrics-server
stage k8s.io/kubernetes/build/pause "$PAUSE" pause

# ---- The Debian root file system (node base, and the images that need iptables) ---------------

rootfs_tar="$CACHE/rootfs-$DEBIAN_SUITE.tar"
if [ ! -f "$rootfs_tar" ]; then
    command -v debootstrap >/dev/null || { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >&2; }
    mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
    root=$(mktemp -d)
    log "debootstrap $DEBIAN_SUITE into $root"
    debootstrap --variant=minbase \
        --include=systemd,systemd-sysv,dbus,iptables,nftables,iproute2,procps,mount,kmod,ca-certificates,conntrack,ethtool,socat,util-linux,libseccomp2,runc,jq,pigz,bash \
        "$DEBIAN_SUITE" "$root" "${mirror:-http://deb.debian.org/debian}" >&2
    chroot "$root" dpkg-query -W -f='${Version}' runc >"$CACHE/runc-$DEBIAN_SUITE.version"
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
    tar -C "$root" -cf "$rootfs_tar.partial" .
    rm -rf "$root"
    mv "$rootfs_tar.partial" "$rootfs_tar"
fi
cp "$CACHE/runc-$DEBIAN_SUITE.version" "$OUT/runc.version"

# containerd from Debian unstable, as .ci/engine.sh unpacks it.
engine_bin="${IRIS_ENGINE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/iris-serve/engine}/bin"
[ -x "$engine_bin/containerd" ] || die "no containerd in $engine_bin: run .ci/engine.sh first"
grep containerd "$engine_bin/.complete" | cut -d' ' -f2 >"$OUT/containerd.version"

print_versions

# ---- Images ------------------------------------------------------------------------------------

DEBIAN_IMAGE="iris-kind/debian-$DEBIAN_SUITE:$(stat -c '%s-%Y' "$rootfs_tar")"
if ! have_image "$DEBIAN_IMAGE"; then
    docker import "$rootfs_tar" "$DEBIAN_IMAGE" >/dev/null
fi

# build_image TAG BASE ENTRYPOINT_JSON FILE:DEST...
build_image() {
    local tag="$1" base="$2" entrypoint="$3"
    shift 3
    local ctx
    ctx=$(mktemp -d)
    {
        echo "FROM $base"
        local i=0 spec
        for spec in "$@"; do
            cp "${spec%%:*}" "$ctx/f$i"
            chmod 0755 "$ctx/f$i"
            echo "COPY f$i ${spec#*:}"
            i=$((i + 1))
        done
        [ "$base" = scratch ] && echo 'ENV PATH=/usr/local/bin:/usr/bin:/bin'
        [ -n "$entrypoint" ] && echo "ENTRYPOINT $entrypoint"
        echo "LABEL org.opencontainers.image.description=\"built by iris-serve's .ci/kind-node.sh ($key)\""
    } >"$ctx/Dockerfile"
    DOCKER_BUILDKIT=0 docker build -q -t "$tag" "$ctx" >/dev/null
    rm -rf "$ctx"
}

K8S_IMAGES=()
for c in kube-apiserver kube-controller-manager kube-scheduler; do
    build_image "registry.k8s.io/$c:v$K8S" scratch "[\"/usr/local/bin/$c\"]" "$BIN/$c:/usr/local/bin/$c"
    K8S_IMAGES+=("registry.k8s.io/$c:v$K8S")
done
# kube-proxy and flannel program iptables: their real images are Debian-based too.
build_image "registry.k8s.io/kube-proxy:v$K8S" "$DEBIAN_IMAGE" '["/usr/local/bin/kube-proxy"]' "$BIN/kube-proxy:/usr/local/bin/kube-proxy"
build_image "registry.k8s.io/etcd:$ETCD-0" scratch '["/usr/local/bin/etcd"]' "$BIN/etcd:/usr/local/bin/etcd"
build_image "registry.k8s.io/coredns/coredns:v$COREDNS" scratch '["/coredns"]' "$BIN/coredns:/coredns"
build_image "registry.k8s.io/pause:$PAUSE" scratch '["/pause"]' "$BIN/pause:/pause"
build_image "ghcr.io/flannel-io/flannel:v$FLANNEL" "$DEBIAN_IMAGE" '["/opt/bin/flanneld"]' "$BIN/flanneld:/opt/bin/flanneld"
build_image "$METRICS_SERVER_IMAGE" scratch '["/metrics-server"]' "$BIN/metrics-server:/metrics-server"
NODE_IMAGES=("${K8S_IMAGES[@]}" "registry.k8s.io/kube-proxy:v$K8S" "registry.k8s.io/etcd:$ETCD-0"
    "registry.k8s.io/coredns/coredns:v$COREDNS" "registry.k8s.io/pause:$PAUSE" "ghcr.io/flannel-io/flannel:v$FLANNEL")

# The node's base: the root file system, containerd, runc (in the rootfs), CNI plugins, crictl,
# and this project's entrypoint, units and configs; services set up as kind's base image does.
BASE_IMAGE="iris-kind/base:$key"
if ! have_image "$BASE_IMAGE"; then
    ctx=$(mktemp -d)
    mkdir -p "$ctx/bin" "$ctx/cni"
    cp "$engine_bin"/containerd "$engine_bin"/containerd-shim-runc-v2 "$engine_bin"/ctr "$BIN/crictl" "$ctx/bin/"
    cp "$BIN"/host-local "$BIN"/loopback "$BIN"/ptp "$BIN"/bridge "$BIN"/portmap "$BIN"/flannel "$ctx/cni/"
    cp -a .ci/kind-node/files "$ctx/files"
    cat >"$ctx/Dockerfile" <<EOF
FROM $DEBIAN_IMAGE
COPY files/ /
COPY bin/ /usr/local/bin/
COPY cni/ /opt/cni/bin/
RUN set -e; \
    find /lib/systemd/system/sysinit.target.wants/ -name systemd-tmpfiles-setup.service -delete; \
    rm -f /lib/systemd/system/multi-user.target.wants/* /etc/systemd/system/*.wants/* \
          /lib/systemd/system/local-fs.target.wants/* /lib/systemd/system/sockets.target.wants/*udev* \
          /lib/systemd/system/sockets.target.wants/*initctl* /lib/systemd/system/basic.target.wants/*; \
    echo ReadKMsg=no >>/etc/systemd/journald.conf; \
    ln -sf /usr/lib/systemd/systemd /sbin/init; \
    systemctl enable kubelet.service containerd.service undo-mount-hacks.service; \
    systemctl mask systemd-binfmt.service; \
    mkdir -p /etc/kubernetes/manifests /kind/manifests /etc/cni/net.d; \
    ctr oci spec | jq 'del(.process.rlimits)' >/etc/containerd/cri-base.json; \
    containerd --version; runc --version | head -1; crictl --version
ENV container=docker
STOPSIGNAL SIGRTMIN+3
ENTRYPOINT ["/usr/local/bin/entrypoint", "/sbin/init"]
EOF
    DOCKER_BUILDKIT=0 docker build -q -t "$BASE_IMAGE" "$ctx" >/dev/null
    rm -rf "$ctx"
fi

# The node: kind's `build node-image` steps, offline. Kubernetes' binaries into /usr/bin, its
# version into /kind/version, the CNI manifest, and every image the node runs imported into
# containerd's k8s.io namespace (pinned, not unpacked), with containerd started inside the build
# container for the import only; then committed.
log "assembling $NODE_IMAGE"
build="iris-kind-build-$key-$$"
trap 'docker rm -f -v "$build" >/dev/null 2>&1 || true' EXIT
docker run -d --name "$build" --entrypoint sleep --security-opt seccomp=unconfined "$BASE_IMAGE" infinity >/dev/null
for b in kubeadm kubelet kubectl; do docker cp "$BIN/$b" "$build:/usr/bin/$b" >/dev/null; done
docker exec "$build" sh -c "chown root:root /usr/bin/kubeadm /usr/bin/kubelet /usr/bin/kubectl && echo -n v$K8S >/kind/version"
docker cp .ci/kind-node/cni-flannel.yaml "$build:/kind/manifests/default-cni.yaml" >/dev/null
required=$(docker exec "$build" kubeadm config images list --kubernetes-version "v$K8S" 2>/dev/null)
for image in $required; do
    printf '%s\n' "${NODE_IMAGES[@]}" | grep -qxF "$image" || die "kubeadm v$K8S asks for $image, which this script does not build"
done
docker exec "$build" sh -c 'nohup containerd >/tmp/containerd.log 2>&1 &'
docker exec "$build" sh -c 'for i in $(seq 1 30); do ctr version >/dev/null 2>&1 && exit 0; sleep 1; done; cat /tmp/containerd.log; exit 1' >&2
for image in "${NODE_IMAGES[@]}"; do
    docker save "$image" | docker exec -i "$build" ctr --namespace=k8s.io images import \
        --label=io.cri-containerd.pinned=pinned --all-platforms --no-unpack --digests - >/dev/null
done
log "images in the node: $(docker exec "$build" ctr --namespace=k8s.io images list -q | grep -v '^sha256:' | tr '\n' ' ')"
# Stopped before the commit, so its database is complete on disk; `sleep`, the container's PID 1,
# never reaps it, so "gone" is "no containerd but a zombie".
docker exec "$build" sh -c 'pkill -x containerd; for i in $(seq 1 40); do ps -C containerd -o stat= | grep -qv "^Z" || exit 0; sleep 0.5; done; exit 1' ||
    die "containerd in the build container did not stop within 20 s"
docker exec "$build" rm -rf /tmp/containerd.log
docker commit --change 'ENTRYPOINT [ "/usr/local/bin/entrypoint", "/sbin/init" ]' \
    --change 'ENV HTTP_PROXY="" HTTPS_PROXY="" NO_PROXY=""' "$build" "$NODE_IMAGE" >/dev/null
docker rm -f -v "$build" >/dev/null
trap - EXIT
# The component images live on in the node image; in Docker only the node, its base layers and
# metrics-server are kept.
for image in "${NODE_IMAGES[@]}"; do docker rmi "$image" >/dev/null 2>&1 || true; done
docker rmi "$BASE_IMAGE" >/dev/null 2>&1 || true
# Earlier builds of this script's own images (other keys) go: the cache keeps one node.
for image in $(docker images --format '{{.Repository}}:{{.Tag}}' | grep -E '^iris-kind/(node|base|debian-[a-z]+):'); do
    case $image in "$NODE_IMAGE" | "$DEBIAN_IMAGE") ;; *) docker rmi "$image" >/dev/null 2>&1 || true ;; esac
done
log "built $NODE_IMAGE in $(($(date +%s) - started)) s"
print_exports
