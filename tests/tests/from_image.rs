//! `FROM` a cluster image in a registry, and image archives in `images/`: cluster images made
//! here (two layers: the second overwrites a file, whites one out and makes a directory opaque;
//! an amd64 + arm64 index), pushed with skopeo into Debian's docker-registry on 127.0.0.1, built
//! from with `kubeferry build -f Kubefile` for both architectures, and each bundle extracted
//! and compared with the exact tree expected. Hostile layers (`../escape`, a symlink escape) are
//! refused with nothing written outside. A `docker save` tarball written by hand and an OCI
//! layout in `images/` end up in the bundle's `registry/`, served by kubeferry's registry to
//! skopeo.
//!
//! Needs `skopeo` and `docker-registry` (`apt-get install -y docker-registry skopeo`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use kubeferry_installer::extract::ExtractOptions;
use kubeferry_installer::progress::Silent;
use kubeferry_installer::reader::Bundle;
use kubeferry_installer::registry::{self, Registry, RegistryConfig};
use kubeferry_installer::trust::Trust;
use kubeferry_tests::images::{
    Blob, OCI_CONFIG, OCI_INDEX, OCI_MANIFEST, descriptor, docker_registry, put, require_tools, sha256,
    skopeo,
};
use kubeferry_tests::{arm64_stub_bin, keygen, kubeferry, run, stub_bin, write};

const GZIP_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const ZSTD_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+zstd";

/// One tar entry of a layer made here: path, kind, content, link target.
type Entry<'a> = (&'a str, tar::EntryType, &'a [u8], &'a str);

const FILE: tar::EntryType = tar::EntryType::Regular;
const DIR: tar::EntryType = tar::EntryType::Directory;
const SYMLINK: tar::EntryType = tar::EntryType::Symlink;
const HARDLINK: tar::EntryType = tar::EntryType::Link;

/// A tar of `entries`, names written raw into the header so that hostile ones (`../x`) reach
/// the reader as a hostile registry would serve them.
fn tar_of(entries: &[Entry<'_>]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (path, kind, data, link) in entries {
        let mut header = tar::Header::new_ustar();
        header.set_entry_type(*kind);
        header.set_mode(if *kind == DIR { 0o755 } else { 0o644 });
        header.set_size(data.len() as u64);
        header.set_mtime(0);
        if !link.is_empty() {
            header.set_link_name(link).unwrap();
        }
        let name = path.as_bytes();
        header.as_old_mut().name[..name.len()].copy_from_slice(name);
        header.set_cksum();
        builder.append(&header, *data).unwrap();
    }
    builder.into_inner().unwrap()
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(bytes).unwrap();
    gz.finish().unwrap()
}

/// An image in the OCI layout: its layers (media type and uncompressed tar), its config's
/// `config` object and architecture. Returns the manifest.
fn image(layout: &Path, arch: &str, layers: &[(&str, Vec<u8>)], run_config: serde_json::Value) -> Blob {
    let mut descriptors = Vec::new();
    let mut diff_ids = Vec::new();
    for (media_type, tar) in layers {
        diff_ids.push(sha256(tar));
        let blob = match *media_type {
            GZIP_LAYER => put(layout, &gzip(tar)),
            ZSTD_LAYER => put(layout, &zstd::encode_all(&tar[..], 3).unwrap()),
            _ => put(layout, tar),
        };
        descriptors.push(descriptor(media_type, &blob, serde_json::json!({})));
    }
    let config = serde_json::json!({
        "architecture": arch, "os": "linux", "config": run_config,
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    });
    let config = put(layout, config.to_string().as_bytes());
    let manifest = serde_json::json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": descriptor(OCI_CONFIG, &config, serde_json::json!({})),
        "layers": descriptors,
    });
    put(layout, manifest.to_string().as_bytes())
}

fn index(layout: &Path, children: &[(&str, &Blob)]) -> Blob {
    let manifests: Vec<serde_json::Value> = children
        .iter()
        .map(|(arch, blob)| {
            descriptor(
                OCI_MANIFEST,
                blob,
                serde_json::json!({"platform": {"architecture": arch, "os": "linux"}}),
            )
        })
        .collect();
    put(
        layout,
        serde_json::json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests})
            .to_string()
            .as_bytes(),
    )
}

