//! `kubeferry build -f Kubefile`: the rootfs assembled from a build context as the Kubefile
//! says, and what the Kubefile says about the image carried in the signed manifest.

use std::fs;

use kubeferry_tests::{fixture_rootfs, keygen, kubeferry, ok, run, stub_bin, write};

#[test]
fn a_kubefile_assembles_the_rootfs_and_its_metadata_goes_into_the_manifest() {
    let tmp = tempfile::tempdir().unwrap();
    let context = tmp.path().join("context");
    fs::create_dir_all(&context).unwrap();
    fixture_rootfs(&context.join("base"));
    write(&context.join("imageList"), "# extra images\nbusybox:1.36\n");
    write(&context.join("etc/daemon.json"), "{}\n");
    write(&context.join("amd64-extra/bin/only-amd64"), "amd64\n");
    write(
        &context.join("Kubefile"),
        "ARG EXTRA=extra\nFROM base/rootfs\nCOPY imageList manifests\nCOPY etc/daemon.json etc/\n\
         COPY ${ARCH}-${EXTRA} .\nENV registryDomain=sea.hub registryPort=5000\n\
         LABEL \"cluster.alpha.sealer.io/cluster-runtime-type\"=\"kubernetes\"\n\
         CMD [\"kubectl apply -f manifests/app.yaml\"]\n",
    );
    let (key, _) = keygen(tmp.path(), "release");
    let out = tmp.path().join("dist");
    ok(kubeferry()
        .args(["build", "--no-pull", "--allow-missing-images", "-f"])
        .arg(context.join("Kubefile"))
        .arg(&context)
        .args(["--name", "kf", "--version", "v1", "--key"])
        .arg(&key)
        .arg("--stub")
        .arg(format!("amd64={}", stub_bin().display()))
        .arg("-o")
        .arg(&out));
    let bundle = out.join("kf-v1-linux-amd64.run");
    let json: serde_json::Value =
        serde_json::from_str(&ok(kubeferry().args(["inspect", "--json"]).arg(&bundle))).unwrap();
    let image = &json["manifest"]["image"];
    assert_eq!(image["env"]["registryPort"], "5000");
    assert_eq!(image["labels"]["cluster.alpha.sealer.io/cluster-runtime-type"], "kubernetes");
    assert_eq!(image["cmd"], serde_json::json!(["kubectl apply -f manifests/app.yaml"]));
    let paths: Vec<&str> =
        json["entries"].as_array().unwrap().iter().map(|e| e["path"].as_str().unwrap()).collect();
    for want in ["manifests/imageList", "etc/daemon.json", "bin/only-amd64", "cri/containerd.tar.gz"] {
        assert!(paths.contains(&want), "{want} missing from {paths:?}");
    }
    assert!(!paths.iter().any(|p| p.starts_with("base") || p.starts_with("imageList")), "{paths:?}");
}

#[test]
fn a_bad_kubefile_is_refused_naming_its_line_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let context = tmp.path().join("context");
    write(&context.join("Kubefile"), "FROM scratch\nCOPY missing/* manifests\n");
    let out = tmp.path().join("dist");
    let (code, _, stderr) = run(kubeferry()
        .args(["build", "--no-pull", "--allow-missing-images", "-f"])
        .arg(context.join("Kubefile"))
        .arg(&context)
        .args(["--name", "kf", "--version", "v1", "--unsigned", "--stub"])
        .arg(format!("amd64={}", stub_bin().display()))
        .arg("-o")
        .arg(&out));
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("caused by: Kubefile line 2: 'missing/*' matches nothing in the build context"),
        "{stderr}"
    );
    assert!(!out.exists() || fs::read_dir(&out).unwrap().next().is_none());
}

#[test]
fn a_kubefile_builds_from_a_trusted_bundle_and_inherits_its_image_settings() {
    let tmp = tempfile::tempdir().unwrap();
    let context = tmp.path().join("context");
    fixture_rootfs(&context.join("base"));
    write(
        &context.join("base.Kubefile"),
        "FROM base/rootfs\nENV registryPort=5000 keep=yes\nCMD [\"base cmd\"]\n",
    );
    let (key, _) = keygen(tmp.path(), "release");
    let stub = format!("amd64={}", stub_bin().display());
    let build = |kubefile: &str, name: &str, key: &std::path::Path| {
        let mut command = kubeferry();
        command
            .args(["build", "--no-pull", "--allow-missing-images", "-f"])
            .arg(context.join(kubefile))
            .arg(&context)
            .args(["--name", name, "--version", "v1", "--stub", &stub, "--key"])
            .arg(key)
            .arg("-o")
            .arg(&context);
        command
    };
    ok(&mut build("base.Kubefile", "base", &key));
    write(&context.join("extra/added.txt"), "on top\n");
    write(
        &context.join("Kubefile"),
        "FROM base-v1-linux-${ARCH}.run\nCOPY extra etc\nENV registryPort=5001\n",
    );
    let out = ok(&mut build("Kubefile", "top", &key));
    assert!(out.trim().ends_with("top-v1-linux-amd64.run"), "{out}");
    let json: serde_json::Value = serde_json::from_str(&ok(kubeferry()
        .args(["inspect", "--json"])
        .arg(context.join("top-v1-linux-amd64.run"))))
    .unwrap();
    let image = &json["manifest"]["image"];
    assert_eq!(image["env"], serde_json::json!({"keep": "yes", "registryPort": "5001"}));
    assert_eq!(image["cmd"], serde_json::json!(["base cmd"]));
    let paths: Vec<&str> =
        json["entries"].as_array().unwrap().iter().map(|e| e["path"].as_str().unwrap()).collect();
    assert!(paths.contains(&"etc/added.txt") && paths.contains(&"cri/containerd.tar.gz"), "{paths:?}");
    assert!(!context.join(".kubeferry-base-amd64").exists(), "the unpacked base is removed");

    // A base signed by a key nobody trusts is refused before a byte of it is used.
    let (other, _) = keygen(tmp.path(), "other");
    let (code, _, stderr) = run(&mut build("Kubefile", "top2", &other));
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("Kubefile line 1: the base bundle"), "{stderr}");
    assert!(stderr.contains("is not trusted"), "{stderr}");
    assert!(
        !context.join("top2-v1-linux-amd64.run").exists() && !context.join(".kubeferry-base-amd64").exists()
    );
}
