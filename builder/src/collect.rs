//! Walking a CloudRootfs directory as the entries one architecture's bundle holds, in tree
//! order, one directory listing at a time: memory grows with the depth of the tree and the
//! width of one directory, never with the number of files.
//!
//! The common tree is everything but the top-level architecture folders (`amd64/`, `arm64/`,
//! ...); the target architecture's folder is laid over it, its files replacing common files of
//! the same path, as sealer's `COPY amd64 .` does. Metadata is normalised so that the same
//! tree gives the same bundle on any machine: directories 0755, files 0755 when their owner
//! may execute them and 0644 otherwise, owner root.

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use kubeferry_installer::arch::Arch;
use kubeferry_installer::manifest::check_symlink;

use crate::error::{Error, Result};
use crate::pack::{Content, PackEntry, PackKind};

/// Names of top-level folders that hold one architecture's overlay. Every one is left out of
/// the common tree, also those of architectures kubeferry does not build for yet.
pub const ARCH_FOLDERS: [&str; 8] =
    ["amd64", "arm64", "arm", "386", "ppc64le", "s390x", "riscv64", "loong64"];

/// The entries of the bundle for one architecture, read from the rootfs as they are asked
/// for. The first error ends the walk.
#[derive(Debug)]
pub struct Walk {
    common: PathBuf,
    overlay: Option<PathBuf>,
    stack: Vec<Frame>,
    first_names: HashMap<(u64, u64), String>,
}

/// A directory being walked: its children, sorted by name, and how far the walk has come.
#[derive(Debug)]
struct Frame {
    prefix: String,
    children: Vec<(String, Side)>,
    next: usize,
}

/// Where a child comes from: the overlay wins over the common tree, except that two
/// directories are merged.
#[derive(Debug)]
enum Side {
    Common(fs::Metadata),
    Overlay(fs::Metadata),
    Both,
}

/// Starts a walk of the rootfs at `root` for `arch`.
pub fn walk(root: &Path, arch: Arch) -> Result<Walk> {
    let meta = fs::metadata(root).map_err(Error::io("read", root))?;
    if !meta.is_dir() {
        return Err(Error::Unpackable {
            path: root.to_path_buf(),
            reason: "the rootfs must be a directory".into(),
        });
    }
    let overlay = root.join(arch.name());
    let mut walk = Walk {
        common: root.to_path_buf(),
        overlay: overlay.is_dir().then_some(overlay),
        stack: Vec::new(),
        first_names: HashMap::new(),
    };
    let frame = walk.list("", true, true)?;
    walk.stack.push(frame);
    Ok(walk)
}

/// Walks the whole tree once without reading any content: the number of entries and of
/// content bytes, and every error the build would meet, before anything is written.
pub fn measure(root: &Path, arch: Arch) -> Result<(u64, u64)> {
    let (mut entries, mut bytes) = (0, 0);
    for entry in walk(root, arch)? {
        if let PackKind::File { content, .. } = entry?.kind {
            bytes += content.size();
        }
        entries += 1;
    }
    Ok((entries, bytes))
}

impl Walk {
    fn source(&self, overlay: bool, path: &str) -> PathBuf {
        let base = if overlay { self.overlay.as_deref().unwrap_or(&self.common) } else { &self.common };
        if path.is_empty() { base.to_path_buf() } else { base.join(path) }
    }

