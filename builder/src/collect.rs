//! Walking a CloudRootfs directory as the entries one architecture's bundle holds, in tree
//! order, one directory listing at a time: memory grows with the depth of the tree and the
//! width of one directory, never with the number of files.
//!
//! The common tree is everything but the top-level architecture folders (`amd64/`, `arm64/`,
//! ...); the target architecture's folder is laid over it, its files replacing common files of
//! the same path, as sealer's `COPY amd64 .` does. Metadata is normalised so that the same
//! tree gives the same bundle on any machine: directories 0755, files 0755 when their owner
//! may execute them and 0644 otherwise, owner root.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use kubeferry_installer::arch::Arch;
use kubeferry_installer::manifest::{check_symlink, is_below};

use crate::error::{Error, Result};
use crate::pack::{Content, PackEntry, PackKind};

/// Names of top-level folders that hold one architecture's overlay. Every one is left out of
/// the common tree, also those of architectures kubeferry does not build for yet.
pub const ARCH_FOLDERS: [&str; 8] =
    ["amd64", "arm64", "arm", "386", "ppc64le", "s390x", "riscv64", "loong64"];

/// One source of the tree: a directory whose contents appear at `at` (`""` for the root), or a
/// file that appears as `at`. Later layers win over earlier ones, except that directories
/// merge, as the layers of an image do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layer {
    /// The directory or file on disk.
    pub source: PathBuf,
    /// Where it appears in the rootfs, `/`-separated, `""` for the root.
    pub at: String,
}

impl Layer {
    /// A whole directory at the root.
    pub fn root(source: &Path) -> Layer {
        Layer { source: source.to_path_buf(), at: String::new() }
    }
}

/// The entries of the bundle for one architecture, read from the layers as they are asked
/// for. The first error ends the walk.
#[derive(Debug)]
pub struct Walk {
    layers: Vec<Layer>,
    /// Layers whose top-level architecture folders are left out (the overlays are not).
    skip_arch: Vec<bool>,
    stack: Vec<Frame>,
    first_names: HashMap<(u64, u64), String>,
    /// Disk paths left out.
    except: HashSet<PathBuf>,
}

/// A directory being walked: its children, sorted by name, and how far the walk has come.
#[derive(Debug)]
struct Frame {
    prefix: String,
    children: Vec<(String, Child)>,
    next: usize,
}

/// What a name in a directory is after the layers are merged.
#[derive(Debug)]
enum Child {
    /// A directory, with the layers that have it (or that are placed below it).
    Dir(Vec<usize>),
    /// Anything else, from the last layer that has it.
    Leaf { full: PathBuf, meta: fs::Metadata },
}

/// Starts a walk of the rootfs at `root` for `arch`.
pub fn walk(root: &Path, arch: Arch) -> Result<Walk> {
    walk_layers(vec![Layer::root(root)], arch)
}

/// Starts a walk of `layers` merged, for `arch`. Top-level architecture folders of a layer
/// placed at the root are left out, and the one for `arch` is laid over everything, as
/// sealer's `COPY amd64 .` does.
pub fn walk_layers(layers: Vec<Layer>, arch: Arch) -> Result<Walk> {
    walk_layers_except(layers, arch, HashSet::new())
}

