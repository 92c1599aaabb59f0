//! Collecting a CloudRootfs directory into the list of entries one architecture's bundle holds.
//!
//! The common tree is everything but the top-level architecture folders (`amd64/`, `arm64/`,
//! ...); the target architecture's folder is laid over it, its files replacing common files of
//! the same path, as sealer's `COPY amd64 .` does. Metadata is normalised so that the same
//! tree gives the same bundle on any machine: directories 0755, files 0755 when their owner
//! may execute them and 0644 otherwise, owner root.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use kubeferry_installer::arch::Arch;
use kubeferry_installer::manifest::check_symlink;

use crate::error::{Error, Result};
use crate::pack::{Content, PackEntry, PackKind};

/// Names of top-level folders that hold one architecture's overlay. Every one is left out of
/// the common tree, also those of architectures kubeferry does not build for yet.
pub const ARCH_FOLDERS: [&str; 8] =
    ["amd64", "arm64", "arm", "386", "ppc64le", "s390x", "riscv64", "loong64"];

/// Collects the entries of the bundle for `arch` from the rootfs at `root`, sorted by path.
pub fn collect(root: &Path, arch: Arch) -> Result<Vec<PackEntry>> {
    let meta = fs::metadata(root).map_err(Error::io("read", root))?;
    if !meta.is_dir() {
        return Err(Error::Unpackable {
            path: root.to_path_buf(),
            reason: "the rootfs must be a directory".into(),
        });
    }
    let mut tree = BTreeMap::new();
    walk(root, "", &mut tree, true)?;
    let overlay = root.join(arch.name());
    if overlay.is_dir() {
        let mut layer = BTreeMap::new();
        walk(&overlay, "", &mut layer, false)?;
        merge(&mut tree, layer, &overlay)?;
    }
    Ok(with_hardlinks(tree))
}

/// An entry found on disk, before hard links are resolved.
struct Found {
    kind: PackKind,
    /// Device and inode of a regular file with more than one link.
    inode: Option<(u64, u64)>,
}

fn walk(dir: &Path, prefix: &str, out: &mut BTreeMap<String, Found>, skip_arch: bool) -> Result<()> {
    let entries = fs::read_dir(dir).map_err(Error::io("read", dir))?;
    for entry in entries {
        let entry = entry.map_err(Error::io("read", dir))?;
        let full = entry.path();
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            return Err(Error::Unpackable { path: full, reason: "its name is not valid UTF-8".into() });
        };
        if skip_arch && prefix.is_empty() && ARCH_FOLDERS.contains(&name.as_str()) && full.is_dir() {
            continue;
        }
        let path = if prefix.is_empty() { name } else { format!("{prefix}/{name}") };
        let meta = fs::symlink_metadata(&full).map_err(Error::io("read", &full))?;
        let file_type = meta.file_type();
        let found = if file_type.is_dir() {
            walk(&full, &path, out, skip_arch)?;
            Found { kind: PackKind::Dir { mode: 0o755 }, inode: None }
        } else if file_type.is_file() {
            let mode = if meta.permissions().mode() & 0o100 != 0 { 0o755 } else { 0o644 };
            let content = Content::Path { path: full.clone(), size: meta.len() };
            let inode = (meta.nlink() > 1).then(|| (meta.dev(), meta.ino()));
            Found { kind: PackKind::File { mode, content }, inode }
        } else if file_type.is_symlink() {
            let target = fs::read_link(&full).map_err(Error::io("read the link", &full))?;
            let Some(target) = target.to_str().map(str::to_owned) else {
                return Err(Error::Unpackable {
                    path: full,
                    reason: "its link target is not valid UTF-8".into(),
                });
            };
            check_symlink(&path, &target).map_err(|e| Error::Unpackable {
                path: full.clone(),
                reason: format!("{e}; a bundle holds only relative links that stay inside the rootfs"),
            })?;
            Found { kind: PackKind::Symlink { target }, inode: None }
        } else {
            return Err(Error::Unpackable {
                path: full,
                reason:
                    "it is a device, socket or fifo; a bundle holds only directories, regular files and links"
                        .into(),
            });
        };
        out.insert(path, found);
    }
    Ok(())
}

