//! What is installed, from the install's receipt, and whether it works: the steps done and
//! when, the versions of what runs, each service the install started, and the registry.

use std::fmt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde::Serialize;

use crate::cri;
use crate::error::Result;
use crate::host::Host;
use crate::install::state::{self, rfc3339};
use crate::install::{StepId, kubernetes_bin};
use crate::registry;

/// How long the registry may take to answer `/v2/`.
const REGISTRY_TIMEOUT: Duration = Duration::from_secs(2);

/// The status of an install.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Status {
    /// The bundle's name and version.
    pub name: String,
    /// SHA-256 of its manifest.
    pub bundle: String,
    /// Every step, in order.
    pub steps: Vec<StepStatus>,
    /// Versions of kubeferry and of what the install put in place, by program.
    pub versions: Vec<Version>,
    /// Each unit the install enabled or started.
    pub services: Vec<Service>,
    /// The bundled registry, when its step is done.
    pub registry: Option<RegistryStatus>,
    /// Every step done, every service active, the registry answering.
    pub healthy: bool,
}

/// One step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StepStatus {
    /// Its name.
    pub step: StepId,
    /// `done`, `running` (started, not finished: a failure or an interruption) or `todo`.
    pub state: &'static str,
    /// When it finished (RFC 3339, UTC).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished: Option<String>,
}

/// A program's version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Version {
    /// The program.
    pub program: String,
    /// What it says of itself.
    pub version: String,
}

/// A unit and whether it runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Service {
    /// The unit.
    pub unit: String,
    /// Whether it is active.
    pub active: bool,
}

/// The bundled registry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RegistryStatus {
    /// `domain:port`.
    pub address: String,
    /// Whether `/v2/` answers on 127.0.0.1 at its port.
    pub answers: bool,
}

/// The status of the install of `name`, or `None` when nothing is installed.
pub fn gather(host: &dyn Host, name: &str) -> Result<Option<Status>> {
    let Some(state) = state::load_state(host, name)? else {
        return Ok(None);
    };
    let steps: Vec<StepStatus> = state
        .steps()
        .iter()
        .map(|&step| StepStatus {
            step,
            state: if state.done.contains(&step) {
                "done"
            } else if state.running == Some(step) {
                "running"
            } else {
                "todo"
            },
            finished: state.finished.get(&step).map(|t| rfc3339(*t)),
        })
        .collect();

    let mut versions =
        vec![Version { program: "kubeferry".into(), version: env!("CARGO_PKG_VERSION").into() }];
    let programs: [(&str, &Path, &[&str]); 4] = [
        ("containerd", &Path::new(cri::BIN_DIR).join("containerd"), &["--version"]),
        ("docker", &Path::new(cri::BIN_DIR).join("dockerd"), &["--version"]),
        ("kubelet", &kubernetes_bin("kubelet"), &["--version"]),
        ("kubeadm", &kubernetes_bin("kubeadm"), &["version", "-o", "short"]),
    ];
    for (program, path, args) in programs {
        let path = host.path(path);
        if !path.is_file() {
            continue;
        }
        let version = host
            .run(Command::new(&path).args(args))
            .ok()
            .and_then(|out| version_of(&out))
            .unwrap_or_else(|| "unknown (it did not say)".into());
        versions.push(Version { program: program.into(), version });
    }

    let services: Vec<Service> = state
        .services
        .iter()
        .map(|unit| Service { unit: unit.clone(), active: host.service_active(unit) })
        .collect();

    let registry = match (&state.registry, state.done.contains(&StepId::Registry)) {
        (Some(address), true) => {
            let port = address.rsplit_once(':').and_then(|(_, p)| p.parse::<u16>().ok()).unwrap_or(5000);
            let local = std::net::SocketAddr::from(([127, 0, 0, 1], port));
            let answers = registry::wait_ready(local, address, None, REGISTRY_TIMEOUT).is_ok();
            Some(RegistryStatus { address: address.clone(), answers })
        }
        _ => None,
    };
    // The kubelet runs once kubeadm init has started it; before that, enabled and idle is right.
    let kubelet_idle_ok = !state.done.contains(&StepId::KubeadmInit);
    let healthy = steps.iter().all(|s| s.state == "done")
        && services.iter().all(|s| s.active || (kubelet_idle_ok && s.unit == "kubelet.service"))
        && registry.as_ref().is_none_or(|r| r.answers);
    Ok(Some(Status { name: state.name, bundle: state.bundle, steps, versions, services, registry, healthy }))
}

/// The version in what a program prints about itself: the first word that starts with a digit
/// or with `v` and a digit (`containerd github.com/containerd/containerd 1.6.20~ds1 ...`,
/// `Kubernetes v1.20.2`).
fn version_of(output: &str) -> Option<String> {
    output
        .split_whitespace()
        .find(|word| {
            let digits = word.strip_prefix('v').unwrap_or(word);
            digits.starts_with(|c: char| c.is_ascii_digit()) && digits.contains('.')
        })
        .map(str::to_string)
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let done = self.steps.iter().filter(|s| s.state == "done").count();
        let verdict = if self.healthy { "healthy" } else { "NOT healthy" };
        writeln!(f, "{}: {done} of {} steps done, {verdict}", self.name, self.steps.len())?;
        writeln!(f, "  bundle {}", self.bundle)?;
        writeln!(f, "steps:")?;
        for step in &self.steps {
            let when = step.finished.as_deref().unwrap_or("");
            writeln!(f, "  {:<13} {:<8} {when}", step.step.name(), step.state)?;
        }
        let versions: Vec<String> =
            self.versions.iter().map(|v| format!("{} {}", v.program, v.version)).collect();
        writeln!(f, "versions: {}", versions.join(", "))?;
        if !self.services.is_empty() {
            writeln!(f, "services:")?;
            for service in &self.services {
                let state = if service.active { "active" } else { "inactive" };
                writeln!(f, "  {:<28} {state}", service.unit)?;
            }
        }
        if let Some(registry) = &self.registry {
            let answers = if registry.answers { "answers" } else { "does NOT answer" };
            writeln!(f, "registry: {} {answers} on /v2/", registry.address)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_as_programs_print_them() {
        assert_eq!(
            version_of("containerd github.com/containerd/containerd 1.6.20~ds1 1.6.20~ds1-1+b1\n").as_deref(),
            Some("1.6.20~ds1")
        );
        assert_eq!(version_of("Kubernetes v1.20.2\n").as_deref(), Some("v1.20.2"));
        assert_eq!(version_of("v1.20.2\n").as_deref(), Some("v1.20.2"));
        assert_eq!(version_of("no version here"), None);
    }
}