/// [`walk_layers`], leaving out the files and directories of the layers at the disk paths
/// `except` (the image archives imported into `registry/`: their bytes would be in the bundle
/// twice).
pub fn walk_layers_except(mut layers: Vec<Layer>, arch: Arch, except: HashSet<PathBuf>) -> Result<Walk> {
    for layer in &layers {
        fs::symlink_metadata(&layer.source).map_err(Error::io("read", &layer.source))?;
    }
    if let [only] = layers.as_slice()
        && only.at.is_empty()
        && !only.source.is_dir()
    {
        return Err(Error::Unpackable {
            path: only.source.clone(),
            reason: "the rootfs must be a directory".into(),
        });
    }
    let mut skip_arch = vec![true; layers.len()];
    let overlays: Vec<Layer> = layers
        .iter()
        .filter(|l| l.at.is_empty() && l.source.join(arch.name()).is_dir())
        .map(|l| Layer::root(&l.source.join(arch.name())))
        .collect();
    skip_arch.extend(overlays.iter().map(|_| false));
    layers.extend(overlays);
    let mut walk = Walk { skip_arch, stack: Vec::new(), first_names: HashMap::new(), layers, except };
    let all: Vec<usize> = (0..walk.layers.len()).collect();
    let frame = walk.list("", &all)?;
    walk.stack.push(frame);
    Ok(walk)
}

/// Walks the whole tree once without reading any content: the number of entries and of
/// content bytes, what the tree says about itself, and every error the build would meet,
/// before anything is written.
pub fn measure(walk: Walk) -> Result<(u64, u64, Facts)> {
    let (mut entries, mut bytes, mut facts) = (0, 0, Facts::default());
    for entry in walk {
        let entry = entry?;
        if let PackKind::File { content, .. } = &entry.kind {
            bytes += content.size();
            facts.learn(&entry.path, content);
        }
        entries += 1;
    }
    Ok((entries, bytes, facts))
}