/// Lays an architecture's overlay over the common tree.
fn merge(tree: &mut BTreeMap<String, Found>, layer: BTreeMap<String, Found>, overlay: &Path) -> Result<()> {
    for (path, found) in layer {
        let both_dirs = matches!(
            (tree.get(&path).map(|f| &f.kind), &found.kind),
            (Some(PackKind::Dir { .. }), PackKind::Dir { .. })
        );
        let conflict = match tree.get(&path) {
            Some(existing) => {
                matches!(existing.kind, PackKind::Dir { .. }) != matches!(found.kind, PackKind::Dir { .. })
            }
            None => false,
        };
        if conflict {
            return Err(Error::Unpackable {
                path: overlay.join(&path),
                reason: format!(
                    "it is a directory on one side and not on the other of the common path '{path}'"
                ),
            });
        }
        if !both_dirs {
            tree.insert(path, found);
        }
    }
    Ok(())
}

/// Turns the second and later names of one inode into hard links to the first.
fn with_hardlinks(tree: BTreeMap<String, Found>) -> Vec<PackEntry> {
    let mut first: HashMap<(u64, u64), String> = HashMap::new();
    tree.into_iter()
        .map(|(path, found)| {
            let kind = match found.inode {
                Some(inode) => match first.get(&inode) {
                    Some(target) => PackKind::Hardlink { target: target.clone() },
                    None => {
                        first.insert(inode, path.clone());
                        found.kind
                    }
                },
                None => found.kind,
            };
            PackEntry { path, kind }
        })
        .collect()
}

/// What the rootfs says about itself: the Kubernetes version (from the kubeadm configuration's
/// ClusterConfiguration) and the container runtime (from cri/).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Facts {
    /// `kubernetesVersion` of the ClusterConfiguration.
    pub kubernetes_version: Option<String>,
    /// `containerd` or `docker`.
    pub cri: Option<String>,
}

/// Reads [`Facts`] from the collected entries. Files that cannot be read or parsed simply
/// leave the fact unknown.
pub fn facts(entries: &[PackEntry]) -> Facts {
    let mut facts = Facts::default();
    for entry in entries {
        let PackKind::File { content, .. } = &entry.kind else { continue };
        match entry.path.as_str() {
            "cri/containerd.tar.gz" | "cri/containerd" => facts.cri = Some("containerd".into()),
            "cri/docker.tar.gz" | "cri/dockerd" => facts.cri = facts.cri.take().or(Some("docker".into())),
            "etc/kubeadm.yml" | "etc/kubeadm.yaml" | "etc/kubeadm-config.yaml" | "etc/kubeadm-config.yml" => {
                if let Some(version) = content.read_small().as_deref().and_then(kubernetes_version) {
                    facts.kubernetes_version = Some(version);
                }
            }
            _ => {}
        }
    }
    facts
}

