//! `kubeferry build` collects the images a rootfs names: those its registry/ does not hold are
//! pulled from Debian's docker-registry (docker distribution 2.8) on 127.0.0.1, holding images
//! pushed by skopeo; the signed manifest lists every image of the bundle's registry/, and the
//! registry extracted from the bundle serves them to skopeo through kubeferry's registry.
//!
//! Needs `skopeo`, `docker-registry` and `htpasswd` (`apt-get install -y docker-registry skopeo
//! apache2-utils`). Every process is killed when its guard drops, on failure too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use kubeferry_installer::registry::{self, Registry, RegistryConfig};
use kubeferry_tests::images::*;
use kubeferry_tests::{keygen, kubeferry, listing, stub_bin, write};

/// The images pushed once per test process (docker-registry is stopped; each test serves the
/// storage with its own).
fn fixture() -> &'static Pushed {
    static PUSHED: OnceLock<Pushed> = OnceLock::new();
    PUSHED.get_or_init(pushed)
}

/// `kubeferry build ROOTFS` for amd64 into `out`, with a cache and no docker configuration of
/// the host's: (exit code, stdout, stderr).
fn build(dir: &Path, rootfs: &Path, out: &Path, extra: &[&str]) -> (i32, String, String) {
    let mut cmd = kubeferry();
    cmd.args(["build", "--name", "img", "--version", "v1", "--unsigned", "--arch", "amd64", "-o"])
        .arg(out)
        .arg("--cache-dir")
        .arg(dir.join("cache"))
        .arg("--docker-config")
        .arg(dir.join("no-docker-config.json"))
        .arg(format!("--stub=amd64={}", stub_bin().display()))
        .args(extra)
        .arg(rootfs);
    kubeferry_tests::run(&mut cmd)
}

fn built(result: (i32, String, String)) -> (String, String) {
    let (code, stdout, stderr) = result;
    assert_eq!(code, 0, "the build failed:\n{stderr}");
    (stdout, stderr)
}

/// A rootfs whose manifests/app.yaml names `images` (one container each) and whose imageList
/// names `listed`.
fn rootfs(dir: &Path, images: &[String], listed: &[String]) -> PathBuf {
    let root = dir.join("rootfs");
    let containers: String = images
        .iter()
        .enumerate()
        .map(|(i, image)| format!("      - name: c{i}\n        image: {image}\n"))
        .collect();
    write(
        &root.join("manifests/app.yaml"),
        format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n  template:\n    spec:\n      \
             containers:\n{containers}"
        ),
    );
    write(&root.join("manifests/imageList"), listed.iter().map(|l| format!("{l}\n")).collect::<String>());
    write(&root.join("bin/tool"), "#!/bin/sh\n");
    root
}

fn manifest_of(bundle: &Path) -> serde_json::Value {
    let out = kubeferry_tests::ok(kubeferry().args(["inspect", "--json"]).arg(bundle));
    serde_json::from_str::<serde_json::Value>(&out).unwrap()["manifest"].clone()
}

fn serve(storage: &Path) -> Registry {
    let registry = Registry::start(RegistryConfig {
        root: storage.to_path_buf(),
        listen: "127.0.0.1:0".parse().unwrap(),
        threads: 4,
        users: None,
    })
    .unwrap();
    registry::wait_ready(registry.local_addr(), "127.0.0.1", None, Duration::from_secs(5)).unwrap();
    registry
}

fn inspect(dir: &Path, image: &str, raw: bool) -> serde_json::Value {
    let mut cmd = skopeo(dir);
    cmd.args(["inspect", "--tls-verify=false"]);
    if raw {
        cmd.arg("--raw");
    }
    serde_json::from_str(&ok(cmd.arg(format!("docker://{image}")))).unwrap()
}

