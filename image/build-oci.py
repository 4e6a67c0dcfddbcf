#!/usr/bin/env python3
"""Write wasmsec's container image as an OCI image layout, without a
container engine: one gzip'd tar layer, its config, the manifest and the
index (OCI image-spec 1.1). `cargo xtask image` runs this after the build.

The root file system holds only what the daemon runs: the stripped
`wasmsec` binary, the ESP and IKE components, the example policy modules
(with their operator case tables), `ip` from iproute2 (the daemon sets up
TUN devices, routes and tenants' namespaces with it) and the shared
libraries both load, found with ldd on this Debian 12 build machine. No
shell, no package manager.

usage: build-oci.py OUT_DIR REPOSITORY TAG BINARY COMPONENTS_DIR NAME=FILE...
(each NAME=FILE goes to /usr/lib/wasmsec/policies/NAME)
"""
import datetime
import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile

# Fixed timestamps: the same inputs give the same digests.
EPOCH = int(os.environ.get("SOURCE_DATE_EPOCH", "0"))


def libraries(binary):
    """The shared libraries `binary` loads (ldd), with the dynamic loader."""
    out = subprocess.run(["ldd", binary], check=True, capture_output=True, text=True).stdout
    libs = []
    for line in out.splitlines():
        parts = line.split()
        if "=>" in parts and parts[parts.index("=>") + 1].startswith("/"):
            libs.append(parts[parts.index("=>") + 1])
        elif parts and parts[0].startswith("/"):
            libs.append(parts[0])
    return libs


class Layer:
    """A tar layer built in memory: every entry root-owned, fixed mtime."""

    def __init__(self):
        self.buf = io.BytesIO()
        self.tar = tarfile.open(fileobj=self.buf, mode="w", format=tarfile.PAX_FORMAT)
        self.dirs = set()

    def _info(self, name, kind, mode):
        info = tarfile.TarInfo(name.lstrip("/"))
        info.type, info.mode, info.mtime = kind, mode, EPOCH
        info.uid = info.gid = 0
        info.uname = info.gname = "root"
        return info

    def dir(self, path, mode=0o755):
        parts = path.strip("/").split("/")
        for i in range(1, len(parts) + 1):
            p = "/".join(parts[:i])
            if p not in self.dirs:
                self.dirs.add(p)
                self.tar.addfile(self._info(p, tarfile.DIRTYPE, mode if i == len(parts) else 0o755))

    def file(self, path, data, mode=0o644):
        self.dir(os.path.dirname(path))
        info = self._info(path, tarfile.REGTYPE, mode)
        info.size = len(data)
        self.tar.addfile(info, io.BytesIO(data))

    def symlink(self, path, target):
        self.dir(os.path.dirname(path))
        info = self._info(path, tarfile.SYMTYPE, 0o777)
        info.linkname = target
        self.tar.addfile(info)

    def finish(self):
        self.tar.close()
        return self.buf.getvalue()


def blob(out, data):
    digest = hashlib.sha256(data).hexdigest()
    with open(os.path.join(out, "blobs", "sha256", digest), "wb") as f:
        f.write(data)
    return {"digest": "sha256:" + digest, "size": len(data)}


