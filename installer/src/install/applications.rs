//! The applications step: every YAML file of the rootfs's `manifests/` applied with the
//! installed kubectl as the cluster's administrator, in the order of their paths; then the
//! image's `ENTRYPOINT` and `CMD` (or `--cmd` in place of `CMD`), as sealer and sealos run them.
//!
//! The commands come from the signed manifest when the bundle was built from a Kubefile
//! (`kubeferry build -f`); otherwise from the `Kubefile` at the top of the rootfs, where
//! sealer's CloudRootfs keeps it (the last `ENTRYPOINT` and the last `CMD`). Each element of a
//! JSON array is one shell command; the shell form is one command. They run with the image's
//! `ENV` values in their environment. An image with neither has no `CMD` to run unless `--cmd`
//! gives one.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::kubeadm_init::ADMIN_CONF;
use super::{InstallConfig, KUBERNETES_BIN_DIR, kubernetes_bin};
use crate::cri;
use crate::error::{Error, Result};
use crate::host::Host;
use crate::manifest::ImageConfig;

/// The directory of manifests in the rootfs.
pub const MANIFESTS: &str = "manifests";
/// The image's build file, in the rootfs.
pub const KUBEFILE: &str = "Kubefile";

/// The image's start commands, from its Kubefile.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StartCommands {
    /// `ENTRYPOINT`'s commands.
    pub entrypoint: Vec<String>,
    /// `CMD`'s commands.
    pub cmd: Vec<String>,
}

/// Carries the step out.
pub fn run(host: &dyn Host, rootfs: &Path, image: &ImageConfig, config: &InstallConfig) -> Result<()> {
    let kubectl = host.path(&kubernetes_bin("kubectl"));
    let admin = host.path(Path::new(ADMIN_CONF));
    for manifest in manifests(rootfs)? {
        host.run(
            Command::new(&kubectl).arg("--kubeconfig").arg(&admin).arg("apply").arg("-f").arg(&manifest),
        )?;
    }
    for command in commands(image, rootfs, config)? {
        host.log(&format!("the image's command: {command}"));
        host.run(shell(host, rootfs, &admin, &command).envs(&image.env))?;
    }
    Ok(())
}

/// The YAML files of `rootfs/manifests`, at any depth, in the order of their paths.
pub fn manifests(rootfs: &Path) -> Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    let dir = rootfs.join(MANIFESTS);
    if dir.is_dir() {
        walk(&dir, &mut found)?;
    }
    found.sort();
    Ok(found)
}

fn walk(dir: &Path, found: &mut Vec<PathBuf>) -> Result<()> {
    for entry in fs::read_dir(dir).map_err(Error::io("read", dir))? {
        let path = entry.map_err(Error::io("read", dir))?.path();
        if path.is_dir() {
            walk(&path, found)?;
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            found.push(path);
        }
    }
    Ok(())
}

/// The commands to run: the image's `ENTRYPOINT`, then `--cmd` or the image's `CMD`.
pub fn commands(signed: &ImageConfig, rootfs: &Path, config: &InstallConfig) -> Result<Vec<String>> {
    let kubefile = rootfs.join(KUBEFILE);
    let image = if signed.cmd.is_some() || signed.entrypoint.is_some() {
        StartCommands {
            entrypoint: signed.entrypoint.clone().unwrap_or_default(),
            cmd: signed.cmd.clone().unwrap_or_default(),
        }
    } else if kubefile.is_file() {
        start_commands(&fs::read_to_string(&kubefile).map_err(Error::io("read", &kubefile))?)
    } else {
        StartCommands::default()
    };
    let cmd = match &config.cmd {
        Some(cmd) => vec![cmd.clone()],
        None => image.cmd,
    };
    Ok(image.entrypoint.into_iter().chain(cmd).filter(|c| !c.trim().is_empty()).collect())
}

/// `sh -c COMMAND` in the rootfs, with the installed executables first on the `PATH` and the
/// administrator's kubeconfig as `KUBECONFIG`, as sealer runs an image's `CMD`.
fn shell(host: &dyn Host, rootfs: &Path, admin: &Path, command: &str) -> Command {
    let path = [KUBERNETES_BIN_DIR, cri::BIN_DIR]
        .iter()
        .map(|dir| host.path(Path::new(dir)).display().to_string())
        .chain(std::env::var("PATH").ok())
        .collect::<Vec<_>>()
        .join(":");
    let mut shell = Command::new("sh");
    shell.arg("-c").arg(command).current_dir(rootfs).env("PATH", path).env("KUBECONFIG", admin);
    shell
}

/// The last `ENTRYPOINT` and `CMD` of a Kubefile.
pub fn start_commands(kubefile: &str) -> StartCommands {
    let mut found = StartCommands::default();
    let joined = kubefile.replace("\\\n", " ");
    for line in joined.lines() {
        let line = line.trim();
        let Some((instruction, rest)) = line.split_once(char::is_whitespace) else {
            continue;
        };
        let commands = || {
            let rest = rest.trim();
            match serde_json::from_str::<Vec<String>>(rest) {
                Ok(list) => list,
                Err(_) => vec![rest.to_string()],
            }
        };
        if instruction.eq_ignore_ascii_case("CMD") {
            found.cmd = commands();
        } else if instruction.eq_ignore_ascii_case("ENTRYPOINT") {
            found.entrypoint = commands();
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_start_commands_of_sealer_and_sealos_kubefiles() {
        let sealos = "FROM labring/kubernetes:v1.24.0\nENV version v1.1.0\nCOPY manifests ./manifests\n\
                      ENTRYPOINT [\"kubectl apply -f manifests/tigera-operator.yaml\"]\n\
                      CMD [\"kubectl apply -f manifests/custom-resources.yaml\"]\n";
        assert_eq!(
            start_commands(sealos),
            StartCommands {
                entrypoint: vec!["kubectl apply -f manifests/tigera-operator.yaml".into()],
                cmd: vec!["kubectl apply -f manifests/custom-resources.yaml".into()],
            }
        );
        let sealer = "FROM kubernetes:v1.19.8\nCOPY . .\n\
                      CMD kubectl apply -f etc/tigera-operator.yaml && \\\n  kubectl apply -f etc/custom-resources.yaml\n";
        assert_eq!(
            start_commands(sealer).cmd,
            ["kubectl apply -f etc/tigera-operator.yaml &&    kubectl apply -f etc/custom-resources.yaml"]
        );
        assert_eq!(
            start_commands("FROM scratch\nCMD [\"a\"]\ncmd [\"b\", \"c\"]\n").cmd,
            ["b", "c"],
            "the last"
        );
        assert_eq!(start_commands("FROM scratch\n"), StartCommands::default());
    }

    #[test]
    fn the_signed_manifest_wins_over_the_rootfs_kubefile_and_cmd_over_both() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(KUBEFILE), "FROM scratch\nCMD [\"from the rootfs\"]\n").unwrap();
        let mut config = super::super::tests::config();
        let none = ImageConfig::default();
        assert_eq!(commands(&none, dir.path(), &config).unwrap(), ["from the rootfs"]);
        let signed = ImageConfig {
            entrypoint: Some(vec!["first".into()]),
            cmd: Some(vec!["signed".into()]),
            ..ImageConfig::default()
        };
        assert_eq!(commands(&signed, dir.path(), &config).unwrap(), ["first", "signed"]);
        config.cmd = Some("given".into());
        assert_eq!(commands(&signed, dir.path(), &config).unwrap(), ["first", "given"]);
    }
}