/// The cluster image's layers for `arch`: the base, then the layer over it.
fn cluster_layers(arch: &str) -> Vec<(&'static str, Vec<u8>)> {
    let arch_file = format!("{arch}\n");
    let base = tar_of(&[
        ("bin/", DIR, b"", ""),
        ("bin/arch", FILE, arch_file.as_bytes(), ""),
        ("bin/tool", FILE, b"#!/bin/sh\necho tool\n", ""),
        ("bin/tool-alias", HARDLINK, b"", "bin/tool"),
        ("bin/tool-link", SYMLINK, b"", "tool"),
        ("etc/", DIR, b"", ""),
        ("etc/kubeadm.conf", FILE, b"version: base\n", ""),
        ("etc/remove-me.conf", FILE, b"to be whited out\n", ""),
        ("manifests/", DIR, b"", ""),
        ("manifests/old.yaml", FILE, b"kind: Old\n", ""),
        ("manifests/sub/", DIR, b"", ""),
        ("manifests/sub/older.yaml", FILE, b"kind: Older\n", ""),
    ]);
    let upper = tar_of(&[
        ("etc/", DIR, b"", ""),
        ("etc/kubeadm.conf", FILE, b"version: upper\n", ""),
        ("etc/.wh.remove-me.conf", FILE, b"", ""),
        ("manifests/", DIR, b"", ""),
        ("manifests/.wh..wh..opq", FILE, b"", ""),
        ("manifests/new.yaml", FILE, b"kind: New\n", ""),
    ]);
    vec![(GZIP_LAYER, base), (ZSTD_LAYER, upper)]
}

