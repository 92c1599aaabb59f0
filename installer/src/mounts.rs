//! The mounts below a directory, and unmounting them before the directory is removed: the
//! runtime's sandboxes leave their `/dev/shm` and network-namespace mounts under `/run`, the
//! kubelet its volumes under `/var/lib/kubelet`, and a directory that holds a mount point cannot
//! be removed ("Device or resource busy").

use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, umount2};

use crate::error::{Error, Result};

/// Where the kernel lists this process's mounts.
const MOUNTINFO: &str = "/proc/self/mountinfo";

/// The mount points in a `mountinfo` text (`proc(5)`: the fifth field, with space, tab,
/// newline and backslash written as octal escapes).
pub fn mount_points(mountinfo: &str) -> Vec<PathBuf> {
    mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|field| PathBuf::from(unescape(field)))
        .collect()
}

/// Undoes the kernel's `\ooo` escapes of a `mountinfo` field.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match octal {
            Some(digits) => {
                let value = digits.iter().fold(0u32, |v, d| v * 8 + u32::from(d - b'0'));
                out.push(u8::try_from(value).unwrap_or(b'?'));
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The mount points below `dir` (not `dir` itself: a disk mounted there is the host's),
/// deepest first: the order to unmount them in.
pub fn below(mount_points: &[PathBuf], dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> =
        mount_points.iter().filter(|m| m.starts_with(dir) && m.as_path() != dir).cloned().collect();
    found.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
    found.dedup();
    found
}

/// This process's mount points.
pub fn current() -> Result<Vec<PathBuf>> {
    let text = std::fs::read_to_string(MOUNTINFO).map_err(Error::io("read", Path::new(MOUNTINFO)))?;
    Ok(mount_points(&text))
}

/// Whether `dir` is a mount point.
pub fn is_mount_point(dir: &Path) -> Result<bool> {
    Ok(current()?.iter().any(|m| m == dir))
}

/// Unmounts (lazily: `MNT_DETACH`, the mount goes once nothing uses it) everything mounted
/// below `dir`, deepest first. Gives the mount points unmounted.
pub fn unmount_below(dir: &Path) -> Result<Vec<PathBuf>> {
    let found = below(&current()?, dir);
    for point in &found {
        unmount(point)?;
    }
    Ok(found)
}

/// Unmounts `point` lazily; a mount gone meanwhile, or under one already detached, is no error.
pub fn unmount(point: &Path) -> Result<()> {
    match umount2(point, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL | nix::errno::Errno::ENOENT) => Ok(()),
        Err(e) => Err(Error::io("unmount", point)(std::io::Error::from(e))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO_TEXT: &str = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
25 22 0:23 / /run rw,nosuid,nodev shared:5 - tmpfs tmpfs rw,mode=755
301 25 0:61 / /run/containerd/io.containerd.grpc.v1.cri/sandboxes/9f1c/shm rw shared:140 - tmpfs shm rw,size=65536k
302 25 0:4 net:[4026532300] /run/netns/cni-5a1e rw shared:141 - nsfs nsfs rw
310 22 0:70 / /var/lib/kubelet/pods/0c2e/volumes/kubernetes.io~projected/kube\\040api rw - tmpfs tmpfs rw
311 301 0:71 / /run/containerd/io.containerd.grpc.v1.cri/sandboxes/9f1c/shm/inner rw - tmpfs t rw
";

    #[test]
    fn mount_points_are_the_fifth_field_unescaped() {
        let points = mount_points(MOUNTINFO_TEXT);
        assert_eq!(points.len(), 6);
        assert_eq!(points[0], Path::new("/"));
        assert_eq!(
            points[4],
            Path::new("/var/lib/kubelet/pods/0c2e/volumes/kubernetes.io~projected/kube api")
        );
    }

    #[test]
    fn below_a_directory_deepest_first_and_nothing_beside_it() {
        let points = mount_points(MOUNTINFO_TEXT);
        assert_eq!(
            below(&points, Path::new("/run/containerd")),
            vec![
                PathBuf::from("/run/containerd/io.containerd.grpc.v1.cri/sandboxes/9f1c/shm/inner"),
                PathBuf::from("/run/containerd/io.containerd.grpc.v1.cri/sandboxes/9f1c/shm"),
            ]
        );
        // A path that only starts with the same letters is not below it.
        assert!(below(&points, Path::new("/run/contain")).is_empty());
        // Nor is the directory itself.
        assert!(below(&points, Path::new("/run/netns/cni-5a1e")).is_empty());
        assert_eq!(below(&points, Path::new("/var/lib/kubelet")).len(), 1);
    }

    #[test]
    fn escapes_that_are_not_octal_stay() {
        assert_eq!(unescape(r"a\040b\\c\9"), r"a b\\c\9");
        assert_eq!(unescape(r"tab\011end\134"), "tab\tend\\");
    }
}