/// Fills `rootfs/registry` as a cluster image's is filled: docker-registry with it as its
/// storage, skopeo copying `images` (source, name) from `from` into it.
fn fill_registry(dir: &Path, rootfs: &Path, from: SocketAddr, images: &[(&str, &str)]) {
    let work = dir.join("fill");
    fs::create_dir_all(&work).unwrap();
    let (_registry, addr) = docker_registry(&work, &rootfs.join("registry"));
    for (source, name) in images {
        ok(skopeo(dir)
            .args(["copy", "--src-tls-verify=false", "--dest-tls-verify=false"])
            .arg(format!("docker://{from}/{source}"))
            .arg(format!("docker://{addr}/{name}")));
    }
}

fn record<'a>(images: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    images
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == name)
        .unwrap_or_else(|| panic!("no image '{name}' in {images:#}"))
}

#[test]
fn build_pulls_what_the_rootfs_names_and_the_bundle_serves_it() {
    let f = fixture();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (_source, addr) = docker_registry(dir, &f.storage);
    let app = format!("{addr}/library/app:v1");
    let multi = format!("{addr}/library/multi:v1");
    let held = format!("{addr}/library/app:v2");
    let root = rootfs(dir, std::slice::from_ref(&app), &[multi.clone(), held.clone()]);
    // registry/ already holds app:v2 (named by imageList) and extra:v1 (named by nothing).
    fill_registry(
        dir,
        &root,
        addr,
        &[("library/app:v2", "library/app:v2"), ("library/app:v1", "library/extra:v1")],
    );
    let (key, public) = keygen(dir, "release");
    let out = dir.join("dist");
    let sign = ["--key", key.to_str().unwrap()];
    let signed_build = |out: &Path| {
        let mut cmd = kubeferry();
        cmd.args(["build", "--name", "img", "--version", "v1", "--arch", "amd64", "-o"])
            .arg(out)
            .args(["--cache-dir", dir.join("cache").to_str().unwrap()])
            .args(["--docker-config", dir.join("none.json").to_str().unwrap()])
            .arg(format!("--stub=amd64={}", stub_bin().display()))
            .args(sign)
            .arg(&root);
        built(kubeferry_tests::run(&mut cmd))
    };
    let (stdout, stderr) = signed_build(&out);
    let bundle = out.join("img-v1-linux-amd64.run");
    assert_eq!(stdout.trim(), bundle.to_str().unwrap());
    assert!(stderr.contains("amd64: the rootfs names 3 images, 1 of them in its registry/"), "{stderr}");
    // app:v1 and the amd64 image of multi:v1: two configs and two layers.
    assert!(stderr.contains("pulled 2 images for amd64 in "), "{stderr}");
    assert!(stderr.contains(": 4 blobs and "), "{stderr}");
    assert_eq!(
        listing(&out),
        ["img-v1-linux-amd64.run", "img-v1-linux-amd64.run.minisig", "img-v1-linux-amd64.run.sha256"]
    );

    let manifest = manifest_of(&bundle);
    let images = &manifest["images"];
    let names: Vec<&str> = images.as_array().unwrap().iter().map(|i| i["name"].as_str().unwrap()).collect();
    assert_eq!(names, [app.as_str(), held.as_str(), multi.as_str(), "library/extra:v1"]);
    let a = &f.made.app;
    let app_size = a.manifest.size + a.config.size + a.layer.size;
    assert_eq!(
        *record(images, &app),
        serde_json::json!({"name": app, "repository": "library/app", "digest": a.manifest.digest,
            "platforms": ["linux/amd64"], "size": app_size})
    );
    // Read from registry/: the same image, under its own name.
    assert_eq!(
        *record(images, &held),
        serde_json::json!({"name": held, "repository": "library/app", "digest": a.manifest.digest,
            "platforms": ["linux/amd64"], "size": app_size})
    );
    assert_eq!(record(images, "library/extra:v1")["repository"], "library/extra");
    // One platform of a tag: the amd64 image itself.
    let m = record(images, &multi);
    assert_eq!(m["digest"], f.made.amd64.manifest.digest.as_str());
    assert_eq!(m["platforms"], serde_json::json!(["linux/amd64"]));
    let text = kubeferry_tests::ok(kubeferry().arg("inspect").arg(&bundle));
    assert!(text.contains("images:     4 in registry/\n"), "{text}");
    assert!(text.contains(&format!("  {multi}  {}  linux/amd64  ", f.made.amd64.manifest.digest)), "{text}");
    // The stub's summary says the same.
    let summary = kubeferry_tests::ok(&mut Command::new(&bundle));
    assert!(summary.contains("images:     4 in registry/\n"), "{summary}");

    // Extracted, the bundle's registry/ serves every image to skopeo.
    let extracted = dir.join("extracted");
    kubeferry_tests::ok(
        Command::new(&bundle).arg("extract").arg("--to").arg(&extracted).arg("--trusted-key").arg(&public),
    );
    let served = serve(&extracted.join("registry"));
    let at = served.local_addr();
    let raw = inspect(dir, &format!("{at}/library/app:v1"), true);
    assert_eq!(raw["layers"][0]["digest"], a.layer.digest.as_str());
    assert_eq!(inspect(dir, &format!("{at}/library/multi:v1"), false)["Architecture"], "amd64");
    assert_eq!(inspect(dir, &format!("{at}/library/extra:v1"), false)["Digest"], a.manifest.digest.as_str());
    ok(skopeo(dir)
        .args(["copy", "--src-tls-verify=false"])
        .arg(format!("docker://{at}/library/app:v2"))
        .arg(format!("oci:{}:v2", dir.join("copy").display())));

    // A second build fetches no blob: the tags are asked again, the blobs come from the cache.
    let out2 = dir.join("dist2");
    let (_, stderr) = signed_build(&out2);
    assert!(stderr.contains("pulled 2 images for amd64 in "), "{stderr}");
    assert!(stderr.contains(": 0 blobs and "), "{stderr}");
    // The 4 blobs and the amd64 manifest the index names.
    assert!(stderr.contains(", 5 from the cache"), "{stderr}");
    assert_eq!(listing(&out2).len(), 3, "{:?}", listing(&out2));
    // The same input gives the same bundle.
    assert_eq!(fs::read(&bundle).unwrap(), fs::read(out2.join("img-v1-linux-amd64.run")).unwrap());
}