    /// Lists the directory `prefix` on the sides that have it, merged and sorted by name.
    fn list(&self, prefix: &str, common: bool, overlay: bool) -> Result<Frame> {
        let mut children: std::collections::BTreeMap<String, Side> = std::collections::BTreeMap::new();
        for is_overlay in [false, true] {
            if !(if is_overlay { overlay && self.overlay.is_some() } else { common }) {
                continue;
            }
            let dir = self.source(is_overlay, prefix);
            for entry in fs::read_dir(&dir).map_err(Error::io("read", &dir))? {
                let entry = entry.map_err(Error::io("read", &dir))?;
                let full = entry.path();
                let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                    return Err(Error::Unpackable {
                        path: full,
                        reason: "its name is not valid UTF-8".into(),
                    });
                };
                let meta = fs::symlink_metadata(&full).map_err(Error::io("read", &full))?;
                if !is_overlay && prefix.is_empty() && meta.is_dir() && ARCH_FOLDERS.contains(&name.as_str())
                {
                    continue;
                }
                let side = match children.remove(&name) {
                    None if is_overlay => Side::Overlay(meta),
                    None => Side::Common(meta),
                    Some(Side::Common(common)) => {
                        if common.is_dir() != meta.is_dir() {
                            let path =
                                if prefix.is_empty() { name.clone() } else { format!("{prefix}/{name}") };
                            return Err(Error::Unpackable {
                                path: full,
                                reason: format!(
                                    "it is a directory on one side and not on the other of the common path '{path}'"
                                ),
                            });
                        }
                        if meta.is_dir() { Side::Both } else { Side::Overlay(meta) }
                    }
                    Some(other) => other,
                };
                children.insert(name, side);
            }
        }
        Ok(Frame { prefix: prefix.to_string(), children: children.into_iter().collect(), next: 0 })
    }

    fn next_entry(&mut self) -> Result<Option<PackEntry>> {
        let (path, side) = loop {
            let Some(frame) = self.stack.last_mut() else { return Ok(None) };
            if frame.next == frame.children.len() {
                self.stack.pop();
                continue;
            }
            let (name, side) =
                std::mem::replace(&mut frame.children[frame.next], (String::new(), Side::Both));
            frame.next += 1;
            let path = if frame.prefix.is_empty() { name } else { format!("{}/{name}", frame.prefix) };
            break (path, side);
        };
        let (meta, in_overlay) = match side {
            Side::Both => {
                let frame = self.list(&path, true, true)?;
                self.stack.push(frame);
                return Ok(Some(PackEntry { path, kind: PackKind::Dir { mode: 0o755 } }));
            }
            Side::Common(meta) => (meta, false),
            Side::Overlay(meta) => (meta, true),
        };
        let full = self.source(in_overlay, &path);
        let file_type = meta.file_type();
        let kind = if file_type.is_dir() {
            let frame = self.list(&path, !in_overlay, in_overlay)?;
            self.stack.push(frame);
            PackKind::Dir { mode: 0o755 }
        } else if file_type.is_file() {
            let mode = if meta.permissions().mode() & 0o100 != 0 { 0o755 } else { 0o644 };
            let linked = meta.nlink() > 1;
            if linked && let Some(first) = self.first_names.get(&(meta.dev(), meta.ino())) {
                PackKind::Hardlink { target: first.clone() }
            } else {
                if linked {
                    self.first_names.insert((meta.dev(), meta.ino()), path.clone());
                }
                PackKind::File { mode, linked, content: Content::Path { path: full, size: meta.len() } }
            }
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
            PackKind::Symlink { target }
        } else {
            return Err(Error::Unpackable {
                path: full,
                reason:
                    "it is a device, socket or fifo; a bundle holds only directories, regular files and links"
                        .into(),
            });
        };
        Ok(Some(PackEntry { path, kind }))
    }
}

impl Iterator for Walk {
    type Item = Result<PackEntry>;