impl Walk {
    /// Lists the directory `prefix` as the layers in `from` have it, merged and sorted by name.
    fn list(&self, prefix: &str, from: &[usize]) -> Result<Frame> {
        let mut children: std::collections::BTreeMap<String, Child> = std::collections::BTreeMap::new();
        let mut merge = |name: String, child: Child| {
            let merged = match (children.remove(&name), child) {
                (Some(Child::Dir(mut mine)), Child::Dir(theirs)) => {
                    mine.extend(theirs);
                    Child::Dir(mine)
                }
                (_, child) => child,
            };
            children.insert(name, merged);
        };
        for &index in from {
            let layer = &self.layers[index];
            let covers = layer.at.is_empty() || layer.at == prefix || is_below(prefix, &layer.at);
            let deeper = if prefix.is_empty() { !layer.at.is_empty() } else { is_below(&layer.at, prefix) };
            if covers {
                let relative = prefix.strip_prefix(layer.at.as_str()).unwrap_or("").trim_start_matches('/');
                let dir =
                    if relative.is_empty() { layer.source.clone() } else { layer.source.join(relative) };
                for entry in fs::read_dir(&dir).map_err(Error::io("read", &dir))? {
                    let entry = entry.map_err(Error::io("read", &dir))?;
                    let full = entry.path();
                    let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                        return Err(Error::Unpackable {
                            path: full,
                            reason: "its name is not valid UTF-8".into(),
                        });
                    };
                    if self.except.contains(&full) {
                        continue;
                    }
                    let meta = fs::symlink_metadata(&full).map_err(Error::io("read", &full))?;
                    if self.skip_arch[index]
                        && prefix.is_empty()
                        && meta.is_dir()
                        && ARCH_FOLDERS.contains(&name.as_str())
                    {
                        continue;
                    }
                    merge(
                        name,
                        if meta.is_dir() { Child::Dir(vec![index]) } else { Child::Leaf { full, meta } },
                    );
                }
            } else if deeper {
                // A layer placed further down: the next component of its place is a directory,
                // or the layer itself.
                let below = if prefix.is_empty() { layer.at.as_str() } else { &layer.at[prefix.len() + 1..] };
                match below.split_once('/') {
                    Some((name, _)) => merge(name.to_string(), Child::Dir(vec![index])),
                    None => {
                        let meta =
                            fs::symlink_metadata(&layer.source).map_err(Error::io("read", &layer.source))?;
                        let child = if meta.is_dir() {
                            Child::Dir(vec![index])
                        } else {
                            Child::Leaf { full: layer.source.clone(), meta }
                        };
                        merge(below.to_string(), child);
                    }
                }
            }
        }
        Ok(Frame { prefix: prefix.to_string(), children: children.into_iter().collect(), next: 0 })
    }

    fn next_entry(&mut self) -> Result<Option<PackEntry>> {
        let (path, child) = loop {
            let Some(frame) = self.stack.last_mut() else { return Ok(None) };
            if frame.next == frame.children.len() {
                self.stack.pop();
                continue;
            }
            let (name, child) =
                std::mem::replace(&mut frame.children[frame.next], (String::new(), Child::Dir(Vec::new())));
            frame.next += 1;
            let path = if frame.prefix.is_empty() { name } else { format!("{}/{name}", frame.prefix) };
            break (path, child);
        };
        let (full, meta) = match child {
            Child::Dir(from) => {
                let frame = self.list(&path, &from)?;
                self.stack.push(frame);
                return Ok(Some(PackEntry { path, kind: PackKind::Dir { mode: 0o755 } }));
            }
            Child::Leaf { full, meta } => (full, meta),
        };
        let file_type = meta.file_type();
        let kind = if file_type.is_file() {
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

impl Facts {
    /// Learns what a file of the tree tells: the runtime from cri/, the Kubernetes version from
    /// the kubeadm configuration. Files that cannot be read or parsed leave the fact unknown.
    fn learn(&mut self, path: &str, content: &Content) {
        match path {
            "cri/containerd.tar.gz" | "cri/containerd" => self.cri = Some("containerd".into()),
            "cri/docker.tar.gz" | "cri/dockerd" => self.cri = self.cri.take().or(Some("docker".into())),
            "etc/kubeadm.yml" | "etc/kubeadm.yaml" | "etc/kubeadm-config.yaml" | "etc/kubeadm-config.yml" => {
                if let Some(version) = content.read_small().as_deref().and_then(kubernetes_version) {
                    self.kubernetes_version = Some(version);
                }
            }
            _ => {}
        }
    }
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
        // A later layer wins: the overlay's file replaces the common directory and all in it.
        fs::write(r.join("a-b/inside"), "hidden").unwrap();
        fs::write(r.join("amd64/a-b"), "not a dir").unwrap();
        let kinds = kinds(&collect(r, Arch::Amd64));
        assert!(kinds.contains(&("a-b".to_string(), "file 644".to_string())), "{kinds:?}");
        assert!(!kinds.iter().any(|(p, _)| p == "a-b/inside"));
    }

    #[test]
    fn layers_placed_below_the_root_imply_their_directories() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        fs::create_dir_all(r.join("base/manifests")).unwrap();
        fs::create_dir_all(r.join("charts/x")).unwrap();
        fs::write(r.join("base/manifests/app.yaml"), "a").unwrap();
        fs::write(r.join("imageList"), "b").unwrap();
        fs::write(r.join("charts/x/values.yaml"), "c").unwrap();
        let layers = vec![
            Layer::root(&r.join("base")),
            Layer { source: r.join("imageList"), at: "manifests/imageList".into() },
            Layer { source: r.join("charts/x"), at: "deep/charts/x".into() },
        ];
        let walk = walk_layers(layers, Arch::Amd64).unwrap();
        let paths: Vec<String> = walk.map(|e| e.unwrap().path).collect();
        assert_eq!(
            paths,
            [
                "deep",
                "deep/charts",
                "deep/charts/x",
                "deep/charts/x/values.yaml",
                "manifests",
                "manifests/app.yaml",
                "manifests/imageList"
            ]
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
        let (entries, bytes, facts) = measure(walk(r, Arch::Amd64).unwrap()).unwrap();
        assert_eq!((entries, bytes), (8, 1 + 11 + 2 + 7));
        assert_eq!(facts.cri.as_deref(), Some("containerd"));
        assert_eq!(measure(walk(r, Arch::Arm64).unwrap()).unwrap().2.cri, None);

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
