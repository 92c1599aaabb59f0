//! The lifecycle hooks of sealer and sealos cluster images, run at the matching step so that
//! such images install unchanged; without them kubeferry's built-in steps do the job.
//!
//! | hook | sealos (a LABEL of the image: a script in `scripts/` and its arguments) | sealer (a script of the rootfs) | when |
//! |---|---|---|---|
//! | check | `check` | — | before the runtime step; a failure stops the install |
//! | init | `init` | `scripts/init.sh` | instead of the built-in runtime and kubernetes steps |
//! | init-registry | `init-registry` | `scripts/init-registry.sh` | instead of serving the registry |
//! | clean | `clean` | `scripts/clean.sh` | first thing of `uninstall` |
//! | clean-registry | `clean-registry` | `scripts/clean-registry.sh` | after `clean` |
//!
//! A sealos label runs as `bash LABEL` in `ROOTFS/scripts`, a sealer script as `bash
//! scripts/NAME.sh` in `ROOTFS`; both with the image's `ENV` values and the registry settings
//! (`registryDomain`, `registryPort`, `registryData`, ...) in their environment, as the
//! label's `$variables` expect.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

use super::InstallConfig;
use crate::error::Result;
use crate::host::Host;
use crate::manifest::ImageConfig;

/// sealer's script that starts the image's own registry.
pub const INIT_REGISTRY_SCRIPT: &str = "scripts/init-registry.sh";

/// A point of the lifecycle an image can hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    /// Checks before anything is installed.
    Check,
    /// Sets the node up: runtime, kubelet, kernel settings.
    Init,
    /// Starts the image's own registry.
    InitRegistry,
    /// Undoes `Init`.
    Clean,
    /// Undoes `InitRegistry`.
    CleanRegistry,
}

impl Hook {
    /// The sealos label's name.
    pub fn label(self) -> &'static str {
        match self {
            Hook::Check => "check",
            Hook::Init => "init",
            Hook::InitRegistry => "init-registry",
            Hook::Clean => "clean",
            Hook::CleanRegistry => "clean-registry",
        }
    }

    /// The sealer script, relative to the rootfs.
    fn sealer_script(self) -> Option<&'static str> {
        match self {
            Hook::Check => None,
            Hook::Init => Some("scripts/init.sh"),
            Hook::InitRegistry => Some(INIT_REGISTRY_SCRIPT),
            Hook::Clean => Some("scripts/clean.sh"),
            Hook::CleanRegistry => Some("scripts/clean-registry.sh"),
        }
    }
}

/// A hook found in the image: the shell command, where it runs, and where it came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HookCommand {
    /// The command, for `sh -c`.
    pub command: String,
    /// The directory it runs in.
    pub dir: PathBuf,
    /// "sealos LABEL init" or "sealer scripts/init.sh".
    pub origin: String,
}

/// The image's command for `hook`, if it has one: a sealos label first, else a sealer script.
pub fn find(hook: Hook, rootfs: &Path, image: &ImageConfig) -> Option<HookCommand> {
    if let Some(value) = image.labels.get(hook.label()).filter(|v| !v.trim().is_empty()) {
        return Some(HookCommand {
            command: format!("bash {value}"),
            dir: rootfs.join("scripts"),
            origin: format!("sealos LABEL {}", hook.label()),
        });
    }
    let script = hook.sealer_script()?;
    rootfs.join(script).is_file().then(|| HookCommand {
        command: format!("bash {script}"),
        dir: rootfs.to_path_buf(),
        origin: format!("sealer {script}"),
    })
}

/// The environment of a hook: the image's `ENV`, then the install's registry settings under
/// the names sealos uses.
pub fn environment(image: &ImageConfig, config: &InstallConfig, rootfs: &Path) -> BTreeMap<String, String> {
    let mut env = image.env.clone();
    env.insert("registryDomain".into(), config.registry_domain.clone());
    env.insert("registryPort".into(), config.registry_port.to_string());
    let data = config.registry_data.clone().unwrap_or_else(|| rootfs.join("registry"));
    env.insert("registryData".into(), data.display().to_string());
    if let Some(credentials) = &config.registry_credentials {
        env.insert("registryUsername".into(), credentials.username.clone());
        env.insert("registryPassword".into(), credentials.password.clone());
    }
    env.entry("registryConfig".into()).or_insert_with(|| rootfs.join("etc").display().to_string());
    env
}

/// Runs a hook through the host, so that its command and output go to the install log.
pub fn run(host: &dyn Host, hook: &HookCommand, env: &BTreeMap<String, String>) -> Result<String> {
    host.log(&format!("the image's hook ({}): {}", hook.origin, hook.command));
    host.run(Command::new("sh").arg("-c").arg(&hook.command).current_dir(&hook.dir).envs(env))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealos_label_wins_over_a_sealer_script() {
        let dir = tempfile::tempdir().unwrap();
        let rootfs = dir.path();
        let mut image = ImageConfig::default();
        assert_eq!(find(Hook::Init, rootfs, &image), None);
        std::fs::create_dir_all(rootfs.join("scripts")).unwrap();
        std::fs::write(rootfs.join("scripts/init.sh"), "true").unwrap();
        assert_eq!(
            find(Hook::Init, rootfs, &image),
            Some(HookCommand {
                command: "bash scripts/init.sh".into(),
                dir: rootfs.to_path_buf(),
                origin: "sealer scripts/init.sh".into()
            })
        );
        assert_eq!(find(Hook::Check, rootfs, &image), None, "sealer has no check script");
        image
            .labels
            .insert("init".into(), "init-cri.sh $registryDomain $registryPort && bash init.sh".into());
        let found = find(Hook::Init, rootfs, &image).unwrap();
        assert_eq!(found.command, "bash init-cri.sh $registryDomain $registryPort && bash init.sh");
        assert_eq!(found.dir, rootfs.join("scripts"));
        assert_eq!(found.origin, "sealos LABEL init");
    }
}