def main():
    if len(sys.argv) < 7:
        sys.exit(__doc__)
    out, repo, tag, binary, components = sys.argv[1:6]
    policies = sys.argv[6:]
    layer = Layer()
    # The binary without its debug line tables (135 MB -> about 20).
    with tempfile.TemporaryDirectory() as tmp:
        stripped = os.path.join(tmp, "wasmsec")
        subprocess.run(["strip", "--strip-debug", "-o", stripped, binary], check=True)
        layer.file("/usr/bin/wasmsec", open(stripped, "rb").read(), 0o755)
    ip = shutil.which("ip", path="/usr/sbin:/usr/bin:/sbin:/bin")
    if not ip:
        sys.exit("build-oci.py: no `ip` on this machine (install iproute2)")
    layer.file("/usr/sbin/ip", open(ip, "rb").read(), 0o755)
    # Debian 12 is merged-/usr: /lib and /lib64 are links into /usr, as here.
    for top in ("/lib", "/lib64"):
        if os.path.islink(top):
            layer.symlink(top, os.readlink(top))
    for lib in sorted(set(libraries(binary) + libraries(ip))):
        real = os.path.realpath(lib)
        layer.file(real, open(real, "rb").read(), 0o755)
        # The name the loader asks for, its directory resolved (/lib64 is
        # /usr/lib64): a link to the file when it is not the file itself.
        asked = os.path.join(os.path.realpath(os.path.dirname(lib)), os.path.basename(lib))
        if asked != real:
            layer.symlink(asked, real)
    for c in ("esp.wasm", "ike.wasm"):
        layer.file("/usr/lib/wasmsec/components/" + c, open(os.path.join(components, c), "rb").read())
    for p in policies:
        name, src = p.split("=", 1)
        layer.file("/usr/lib/wasmsec/policies/" + name, open(src, "rb").read())
    layer.file("/etc/passwd", b"root:x:0:0:root:/root:/usr/sbin/nologin\n")
    layer.file("/etc/group", b"root:x:0:\n")
    # Mount points: the chart mounts the config, PSKs, policies, the TUN
    # device and writable emptyDirs here; the root file system stays
    # read-only.
    for d in ("/etc/wasmsec/config", "/etc/wasmsec/psk", "/etc/wasmsec/policies", "/dev/net", "/proc",
              "/sys", "/tmp", "/run/wasmsec", "/run/netns", "/var/lib/wasmsec"):
        layer.dir(d, 0o1777 if d == "/tmp" else 0o700 if d in ("/run/wasmsec", "/var/lib/wasmsec") else 0o755)
    tar = layer.finish()
    gz = gzip.compress(tar, mtime=0)

    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(os.path.join(out, "blobs", "sha256"))
    with open(os.path.join(out, "oci-layout"), "w") as f:
        json.dump({"imageLayoutVersion": "1.0.0"}, f)
    layer_desc = dict(blob(out, gz), mediaType="application/vnd.oci.image.layer.v1.tar+gzip")
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Entrypoint": ["/usr/bin/wasmsec"],
            "Cmd": ["run", "--config", "/etc/wasmsec/config/config.toml"],
            "Env": ["PATH=/usr/sbin:/usr/bin", "WASMSEC_COMPONENTS=/usr/lib/wasmsec/components"],
            "WorkingDir": "/",
            "Labels": {"org.opencontainers.image.title": "wasmsec", "org.opencontainers.image.version": tag},
        },
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(tar).hexdigest()]},
        "history": [{"created_by": "image/build-oci.py"}],
        "created": datetime.datetime.fromtimestamp(EPOCH, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    config_desc = dict(blob(out, json.dumps(config, sort_keys=True).encode()),
                       mediaType="application/vnd.oci.image.config.v1+json")
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": config_desc, "layers": [layer_desc]}
    manifest_desc = dict(blob(out, json.dumps(manifest, sort_keys=True).encode()),
                         mediaType="application/vnd.oci.image.manifest.v1+json")
    # ref.name is what `skopeo inspect oci:DIR:TAG` and umoci name it by;
    # containerd's import takes the full reference from its own annotation.
    manifest_desc["annotations"] = {"org.opencontainers.image.ref.name": tag,
                                    "io.containerd.image.name": f"{repo}:{tag}"}
    with open(os.path.join(out, "index.json"), "w") as f:
        json.dump({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                   "manifests": [manifest_desc]}, f, sort_keys=True)
    print(f"{repo}:{tag}: OCI layout in {out} ({manifest_desc['digest']}, layer {len(gz) / 1e6:.1f} MB)")


main()