fn kubernetes_version(yaml: &[u8]) -> Option<String> {
    use serde::Deserialize;
    for document in serde_yaml_ng::Deserializer::from_slice(yaml) {
        let Ok(value) = serde_yaml_ng::Value::deserialize(document) else { continue };
        if value.get("kind").and_then(|k| k.as_str()) == Some("ClusterConfiguration")
            && let Some(v) = value.get("kubernetesVersion").and_then(|v| v.as_str())
        {
            return Some(v.to_string());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(entries: &[PackEntry]) -> Vec<(String, String)> {
        entries
            .iter()
            .map(|e| {
                let k = match &e.kind {
                    PackKind::Dir { mode } => format!("dir {mode:o}"),
                    PackKind::File { mode, .. } => format!("file {mode:o}"),
                    PackKind::Symlink { target } => format!("-> {target}"),
                    PackKind::Hardlink { target } => format!("=> {target}"),
                };
                (e.path.clone(), k)
            })
            .collect()
    }

    #[test]
    fn overlays_the_architecture_folder_and_leaves_out_the_others() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        for d in ["bin", "etc", "amd64/bin", "arm64/bin", "amd64/cri"] {
            fs::create_dir_all(r.join(d)).unwrap();
        }
        fs::write(r.join("bin/common"), "x").unwrap();
        fs::write(r.join("bin/tool"), "generic").unwrap();
        fs::write(r.join("amd64/bin/tool"), "amd64 build").unwrap();
        fs::write(r.join("arm64/bin/tool"), "arm64 build").unwrap();
        fs::write(r.join("amd64/cri/containerd.tar.gz"), "gz").unwrap();
        fs::set_permissions(r.join("bin/common"), fs::Permissions::from_mode(0o700)).unwrap();
        std::os::unix::fs::symlink("../bin/common", r.join("etc/link")).unwrap();
        fs::hard_link(r.join("bin/tool"), r.join("etc/tool-again")).unwrap();

        let amd = collect(r, Arch::Amd64).unwrap();
        assert_eq!(
            kinds(&amd),
            [
                ("bin", "dir 755"),
                ("bin/common", "file 755"),
                ("bin/tool", "file 644"),
                ("cri", "dir 755"),
                ("cri/containerd.tar.gz", "file 644"),
                ("etc", "dir 755"),
                ("etc/link", "-> ../bin/common"),
                // bin/tool was replaced by the overlay, so its old second name stays a file.
                ("etc/tool-again", "file 644"),
            ]
            .map(|(a, b)| (a.to_string(), b.to_string()))
        );
        let PackKind::File { content: Content::Path { path, .. }, .. } = &amd[2].kind else { panic!() };
        assert_eq!(fs::read_to_string(path).unwrap(), "amd64 build");
        assert_eq!(facts(&amd).cri.as_deref(), Some("containerd"));

        let arm = collect(r, Arch::Arm64).unwrap();
        assert!(arm.iter().all(|e| !e.path.starts_with("cri")));
    }

    #[test]
    fn hard_links_become_links_to_the_first_name() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("a"), "same").unwrap();
        fs::hard_link(dir.path().join("a"), dir.path().join("b")).unwrap();
        let entries = collect(dir.path(), Arch::Amd64).unwrap();
        assert_eq!(kinds(&entries)[1], ("b".to_string(), "=> a".to_string()));
    }

    #[test]
    fn refuses_what_a_bundle_cannot_hold() {
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/usr/bin/env", dir.path().join("abs")).unwrap();
        let err = collect(dir.path(), Arch::Amd64).unwrap_err().to_string();
        assert!(err.ends_with("abs': unsafe entry 'abs': the link target '/usr/bin/env' is absolute; a bundle holds only relative links that stay inside the rootfs"), "{err}");

        let dir = tempfile::tempdir().unwrap();
        nix::unistd::mkfifo(&dir.path().join("fifo"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        let err = collect(dir.path(), Arch::Amd64).unwrap_err().to_string();
        assert!(err.ends_with("fifo': it is a device, socket or fifo; a bundle holds only directories, regular files and links"), "{err}");
    }

    #[test]
    fn reads_the_kubernetes_version_from_kubeadm_configuration() {
        let yaml = b"apiVersion: kubeadm.k8s.io/v1beta2\nkind: InitConfiguration\n---\napiVersion: kubeadm.k8s.io/v1beta2\nkind: ClusterConfiguration\nkubernetesVersion: v1.20.2\n";
        assert_eq!(kubernetes_version(yaml).as_deref(), Some("v1.20.2"));
        assert_eq!(kubernetes_version(b"kind: ClusterConfiguration\n"), None);
    }
}
