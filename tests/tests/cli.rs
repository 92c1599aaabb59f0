//! Snapshots of what a person reads: every command's help, and the rendered errors.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use kubeferry_tests::*;

fn help(cmd: &mut Command) -> String {
    let (code, stdout, stderr) = run(cmd);
    assert_eq!(code, 0, "{stderr}");
    stdout
}

#[test]
fn kubeferry_help() {
    insta::assert_snapshot!("kubeferry", help(kubeferry().arg("--help")));
    for sub in ["keygen", "build", "sign", "inspect", "verify"] {
        insta::assert_snapshot!(format!("kubeferry-{sub}"), help(kubeferry().args([sub, "--help"])));
    }
}

#[test]
fn stub_help() {
    insta::assert_snapshot!("stub", help(Command::new(stub_bin()).arg("--help")));
    for sub in ["verify", "list", "extract", "install"] {
        insta::assert_snapshot!(format!("stub-{sub}"), help(Command::new(stub_bin()).args([sub, "--help"])));
    }
}

#[test]
fn usage_errors_exit_2() {
    let (code, _, stderr) = run(kubeferry().args(["build", "rootfs", "--name", "x", "--version", "1"]));
    assert_eq!(code, 2);
    insta::assert_snapshot!("build-without-key", stderr);
    let (code, _, stderr) = run(kubeferry().args([
        "build",
        "rootfs",
        "--name",
        "x",
        "--version",
        "1",
        "--unsigned",
        "--arch",
        "mips",
    ]));
    assert_eq!(code, 2);
    insta::assert_snapshot!("build-unknown-arch", stderr);
}

#[test]
fn rendered_errors() {
    let dir = tempfile::tempdir().unwrap();
    let (code, _, stderr) = run(kubeferry()
        .args(["build", "--name", "bad/name", "--version", "1", "--unsigned"])
        .arg(dir.path()));
    assert_eq!(code, 1);
    insta::with_settings!({filters => vec![(r"/tmp/\.tmp[A-Za-z0-9]+", "[TMP]")]}, {
        insta::assert_snapshot!("bad-name", stderr);
    });

    let (code, _, stderr) = run(kubeferry().arg("inspect").arg("/nonexistent/edge.run"));
    assert_eq!(code, 1);
    insta::assert_snapshot!("inspect-missing-file", stderr);

    let not_a_bundle = dir.path().join("notes.txt");
    write(
        &not_a_bundle,
        "just some text that is long enough to hold a trailer, but it is not one at all. ".repeat(4),
    );
    let (code, _, stderr) = run(kubeferry().arg("inspect").arg(&not_a_bundle));
    assert_eq!(code, 3);
    insta::with_settings!({filters => vec![(r"/tmp/\.tmp[A-Za-z0-9]+", "[TMP]")]}, {
        insta::assert_snapshot!("inspect-not-a-bundle", stderr);
    });
}
