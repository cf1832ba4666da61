#!/usr/bin/env bash
# Builds docker/Dockerfile with buildah on a host that cannot reach Docker Hub but can reach
# Debian's mirrors and crates.io (as this project's development machines): the two base images the
# Dockerfile names are made locally first, then the Dockerfile builds unchanged, and the image is
# smoke-tested (the server starts in it and serves the pinned shard).
#
#   docker/build-offline.sh [TAG]        # default genrep:cpu
#
#   - debian:bookworm-slim: a debootstrap minbase of bookworm;
#   - rust:1-bookworm: that plus gcc/libc6-dev/curl, this host's extra CA certificates, and this
#     host's Rust toolchain (rustc, cargo, the std library; no docs) with /usr/local/cargo/bin on
#     PATH as in the official image.
# Needs root, buildah and debootstrap (Debian packages); storage driver vfs, chroot isolation (no
# overlay or user namespaces needed). Where Docker Hub is reachable, `docker build -f
# docker/Dockerfile .` is all it takes.
set -euo pipefail
cd "$(dirname "$0")/.."
tag=${1:-genrep:cpu}
export STORAGE_DRIVER=vfs BUILDAH_ISOLATION=chroot
b() { buildah --storage-driver vfs "$@"; }

if ! b inspect --type image docker.io/library/debian:bookworm-slim >/dev/null 2>&1; then
  root=$(mktemp -d)
  debootstrap --variant=minbase bookworm "$root" http://deb.debian.org/debian >&2
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
  c=$(b from scratch)
  cp -a "$root"/. "$(b mount "$c")"/
  b umount "$c" >/dev/null
  b config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --cmd /bin/bash "$c"
  b commit -q "$c" docker.io/library/debian:bookworm-slim >/dev/null
  b rm "$c" >/dev/null
  rm -rf "$root"
fi

if ! b inspect --type image docker.io/library/rust:1-bookworm >/dev/null 2>&1; then
  sysroot=$(rustc --print sysroot)
  c=$(b from --pull-never docker.io/library/debian:bookworm-slim)
  # The host's extra CAs (a TLS-intercepting egress proxy's, say) so that cargo can reach
  # crates.io from the build container as it does from the host.
  if compgen -G '/usr/local/share/ca-certificates/*.crt' >/dev/null; then
    m=$(b mount "$c")
    mkdir -p "$m/usr/local/share/ca-certificates"
    cp /usr/local/share/ca-certificates/*.crt "$m/usr/local/share/ca-certificates/"
  fi
  b run "$c" -- sh -c 'apt-get update -q && apt-get install -y -q --no-install-recommends gcc libc6-dev ca-certificates curl && update-ca-certificates && rm -rf /var/lib/apt/lists/*' >&2
  m=$(b mount "$c")
  mkdir -p "$m/usr/local/rust" "$m/usr/local/cargo/bin"
  cp -a "$sysroot/bin" "$sysroot/lib" "$m/usr/local/rust/"
  for tool in rustc cargo rustdoc; do ln -sf "/usr/local/rust/bin/$tool" "$m/usr/local/cargo/bin/$tool"; done
  b umount "$c" >/dev/null
  b config --env CARGO_HOME=/usr/local/cargo \
    --env PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "$c"
  b commit -q "$c" docker.io/library/rust:1-bookworm >/dev/null
  b rm "$c" >/dev/null
fi

# --format docker keeps HEALTHCHECK (the OCI format has no such field). No --layers: with vfs every
# cached step would be a full copy of the file system.
b bud --pull-never --format docker -f docker/Dockerfile -t "$tag" . >&2
conf=$(b inspect --type image --format '{{.Docker.Config.Healthcheck}} user={{.Docker.Config.User}}' "$tag")
echo "image $tag: $conf" >&2
case "$conf" in
  *CMD-SHELL*GENREP_PORT*user=genrep*) ;;
  *) echo "error: the image lost its HEALTHCHECK or its non-root user" >&2; exit 1 ;;
esac

# Smoke test: the image's entrypoint serves the pinned shard on a free port.
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
c=$(b from --pull-never "$tag")
log=$(mktemp)
# Its own process group, so that stopping it stops the server inside too.
setsid buildah --storage-driver vfs run --env GENREP_PORT="$port" --env GENREP_HOST=127.0.0.1 \
  "$c" -- genrep serve > "$log" 2>&1 &
pid=$!
trap 'kill -TERM -- -$pid 2>/dev/null || true; wait $pid 2>/dev/null || true; b rm "$c" >/dev/null 2>&1 || true' EXIT
for _ in $(seq 1 100); do
  curl -fsS "http://127.0.0.1:$port/ready" >/dev/null 2>&1 && break
  sleep 0.2
done
sha=$(curl -fsS "http://127.0.0.1:$port/v1/shards/train-000002.tar?seed=1&sigma=0.2&views=2&shard_size=6" | sha256sum | cut -d' ' -f1)
want=$(grep -A1 'pub const PINNED_SHARD_SHA256' src/check/determinism.rs | grep -o '[0-9a-f]\{64\}')
echo "image $tag: $(grep -c listening "$log") listening line(s) in its log, pinned shard sha256 $sha" >&2
[ "$sha" = "$want" ] || { echo "error: the image served different bytes (want $want)" >&2; exit 1; }