#[test]
fn a_missing_image_is_named_with_the_file_that_asks_for_it_and_nothing_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // No registry listens at this address.
    let addr = free_addr();
    let app = format!("{addr}/library/app:v1");
    let nope = format!("{addr}/library/nope:v1");
    let root = rootfs(dir, &[app.clone(), nope.clone()], std::slice::from_ref(&nope));
    let out = dir.join("dist");
    let (code, stdout, stderr) = build(dir, &root, &out, &["--no-pull"]);
    assert_eq!((code, stdout.as_str()), (1, ""), "{stderr}");
    // The tree is packed while its images are looked for: the partial bundle is dropped.
    let expected = format!(
        "amd64: the rootfs names 2 images, 0 of them in its registry/\nerror: could not build from '{}'\n  caused by: 2 images the rootfs names for amd64 are not in its \
             registry/ and --no-pull was given: '{app}' (named in manifests/app.yaml: Deployment/web \
             spec.template.spec.containers.[c0].image), '{nope}' (named in manifests/app.yaml: Deployment/web \
             spec.template.spec.containers.[c1].image; manifests/imageList:1)\n\nhint: build without --no-pull to \
             pull them, add them to registry/ ('kubeferry pull REF... --out ROOTFS/registry'), or pass \
             --allow-missing-images to build without them\n",
        root.display()
    );
    assert!(stderr.ends_with(&expected), "{stderr}");
    assert!(!out.exists() || listing(&out).is_empty(), "{:?}", listing(&out));

    // Allowed, with a warning each: the manifest lists no image.
    let (_, stderr) = built(build(dir, &root, &out, &["--no-pull", "--allow-missing-images"]));
    assert!(
        stderr.contains(&format!(
            "warning: '{nope}' (named in manifests/app.yaml: Deployment/web spec.template.spec.containers.[c1].image; \
             manifests/imageList:1) is not in registry/ and is left out of the amd64 bundle"
        )),
        "{stderr}"
    );
    assert_eq!(manifest_of(&out.join("img-v1-linux-amd64.run")).get("images"), None);
    let (code, _, stderr) = build(dir, &root, &dir.join("x"), &["--allow-missing-images"]);
    assert_eq!(code, 2, "{stderr}");

    // Many missing images: the first 20 named, then how many more; the error the same way.
    let many: Vec<String> = (0..25).map(|i| format!("{addr}/library/app{i:02}:v1")).collect();
    let root = rootfs(&dir.join("many"), &many, &[]);
    let (_, stderr) =
        built(build(dir, &root, &dir.join("many-out"), &["--no-pull", "--allow-missing-images"]));
    let warnings: Vec<&str> = stderr.lines().filter(|l| l.starts_with("warning: ")).collect();
    assert_eq!(warnings.len(), 21, "{stderr}");
    assert!(warnings[19].starts_with(&format!("warning: '{addr}/library/app19:v1'")), "{stderr}");
    assert_eq!(
        warnings[20],
        "warning: 25 images are left out of the amd64 bundle: the 20 above and 5 more ('kubeferry images ROOTFS' \
         lists every image the rootfs names, and where)"
    );
    let (code, _, stderr) = build(dir, &root, &dir.join("many-err"), &["--no-pull"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains(
            "app19:v1' (named in manifests/app.yaml: Deployment/web spec.template.spec.containers.[c19].image), and 5 more ("
        ),
        "{stderr}"
    );
    assert!(!stderr.contains("app20:v1"), "{stderr}");
}