    fn next(&mut self) -> Option<Self::Item> {
        match self.next_entry() {
            Ok(entry) => entry.map(Ok),
            Err(e) => {
                self.stack.clear();
                Some(Err(e))
            }
        }
    }
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

/// Reads [`Facts`] from the few files that tell them, the architecture's overlay first.
/// Files that cannot be read or parsed simply leave the fact unknown.
pub fn facts(root: &Path, arch: Arch) -> Facts {
    let find = |path: &str| {
        [root.join(arch.name()).join(path), root.join(path)]
            .into_iter()
            .find(|p| p.symlink_metadata().is_ok())
    };
    let cri = if find("cri/containerd.tar.gz").or_else(|| find("cri/containerd")).is_some() {
        Some("containerd".to_string())
    } else if find("cri/docker.tar.gz").or_else(|| find("cri/dockerd")).is_some() {
        Some("docker".to_string())
    } else {
        None
    };
    let kubernetes_version =
        ["etc/kubeadm.yml", "etc/kubeadm.yaml", "etc/kubeadm-config.yaml", "etc/kubeadm-config.yml"]
            .iter()
            .filter_map(|p| find(p))
            .filter(|p| p.metadata().is_ok_and(|m| m.is_file() && m.len() <= 1 << 20))
            .find_map(|p| fs::read(p).ok().as_deref().and_then(kubernetes_version));
    Facts { kubernetes_version, cri }
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

    fn collect(root: &Path, arch: Arch) -> Vec<PackEntry> {
        walk(root, arch).unwrap().collect::<Result<_>>().unwrap()
    }

    fn first_error(root: &Path, arch: Arch) -> String {
        let error = match walk(root, arch) {
            Ok(mut walk) => walk.find_map(Result::err).unwrap(),
            Err(e) => e,
        };
        error.to_string()
    }

    #[test]
    fn walks_in_tree_order_with_the_overlay_merged() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        for d in ["a/b", "a-b", "amd64/a/c", "amd64/z"] {
            fs::create_dir_all(r.join(d)).unwrap();
        }
        fs::write(r.join("a/b/f"), "1").unwrap();
        fs::write(r.join("amd64/a/b.txt"), "2").unwrap();
        let paths: Vec<String> = collect(r, Arch::Amd64).into_iter().map(|e| e.path).collect();
        assert_eq!(paths, ["a", "a/b", "a/b/f", "a/b.txt", "a/c", "a-b", "z"]);
        fs::write(r.join("amd64/a-b"), "not a dir").unwrap();
        let err = first_error(r, Arch::Amd64);
        assert!(
            err.contains("it is a directory on one side and not on the other of the common path 'a-b'"),
            "{err}"
        );
    }

    fn kinds(entries: &[PackEntry]) -> Vec<(String, String)> {
        entries
            .iter()
            .map(|e| {
                let k = match &e.kind {
                    PackKind::Dir { mode } => format!("dir {mode:o}"),
                    PackKind::File { mode, linked: false, .. } => format!("file {mode:o}"),
                    PackKind::File { mode, linked: true, .. } => format!("linked file {mode:o}"),
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

        let amd = collect(r, Arch::Amd64);
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
                ("etc/tool-again", "linked file 644"),
            ]
            .map(|(a, b)| (a.to_string(), b.to_string()))
        );
        let PackKind::File { content: Content::Path { path, .. }, .. } = &amd[2].kind else { panic!() };
        assert_eq!(fs::read_to_string(path).unwrap(), "amd64 build");
        assert_eq!(facts(r, Arch::Amd64).cri.as_deref(), Some("containerd"));
        assert_eq!(facts(r, Arch::Arm64).cri, None);
        assert_eq!(measure(r, Arch::Amd64).unwrap(), (8, 1 + 11 + 2 + 7));

        let arm = collect(r, Arch::Arm64);
        assert!(arm.iter().all(|e| !e.path.starts_with("cri")));
    }

    #[test]
    fn hard_links_become_links_to_the_first_name() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("a"), "same").unwrap();
        fs::hard_link(dir.path().join("a"), dir.path().join("b")).unwrap();
        let entries = collect(dir.path(), Arch::Amd64);
        assert_eq!(kinds(&entries)[0], ("a".to_string(), "linked file 644".to_string()));
        assert_eq!(kinds(&entries)[1], ("b".to_string(), "=> a".to_string()));
    }

    #[test]
    fn refuses_what_a_bundle_cannot_hold() {
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/usr/bin/env", dir.path().join("abs")).unwrap();
        let err = first_error(dir.path(), Arch::Amd64);
        assert!(err.ends_with("abs': unsafe entry 'abs': the link target '/usr/bin/env' is absolute; a bundle holds only relative links that stay inside the rootfs"), "{err}");

        let dir = tempfile::tempdir().unwrap();
        nix::unistd::mkfifo(&dir.path().join("fifo"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        let err = first_error(dir.path(), Arch::Amd64);
        assert!(err.ends_with("fifo': it is a device, socket or fifo; a bundle holds only directories, regular files and links"), "{err}");
    }

    #[test]
    fn reads_the_kubernetes_version_from_kubeadm_configuration() {
        let yaml = b"apiVersion: kubeadm.k8s.io/v1beta2\nkind: InitConfiguration\n---\napiVersion: kubeadm.k8s.io/v1beta2\nkind: ClusterConfiguration\nkubernetesVersion: v1.20.2\n";
        assert_eq!(kubernetes_version(yaml).as_deref(), Some("v1.20.2"));
        assert_eq!(kubernetes_version(b"kind: ClusterConfiguration\n"), None);
    }
}
