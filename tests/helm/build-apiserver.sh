#!/usr/bin/env bash
# A real kube-apiserver for the chart's server-side tests, built from
# Debian 12's `kubernetes` source package (v1.20; Debian ships only kubectl
# from it, but the source has the whole tree with vendor/) with Debian's Go,
# offline but for apt. etcd is Debian's etcd-server.
#   build-apiserver.sh DIR  ->  DIR/kube-apiserver (kept: a later run with
#   the same source version reuses it; ~6-10 min and ~3 GB the first time,
#   the tree is deleted afterwards)
set -euo pipefail
W=$(realpath -m "${1:?work dir}")
mkdir -p "$W/apt/lists/partial" "$W/src"
# One build at a time: `cargo xtask test` starts one in the background and
# the test that needs the binary waits here for it.
exec 9>"$W/.lock"
flock 9
export DEBIAN_FRONTEND=noninteractive
# deb-src from a private apt state: the system's sources stay untouched.
printf 'deb-src http://deb.debian.org/debian bookworm main\n' > "$W/apt/src.list"
APTO=(-o Dir::Etc::SourceList="$W/apt/src.list" -o Dir::Etc::SourceParts=/dev/null -o Dir::State::Lists="$W/apt/lists")
apt-get "${APTO[@]}" -qq update
version=$(apt-cache "${APTO[@]}" showsrc kubernetes | awk '/^Version:/ {print $2; exit}')
if [ -x "$W/kube-apiserver" ] && [ "$(cat "$W/kube-apiserver.version" 2>/dev/null)" = "$version" ]; then
    exit 0
fi
echo "building kube-apiserver from Debian's kubernetes $version source (several minutes)"
rm -rf "$W/src" && mkdir -p "$W/src"
(cd "$W/src" && apt-get "${APTO[@]}" -qq source --download-only "kubernetes=$version" >/dev/null)
tar xzf "$W"/src/kubernetes_*.orig.tar.gz -C "$W/src"
K=$(ls -d "$W"/src/kubernetes-1.*/ | head -1)
# The vendored reflect2 1.0.1 crashes under Go 1.19 (map iteration);
# Debian's 1.0.2 does not.
rm -rf "$K/vendor/github.com/modern-go/reflect2"
cp -r /usr/share/gocode/src/github.com/modern-go/reflect2 "$K/vendor/github.com/modern-go/reflect2"
rm -f "$K/vendor/github.com/modern-go/reflect2/go.mod"
cd "$K"
export GOPATH="$K/.go" CGO_ENABLED=0 HOME="$W/home" GOCACHE="$W/gocache"
mkdir -p "$HOME" .go/src/k8s.io
[ -L .go/src/k8s.io/kubernetes ] || ln -s ../../.. .go/src/k8s.io/kubernetes
make WHAT=cmd/kube-apiserver >"$W/build.log" 2>&1 || { tail -30 "$W/build.log"; exit 1; }
cp _output/bin/kube-apiserver "$W/kube-apiserver.part"
mv "$W/kube-apiserver.part" "$W/kube-apiserver"
echo "$version" > "$W/kube-apiserver.version"
cd "$W" && rm -rf "$W/src" "$W/gocache" "$W/home"
"$W/kube-apiserver" --version
