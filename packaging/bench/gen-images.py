#!/usr/bin/env python3
"""Writes an OCI image layout of N two-platform images (amd64 + arm64) for the pull benchmark.

    gen-images.py LAYOUT N BASE_MIB OWN_MIB

Every image of either platform shares one base layer of BASE_MIB MiB (per platform); each
image and platform has its own layer of OWN_MIB MiB. Layers hold incompressible bytes, gzipped
at level 1; tags are img0..img(N-1), each naming an OCI index.
"""
import gzip, hashlib, io, json, os, sys, tarfile

layout, n, base_mib, own_mib = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
blobs = os.path.join(layout, "blobs", "sha256")
os.makedirs(blobs, exist_ok=True)


def put(data):
    digest = hashlib.sha256(data).hexdigest()
    with open(os.path.join(blobs, digest), "wb") as f:
        f.write(data)
    return {"digest": "sha256:" + digest, "size": len(data)}


def layer(name, mib, seed):
    # Incompressible, reproducible and fast: a SHAKE-256 stream of the seed.
    payload = hashlib.shake_256(seed.encode()).digest(int(mib * 1024 * 1024))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        info = tarfile.TarInfo(name)
        info.size = len(payload)
        info.mtime = 0
        tar.addfile(info, io.BytesIO(payload))
    tar_bytes = buf.getvalue()
    gz = gzip.compress(tar_bytes, compresslevel=1, mtime=0)
    desc = put(gz)
    desc["mediaType"] = "application/vnd.oci.image.layer.v1.tar+gzip"
    return desc, "sha256:" + hashlib.sha256(tar_bytes).hexdigest()


def manifest(arch, layers):
    config = json.dumps({
        "architecture": arch, "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [d for _, d in layers]},
    }).encode()
    cfg = put(config)
    cfg["mediaType"] = "application/vnd.oci.image.config.v1+json"
    m = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": cfg, "layers": [l for l, _ in layers],
    }).encode()
    desc = put(m)
    desc["mediaType"] = "application/vnd.oci.image.manifest.v1+json"
    desc["platform"] = {"architecture": arch, "os": "linux"}
    return desc


bases = {arch: layer("base.bin", base_mib, "base-" + arch) for arch in ("amd64", "arm64")}
top = []
for i in range(n):
    children = [manifest(arch, [bases[arch], layer(f"own{i}.bin", own_mib, f"own-{i}-{arch}")])
                for arch in ("amd64", "arm64")]
    index = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                        "manifests": children}).encode()
    desc = put(index)
    desc["mediaType"] = "application/vnd.oci.image.index.v1+json"
    desc["annotations"] = {"org.opencontainers.image.ref.name": f"img{i}"}
    top.append(desc)
with open(os.path.join(layout, "index.json"), "w") as f:
    json.dump({"schemaVersion": 2, "manifests": top}, f)
with open(os.path.join(layout, "oci-layout"), "w") as f:
    f.write('{"imageLayoutVersion":"1.0.0"}')