/// The tree a bundle built `FROM` the cluster image (with the Kubefile's `COPY extra etc`)
/// holds for `arch`: path and content (`->` for a symlink, `dir` for a directory).
fn expected_tree(arch: &str) -> BTreeMap<String, String> {
    [
        ("bin", "dir".to_string()),
        ("bin/arch", format!("{arch}\n")),
        ("bin/tool", "#!/bin/sh\necho tool\n".into()),
        ("bin/tool-alias", "#!/bin/sh\necho tool\n".into()),
        ("bin/tool-link", "-> tool".into()),
        ("etc", "dir".into()),
        ("etc/added.txt", "from the build context\n".into()),
        ("etc/kubeadm.conf", "version: upper\n".into()),
        ("manifests", "dir".into()),
        ("manifests/new.yaml", "kind: New\n".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// Every path of a tree with its content.
fn tree(dir: &Path) -> BTreeMap<String, String> {
    fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let rel = path.strip_prefix(base).unwrap().to_string_lossy().into_owned();
            let meta = fs::symlink_metadata(&path).unwrap();
            if meta.is_dir() {
                out.insert(rel, "dir".into());
                walk(base, &path, out);
            } else if meta.file_type().is_symlink() {
                out.insert(rel, format!("-> {}", fs::read_link(&path).unwrap().display()));
            } else {
                out.insert(rel, String::from_utf8_lossy(&fs::read(&path).unwrap()).into_owned());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// The images pushed once per test process into a docker-registry storage directory.
struct Pushed {
    _dir: tempfile::TempDir,
    storage: PathBuf,
    /// The digest of the cluster image's index.
    index: String,
}

fn fixture() -> &'static Pushed {
    static PUSHED: OnceLock<Pushed> = OnceLock::new();
    PUSHED.get_or_init(|| {
        require_tools();
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let layout = dir.join("layout");
        let run_config = serde_json::json!({
            "Env": ["registryPort=5000", "PATH=/usr/bin:/bin"],
            "Labels": {"cluster.alpha.sealer.io/cluster-runtime-version": "v1.28.4", "origin": "image"},
            "Cmd": ["kubectl apply -f manifests/new.yaml"],
            "Entrypoint": ["echo entry"],
        });
        let amd64 = image(&layout, "amd64", &cluster_layers("amd64"), run_config.clone());
        let arm64 = image(&layout, "arm64", &cluster_layers("arm64"), run_config);
        let index = index(&layout, &[("amd64", &amd64), ("arm64", &arm64)]);
        let dotdot = image(
            &layout,
            "amd64",
            &[(GZIP_LAYER, tar_of(&[("ok.txt", FILE, b"fine\n", ""), ("../escape", FILE, b"out\n", "")]))],
            serde_json::json!({}),
        );
        // The base is flattened into DIST/.kubeferry-base-amd64: '../../outside' from its top
        // is the test's own directory beside DIST.
        let symlink = image(
            &layout,
            "amd64",
            &[(
                GZIP_LAYER,
                tar_of(&[("link", SYMLINK, b"", "../../outside"), ("link/pwned", FILE, b"out\n", "")]),
            )],
            serde_json::json!({}),
        );
        // An application image laid over the cluster image by `build --from`: its whiteout
        // deletes a file of the cluster image.
        let app = image(
            &layout,
            "amd64",
            &[(
                GZIP_LAYER,
                tar_of(&[
                    ("bin/.wh.tool-link", FILE, b"", ""),
                    ("manifests/app.yaml", FILE, b"kind: App\n", ""),
                ]),
            )],
            serde_json::json!({"Env": ["appVersion=2"], "Cmd": ["kubectl apply -f manifests/app.yaml"]}),
        );
        let name = |tag: &str| serde_json::json!({"annotations": {"org.opencontainers.image.ref.name": tag}});
        let top = serde_json::json!({"schemaVersion": 2, "manifests": [
            descriptor(OCI_INDEX, &index, name("cluster")),
            descriptor(OCI_MANIFEST, &dotdot, name("dotdot")),
            descriptor(OCI_MANIFEST, &symlink, name("symlink")),
            descriptor(OCI_MANIFEST, &app, name("app")),
        ]});
        fs::write(layout.join("index.json"), top.to_string()).unwrap();
        fs::write(layout.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        let storage = dir.join("storage");
        let (_running, addr) = docker_registry(&dir, &storage);
        for (src, dest) in [
            ("cluster", "cluster:v1"),
            ("dotdot", "evil:dotdot"),
            ("symlink", "evil:symlink"),
            ("app", "app:v1"),
        ] {
            kubeferry_tests::images::ok(
                skopeo(&dir)
                    .args(["copy", "--all", "--dest-tls-verify=false"])
                    .arg(format!("oci:{}:{src}", layout.display()))
                    .arg(format!("docker://{addr}/{dest}")),
            );
        }
        Pushed { _dir: tmp, storage, index: index.digest }
    })
}

/// A build from `context/Kubefile` for `arches` into `out`, with the registry options a test
/// needs: (exit code, stdout, stderr).
fn build(context: &Path, out: &Path, arches: &str, key: &Path) -> (i32, String, String) {
    run(kubeferry()
        .args(["build", "-f"])
        .arg(context.join("Kubefile"))
        .arg(context)
        .args(["--name", "kf", "--version", "v1", "--arch", arches, "--key"])
        .arg(key)
        .arg(format!("--stub=amd64={}", stub_bin().display()))
        .arg(format!("--stub=arm64={}", arm64_stub_bin().display()))
        .arg("--cache-dir")
        .arg(context.join("cache"))
        .arg("--docker-config")
        .arg(context.join("no-docker-config.json"))
        .arg("-o")
        .arg(out))
}

/// `kubeferry build` for amd64 into `out`, signed with `key`, with the test's cache and no
/// docker configuration of the host's; the caller adds what it builds.
fn amd64_build(dir: &Path, key: &Path, out: &Path) -> std::process::Command {
    let mut command = kubeferry();
    command
        .args(["build", "--arch", "amd64", "--key"])
        .arg(key)
        .arg(format!("--stub=amd64={}", stub_bin().display()))
        .arg("--cache-dir")
        .arg(dir.join("cache"))
        .arg("--docker-config")
        .arg(dir.join("no-docker-config.json"))
        .arg("-o")
        .arg(out);
    command
}

/// Opens, verifies and extracts a bundle; returns the extracted tree's directory and the
/// manifest's image settings.
fn extract(bundle: &Path, public: &Path, to: &Path) -> kubeferry_installer::manifest::Manifest {
    let bundle = Bundle::open(bundle).unwrap();
    let verified = bundle
        .authenticate(&Trust::from_sources(&[public.to_path_buf()], &[], false, false).unwrap())
        .unwrap();
    kubeferry_installer::extract::extract(&bundle, &verified, to, &ExtractOptions::default(), &Silent)
        .unwrap();
    verified.manifest
}

#[test]
fn a_kubefile_from_a_multi_arch_image_flattens_its_layers_for_each_architecture() {
    let f = fixture();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (_registry, addr) = docker_registry(dir, &f.storage);
    let context = dir.join("context");
    write(&context.join("extra/added.txt"), "from the build context\n");
    write(
        &context.join("Kubefile"),
        format!("FROM {addr}/cluster:v1\nCOPY extra etc\nENV added=yes registryPort=5001\nLABEL kf=1\n"),
    );
    let (key, public) = keygen(dir, "release");
    let out = dir.join("dist");
    let (code, stdout, stderr) = build(&context, &out, "amd64,arm64", &key);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout.lines().count(), 2, "{stdout}");
    for arch in ["amd64", "arm64"] {
        let to = dir.join(format!("x-{arch}"));
        let manifest = extract(&out.join(format!("kf-v1-linux-{arch}.run")), &public, &to);
        assert_eq!(tree(&to), expected_tree(arch), "{arch}");
        let alias = |p: &str| std::os::unix::fs::MetadataExt::ino(&fs::metadata(to.join(p)).unwrap());
        assert_eq!(alias("bin/tool"), alias("bin/tool-alias"), "the hard link is kept");
        let image = &manifest.image;
        let env: Vec<(&str, &str)> = image.env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(env, [("PATH", "/usr/bin:/bin"), ("added", "yes"), ("registryPort", "5001")]);
        assert_eq!(image.labels["origin"], "image");
        assert_eq!(image.labels["kf"], "1");
        assert_eq!(image.cmd, Some(vec!["kubectl apply -f manifests/new.yaml".to_string()]));
        assert_eq!(image.entrypoint, Some(vec!["echo entry".to_string()]));
        assert_eq!(manifest.kubernetes_version.as_deref(), Some("v1.28.4"));
    }
    let mut left: Vec<String> =
        fs::read_dir(&out).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    left.retain(|n| n.starts_with(".kubeferry"));
    assert!(left.is_empty(), "the flattened bases are removed: {left:?}");
}

#[test]
fn a_digest_reference_builds_and_a_missing_image_names_the_kubefile_line() {
    let f = fixture();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (_registry, addr) = docker_registry(dir, &f.storage);
    let context = dir.join("context");
    write(&context.join("extra/added.txt"), "from the build context\n");
    write(
        &context.join("Kubefile"),
        format!("# by digest\nFROM {addr}/cluster@{}\nCOPY extra etc\n", f.index),
    );
    let (key, public) = keygen(dir, "release");
    let out = dir.join("dist");
    let (code, _, stderr) = build(&context, &out, "arm64", &key);
    assert_eq!(code, 0, "{stderr}");
    let to = dir.join("x");
    extract(&out.join("kf-v1-linux-arm64.run"), &public, &to);
    assert_eq!(tree(&to), expected_tree("arm64"));

    write(&context.join("Kubefile"), format!("ARG TAG=nope\nFROM {addr}/cluster:${{TAG}}\nCOPY extra etc\n"));
    let out = dir.join("dist2");
    let (code, _, stderr) = build(&context, &out, "amd64", &key);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains(&format!(
            "caused by: Kubefile line 2: the base image '{addr}/cluster:nope' could not be used for amd64: \
             '{addr}/cluster:nope' was not found in {addr} (MANIFEST_UNKNOWN: manifest unknown"
        )),
        "{stderr}"
    );
    assert!(fs::read_dir(&out).unwrap().next().is_none(), "nothing is left in the output");
}

#[test]
fn layers_that_climb_out_are_refused_and_nothing_is_written_outside() {
    let f = fixture();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (_registry, addr) = docker_registry(dir, &f.storage);
    let context = dir.join("context");
    fs::create_dir_all(dir.join("outside")).unwrap();
    let (key, _) = keygen(dir, "release");
    for (tag, cause) in [
        ("dotdot", "the layer entry '../escape' is refused: its path climbs out with '..'"),
        (
            "symlink",
            "the layer entry 'link/pwned' is refused: its parent 'link' is a symbolic link, and kubeferry never \
             writes through one",
        ),
    ] {
        write(&context.join("Kubefile"), format!("FROM {addr}/evil:{tag}\n"));
        let out = dir.join("dist");
        let (code, _, stderr) = build(&context, &out, "amd64", &key);
        assert_eq!(code, 1, "{stderr}");
        assert!(
            stderr.contains(&format!(
                "caused by: Kubefile line 1: the base image '{addr}/evil:{tag}' could not be used for amd64: \
                 layer 1 ("
            )),
            "{stderr}"
        );
        assert!(stderr.contains(&format!(" of '{addr}/evil:{tag}': {cause}\n")), "{stderr}");
        assert!(!dir.join("escape").exists() && !out.join("escape").exists(), "{tag}");
        assert!(fs::read_dir(dir.join("outside")).unwrap().next().is_none(), "{tag}");
        assert!(fs::read_dir(&out).unwrap().next().is_none(), "{tag}: the partial base is removed");
    }
}

#[test]
fn build_from_several_images_lays_each_over_the_ones_before() {
    let f = fixture();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (_registry, addr) = docker_registry(dir, &f.storage);
    let (key, public) = keygen(dir, "release");
    let out = dir.join("dist");
    let (code, _, stderr) = run(amd64_build(dir, &key, &out)
        .args(["--from", &format!("{addr}/cluster:v1"), "--from", &format!("{addr}/app:v1")])
        .args(["--name", "both", "--version", "v1"]));
    assert_eq!(code, 0, "{stderr}");
    let to = dir.join("x");
    let manifest = extract(&out.join("both-v1-linux-amd64.run"), &public, &to);
    let mut want = expected_tree("amd64");
    want.remove("etc/added.txt");
    want.remove("bin/tool-link");
    want.insert("manifests/app.yaml".into(), "kind: App\n".into());
    assert_eq!(tree(&to), want);
    assert_eq!(manifest.image.env["appVersion"], "2");
    assert_eq!(manifest.image.env["registryPort"], "5000");
    assert_eq!(
        manifest.image.cmd,
        Some(vec![
            "kubectl apply -f manifests/new.yaml".to_string(),
            "kubectl apply -f manifests/app.yaml".to_string()
        ])
    );
    assert!(fs::read_dir(&out).unwrap().all(|e| !e.unwrap().file_name().to_string_lossy().starts_with('.')));
}

/// A `docker save` archive made by hand: manifest.json, repositories, the config named by its
/// digest, and the layer as LAYERID/layer.tar.
fn docker_save(
    path: &Path,
    repo_tag: &str,
    arch: &str,
    files: &[Entry<'_>],
    diff_id: Option<&str>,
) -> String {
    let layer = tar_of(files);
    let config = serde_json::json!({
        "architecture": arch, "os": "linux", "config": {"Cmd": ["/app"]},
        "rootfs": {"type": "layers", "diff_ids": [diff_id.map_or_else(|| sha256(&layer), str::to_string)]},
    })
    .to_string();
    let config_hex = sha256(config.as_bytes())[7..].to_string();
    let layer_id = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    let manifest = serde_json::json!([{
        "Config": format!("{config_hex}.json"), "RepoTags": [repo_tag], "Layers": [format!("{layer_id}/layer.tar")],
    }])
    .to_string();
    let (name, tag) = repo_tag.rsplit_once(':').unwrap();
    let repositories = serde_json::json!({name: {tag: layer_id}}).to_string();
    let archive = tar_of(&[
        (&format!("{layer_id}/"), DIR, b"", ""),
        (&format!("{layer_id}/VERSION"), FILE, b"1.0", ""),
        (&format!("{layer_id}/layer.tar"), FILE, &layer, ""),
        (&format!("{config_hex}.json"), FILE, config.as_bytes(), ""),
        ("manifest.json", FILE, manifest.as_bytes(), ""),
        ("repositories", FILE, repositories.as_bytes(), ""),
    ]);
    write(path, archive);
    sha256(&layer)
}

#[test]
fn image_archives_in_images_are_served_from_the_bundles_registry() {
    require_tools();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let rootfs = dir.join("rootfs");
    write(&rootfs.join("etc/cluster.conf"), "x\n");
    write(&rootfs.join("images/shim/imageList"), "docker.io/library/saved:v1\n");
    let layer_digest = docker_save(
        &rootfs.join("images/saved.tar"),
        "saved:v1",
        "amd64",
        &[("app", FILE, b"saved app\n", "")],
        None,
    );
    docker_save(
        &rootfs.join("images/other-arch.tar"),
        "armonly:v1",
        "arm64",
        &[("app", FILE, b"arm\n", "")],
        None,
    );
    // An OCI layout of an amd64 + arm64 index, named by a full reference.
    let layout = rootfs.join("images/oci-app");
    let amd64 = image(
        &layout,
        "amd64",
        &[(GZIP_LAYER, tar_of(&[("srv/", DIR, b"", ""), ("srv/app", FILE, b"oci amd64\n", "")]))],
        serde_json::json!({}),
    );
    let arm64 = image(
        &layout,
        "arm64",
        &[(GZIP_LAYER, tar_of(&[("srv/app", FILE, b"oci arm64\n", "")]))],
        serde_json::json!({}),
    );
    let index = index(&layout, &[("amd64", &amd64), ("arm64", &arm64)]);
    let top = serde_json::json!({"schemaVersion": 2, "manifests": [descriptor(OCI_INDEX, &index,
        serde_json::json!({"annotations": {"org.opencontainers.image.ref.name": "example.com/team/oci-app:v2"}}))]});
    write(&layout.join("index.json"), top.to_string());
    write(&layout.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#);

    // The registry's own image (sealer's images/registry.tar) stays a file of the bundle.
    docker_save(
        &rootfs.join("images/registry.tar"),
        "registry:2.7.1",
        "amd64",
        &[("registry", FILE, b"the registry\n", "")],
        None,
    );
    let registry_tar = fs::read(rootfs.join("images/registry.tar")).unwrap();

    let (key, public) = keygen(dir, "release");
    let out = dir.join("dist");
    let build = |out: &Path| {
        run(kubeferry()
            .args(["build", "--name", "arc", "--version", "v1", "--arch", "amd64", "--key"])
            .arg(&key)
            .arg(format!("--stub=amd64={}", stub_bin().display()))
            .arg("-o")
            .arg(out)
            .arg(&rootfs))
    };
    let (code, _, stderr) = build(&out);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains("armonly:v1 of '") && stderr.contains("is an image for arm64, not amd64"),
        "{stderr}"
    );
    let to = dir.join("x");
    extract(&out.join("arc-v1-linux-amd64.run"), &public, &to);
    let listed: Vec<String> = registry::list_images(&to.join("registry"))
        .unwrap()
        .iter()
        .map(|i| format!("{}:{}", i.repository, i.tag))
        .collect();
    assert_eq!(listed, ["library/saved:v1", "team/oci-app:v2"]);
    // The imported archives are in registry/ only, not packed a second time as they are; the
    // archive of another architecture's image and the image list stay.
    assert!(!to.join("images/saved.tar").exists() && !to.join("images/oci-app").exists());
    assert!(to.join("images/other-arch.tar").is_file() && to.join("images/shim/imageList").is_file());
    assert_eq!(fs::read(to.join("images/registry.tar")).unwrap(), registry_tar, "kept as it was");
    assert!(!listed.iter().any(|i| i.contains("registry")), "not imported: {listed:?}");
    assert!(!fs::read_dir(&out).unwrap().any(|e| e.unwrap().file_name().to_string_lossy().starts_with('.')));

    // kubeferry's registry serves them to skopeo.
    let served = Registry::start(RegistryConfig {
        root: to.join("registry"),
        listen: "127.0.0.1:0".parse().unwrap(),
        threads: 2,
        users: None,
    })
    .unwrap();
    let at = served.local_addr();
    registry::wait_ready(at, "127.0.0.1", None, Duration::from_secs(5)).unwrap();
    let inspect = |image: &str| -> serde_json::Value {
        serde_json::from_str(&kubeferry_tests::images::ok(
            skopeo(dir).args(["inspect", "--tls-verify=false"]).arg(format!("docker://{at}/{image}")),
        ))
        .unwrap()
    };
    let saved = inspect("library/saved:v1");
    assert_eq!(saved["Architecture"], "amd64");
    assert_eq!(saved["Layers"], serde_json::json!([layer_digest]));
    let oci = inspect("team/oci-app:v2");
    assert_eq!(oci["Architecture"], "amd64");
    assert_eq!(oci["Digest"], amd64.digest.as_str(), "the tag names the amd64 image's own manifest");
    let copy = dir.join("copy");
    kubeferry_tests::images::ok(
        skopeo(dir)
            .args(["copy", "--src-tls-verify=false"])
            .arg(format!("docker://{at}/library/saved:v1"))
            .arg(format!("dir:{}", copy.display())),
    );
    let layer = fs::read(copy.join(&layer_digest[7..])).unwrap();
    assert_eq!(sha256(&layer), layer_digest);

    // A layer that does not match its diff ID is refused, naming both digests.
    let wrong = format!("sha256:{}", "0".repeat(64));
    docker_save(
        &rootfs.join("images/saved.tar"),
        "saved:v1",
        "amd64",
        &[("app", FILE, b"saved app\n", "")],
        Some(&wrong),
    );
    let (code, _, stderr) = build(&dir.join("dist2"));
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains(&format!(
            "caused by: the image archive '{}': the layer '0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef/layer.tar' of saved:v1 does not match its diff ID {wrong}: its content hashes to {layer_digest}",
            rootfs.join("images/saved.tar").display()
        )),
        "{stderr}"
    );
}

/// A Kubefile, the files of its context, what the bundle must then hold, and its CMD.
type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a [(&'a str, &'a str)], Option<Vec<&'a str>>);

/// The Kubefiles of the reference documents (shared/reference/: sealer's "customize image" and
/// "raw docker base image", sealos's "image build directory"), as they are written there, built
/// end to end: their bases are the test's cluster image pushed under the names they use, and
/// `--mirror docker.io=REGISTRY` sends the pulls of those names to the test's registry.
#[test]
fn the_reference_documents_kubefiles_build_as_written() {
    let f = fixture();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (_registry, addr) = docker_registry(dir, &f.storage);
    for name in [
        "library/kubernetes:v1-22-15-sealerio-2",
        "labring/kubernetes:v1.24.0",
        "library/kubernetes-rawdocker:v1.19.8-alpine",
    ] {
        kubeferry_tests::images::ok(
            skopeo(dir)
                .args(["copy", "--all", "--src-tls-verify=false", "--dest-tls-verify=false"])
                .arg(format!("docker://{addr}/cluster:v1"))
                .arg(format!("docker://{addr}/{name}")),
        );
    }
    let (key, public) = keygen(dir, "release");
    let kubeadm = "apiVersion: kubeadm.k8s.io/v1beta2\nkind: InitConfiguration\nnodeRegistration:\n  criSocket: /var/run/dockershim.sock\n";
    // (Kubefile, the context's files, what the bundle must then hold, its CMD)
    let cases: [Case; 5] = [
        (
            "FROM scratch\nCOPY . .\n",
            &[("bin/kubeadm", "kubeadm\n"), ("etc/kubeadm.yml", kubeadm)],
            &[("bin/kubeadm", "kubeadm\n")],
            None,
        ),
        (
            "FROM kubernetes:v1-22-15-sealerio-2\nCOPY daemon.json etc/\n",
            &[("daemon.json", "{}\n")],
            &[("etc/daemon.json", "{}\n"), ("bin/arch", "amd64\n")],
            Some(vec!["kubectl apply -f manifests/new.yaml"]),
        ),
        (
            "FROM kubernetes:v1-22-15-sealerio-2\nCOPY registry_config.yaml etc/\n",
            &[("registry_config.yaml", "version: 0.1\n")],
            &[("etc/registry_config.yaml", "version: 0.1\n")],
            Some(vec!["kubectl apply -f manifests/new.yaml"]),
        ),
        (
            "#Kubefile\nFROM kubernetes:v1-22-15-sealerio-2\nCOPY kubeadm.yml etc\n",
            &[("kubeadm.yml", kubeadm)],
            &[("etc/kubeadm.yml", kubeadm)],
            Some(vec!["kubectl apply -f manifests/new.yaml"]),
        ),
        (
            "FROM labring/kubernetes:v1.24.0\nENV version v1.1.0\nCOPY manifests ./manifests\nCOPY registry ./registry\n\
             ENTRYPOINT [\"kubectl apply -f manifests/tigera-operator.yaml\"]\nCMD [\"kubectl apply -f manifests/custom-resources.yaml\"]\n",
            &[
                ("manifests/tigera-operator.yaml", "kind: Namespace\n"),
                ("manifests/custom-resources.yaml", "kind: Installation\n"),
                ("registry/.keep", ""),
            ],
            &[("manifests/tigera-operator.yaml", "kind: Namespace\n"), ("bin/arch", "amd64\n")],
            Some(vec!["kubectl apply -f manifests/custom-resources.yaml"]),
        ),
    ];
    let rawdocker = (
        "FROM kubernetes-rawdocker:v1.19.8-alpine\nCOPY imageList manifests\nCOPY etc .\n\
         CMD kubectl apply -f etc/tigera-operator.yaml && kubectl apply -f etc/custom-resources.yaml\n",
        &[
            ("imageList", "calico/cni:v3.19.1\ncalico/node:v3.19.1\n"),
            ("etc/tigera-operator.yaml", "kind: Namespace\n"),
        ][..],
        &[("manifests/imageList", "calico/cni:v3.19.1\ncalico/node:v3.19.1\n"), ("bin/arch", "amd64\n")][..],
        Some(vec!["kubectl apply -f etc/tigera-operator.yaml && kubectl apply -f etc/custom-resources.yaml"]),
    );
    for (i, (kubefile, files, holds, cmd)) in cases.into_iter().chain([rawdocker]).enumerate() {
        let context = dir.join(format!("context-{i}"));
        for (path, text) in files {
            write(&context.join(path), text);
        }
        write(&context.join("Kubefile"), kubefile);
        let out = dir.join(format!("dist-{i}"));
        let (code, _, stderr) = run(amd64_build(dir, &key, &out)
            .arg("-f")
            .arg(context.join("Kubefile"))
            .arg(&context)
            .args(["--name", "ref", "--version", "v1", "--no-pull", "--allow-missing-images"])
            .arg(format!("--mirror=docker.io={addr}")));
        assert_eq!(code, 0, "{kubefile}\n{stderr}");
        let to = dir.join(format!("x-{i}"));
        let manifest = extract(&out.join("ref-v1-linux-amd64.run"), &public, &to);
        for (path, text) in holds {
            assert_eq!(fs::read_to_string(to.join(path)).unwrap_or_default(), *text, "{kubefile}: {path}");
        }
        let cmd: Option<Vec<String>> = cmd.map(|c| c.into_iter().map(str::to_string).collect());
        assert_eq!(manifest.image.cmd, cmd, "{kubefile}");
        if kubefile.contains("ENV version") {
            assert!(
                manifest.image.env.iter().any(|(k, v)| k == "version" && v == "v1.1.0"),
                "{:?}",
                manifest.image.env
            );
            assert_eq!(
                manifest.image.entrypoint,
                Some(vec!["kubectl apply -f manifests/tigera-operator.yaml".to_string()])
            );
        }
    }
}