#[test]
fn a_failed_pull_names_the_reference_and_the_file_and_leaves_nothing_in_the_output() {
    let f = fixture();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (_source, addr) = docker_registry(dir, &f.storage);
    // A Kubefile build: the file is named by its place in the rootfs, not in the context.
    let context = dir.join("context");
    write(
        &context.join("app.yaml"),
        format!(
            "kind: Pod\nmetadata: {{name: p}}\nspec:\n  containers:\n  - name: a\n    image: {addr}/library/app:v1\n  - name: b\n    image: {addr}/library/nope:v1\n"
        ),
    );
    write(&context.join("Kubefile"), "FROM scratch\nCOPY app.yaml manifests/\n");
    let out = dir.join("dist");
    let (code, _, stderr) = build(dir, &context, &out, &["-f", context.join("Kubefile").to_str().unwrap()]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains(&format!(
            "  caused by: could not pull '{addr}/library/nope:v1' (named in manifests/app.yaml: Pod/p \
             spec.containers.[b].image)\n  caused by: '{addr}/library/nope:v1' was not found in {addr} ("
        )),
        "{stderr}"
    );
    assert!(stderr.contains("hint: check the reference in the file that names it"), "{stderr}");
    assert!(!out.exists() || listing(&out).is_empty(), "{:?}", listing(&out));
}

#[test]
fn wrong_credentials_are_refused_and_right_ones_pull() {
    let f = fixture();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let auth_config = htpasswd(dir, "puller", "s3cret");
    let (_source, addr) = docker_registry_with(dir, &f.storage, &auth_config);
    let app = format!("{addr}/library/app:v1");
    let root = rootfs(dir, &[], std::slice::from_ref(&app));
    let out = dir.join("dist");
    let wrong = format!("{addr}=puller:wrong");
    let (code, _, stderr) = build(dir, &root, &out, &["--registry-auth", &wrong]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains(&format!(
            "  caused by: could not pull '{app}' (named in manifests/imageList:1)\n  caused by: {addr} refused \
             access to '{app}': the credentials for {addr} were refused"
        )),
        "{stderr}"
    );
    assert!(stderr.contains(&format!("hint: log in with 'docker login {addr}'")), "{stderr}");
    assert!(!out.exists() || listing(&out).is_empty(), "{:?}", listing(&out));
    let right = format!("{addr}=puller:s3cret");
    built(build(dir, &root, &out, &["--registry-auth", &right]));
    let manifest = manifest_of(&out.join("img-v1-linux-amd64.run"));
    assert_eq!(record(&manifest["images"], &app)["digest"], f.made.app.manifest.digest.as_str());
}
