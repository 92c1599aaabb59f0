//! Finding every container image a cluster rootfs needs, and why, so that a build on a host
//! with network can collect them all into the bundle's registry.
//!
//! Places looked at, as sealer and sealos look at them:
//! - `manifests/`: every YAML or JSON document (Lists and custom resources included): any
//!   field named `image` that holds a string (containers, initContainers, ephemeralContainers
//!   of any workload, and whatever a CRD calls `image`), or a map of `registry`, `repository`,
//!   `tag` and `digest` as Helm values write it; and every file named `imageList`;
//! - `charts/`: every chart's `values.yaml`, read the same way, and, when a `helm` binary is
//!   on the PATH, the manifests `helm template` renders from each chart (`charts/NAME/Chart.yaml`);
//! - `images/shim/`: sealos's lists of images that nothing else names;
//! - the kubeadm configuration in `etc/` (ClusterConfiguration `imageRepository` and
//!   `kubernetesVersion`): the control plane images kubeadm will ask for.
//!
//! An image list has one reference per line; blank lines and `#` comments are allowed.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_yaml_ng::Value;

use crate::error::{Error, Result};
use crate::reference::Reference;

mod block;

/// Files in `etc/` that hold the kubeadm configuration.
const KUBEADM_FILES: [&str; 4] =
    ["etc/kubeadm.yml", "etc/kubeadm.yaml", "etc/kubeadm-config.yaml", "etc/kubeadm-config.yml"];

/// The images a rootfs needs: each reference as written, with every place that asked for it.
pub type Found = BTreeMap<String, Vec<String>>;

/// Finds every image reference in the rootfs directory at `root` (its common tree: the
/// architecture folders are not looked into).
pub fn discover(root: &Path) -> Result<Found> {
    let mut files = Vec::new();
    for dir in ["manifests", "charts", "images/shim"] {
        for file in files_below(&root.join(dir))? {
            files.push((shown(root, &file), file));
        }
    }
    for name in KUBEADM_FILES {
        let file = root.join(name);
        if file.is_file() {
            files.push((name.to_string(), file));
        }
    }
    discover_files(&files)
}

/// Whether the file at `path` (relative to the rootfs, `/`-separated) is one [`discover_files`]
/// reads.
pub fn is_source(path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path);
    (path.starts_with("manifests/")
        && (name == "imageList" || has_extension(Path::new(name), &["yaml", "yml", "json"])))
        || (path.starts_with("charts/") && (name == "values.yaml" || name == "values.yml"))
        || is_chart_file(path)
        || path.starts_with("images/shim/")
        || KUBEADM_FILES.contains(&path)
}

/// Finds every image reference in the files given as (path in the rootfs, file on disk): the
/// files of a rootfs for which [`is_source`] holds, in any order. The kubeadm configuration
/// read is the first of `etc/kubeadm.yml`, `etc/kubeadm.yaml`, `etc/kubeadm-config.yaml` and
/// `etc/kubeadm-config.yml` given.
pub fn discover_files(files: &[(String, PathBuf)]) -> Result<Found> {
    discover_with(files, helm().as_deref())
}

/// `charts/NAME/Chart.yaml`: a chart `helm template` can render.
fn is_chart_file(path: &str) -> bool {
    let parts: Vec<&str> = path.split('/').collect();
    matches!(parts.as_slice(), ["charts", _, "Chart.yaml"])
}

/// The `helm` on the PATH, if any.
fn helm() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join("helm")).find(|file| file.is_file())
}

/// [`discover_files`], rendering charts with `helm` when given.
fn discover_with(files: &[(String, PathBuf)], helm: Option<&Path>) -> Result<Found> {
    let mut files: Vec<&(String, PathBuf)> = files.iter().filter(|(shown, _)| is_source(shown)).collect();
    // manifests/ first, then charts/ and images/shim/, each sorted: the places of an image are
    // listed in that order.
    let group =
        |shown: &str| ["manifests/", "charts/", "images/shim/"].iter().position(|g| shown.starts_with(g));
    files.sort_by(|a, b| (group(&a.0), &a.0).cmp(&(group(&b.0), &b.0)));
    let mut found = Found::new();
    for (shown, file) in &files {
        for (reference, why) in scan_file(shown, file, helm)? {
            add(&mut found, file, &reference, why)?;
        }
    }
    let kubeadm = KUBEADM_FILES.iter().find_map(|name| files.iter().find(|(shown, _)| shown == name));
    if let Some((shown, file)) = kubeadm {
        kubeadm_images(file, shown, &mut found)?;
    }
    Ok(found)
}

/// Adds a reference read from `file`, in its canonical form (`busybox` is
/// `docker.io/library/busybox:latest`), so that two spellings of one image are one; a
/// reference that is not one is an error naming the file.
fn add(found: &mut Found, file: &Path, reference: &str, why: String) -> Result<()> {
    let reference = Reference::parse(reference)
        .map_err(|e| Error::Images { path: file.to_path_buf(), reason: e.to_string() })?;
    let whys = found.entry(reference.to_string()).or_default();
    if !whys.contains(&why) {
        whys.push(why);
    }
    Ok(())
}

fn shown(root: &Path, file: &Path) -> String {
    file.strip_prefix(root).unwrap_or(file).display().to_string()
}

fn has_extension(file: &Path, extensions: &[&str]) -> bool {
    file.extension().and_then(|e| e.to_str()).is_some_and(|e| extensions.contains(&e))
}

/// Regular files below `dir`, sorted; none when it does not exist.
fn files_below(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::io("read", &dir)(e)),
        };
        for entry in entries {
            let path = entry.map_err(Error::io("read", &dir))?.path();
            let meta = fs::metadata(&path).map_err(Error::io("read", &path))?;
            if meta.is_dir() {
                pending.push(path);
            } else if meta.is_file() {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// The images one file names: an image list, or YAML documents.
fn scan_file(shown: &str, file: &Path, helm: Option<&Path>) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    let list = shown.starts_with("images/shim/") || shown.rsplit('/').next() == Some("imageList");
    if is_chart_file(shown) {
        if let (Some(helm), Some(chart)) = (helm, file.parent()) {
            helm_template(helm, shown.trim_end_matches("/Chart.yaml"), chart, &mut out)?;
        }
    } else if list {
        list_file(file, shown, &mut out)?;
    } else if shown.starts_with("manifests/") || shown.starts_with("charts/") {
        yaml_file(file, shown, &mut out)?;
    }
    Ok(out)
}

/// The images of the manifests `helm template` renders from the chart in `chart` (shown as
/// `shown`), with the chart's default values: what the cluster gets when the chart is installed
/// as it is.
fn helm_template(helm: &Path, shown: &str, chart: &Path, found: &mut Vec<(String, String)>) -> Result<()> {
    let release =
        chart.file_name().map_or_else(|| "release".to_string(), |n| n.to_string_lossy().into_owned());
    let output = std::process::Command::new(helm)
        .arg("template")
        .arg(&release)
        .arg(chart)
        .output()
        .map_err(Error::io("run", helm))?;
    if !output.status.success() {
        return Err(Error::Images {
            path: chart.to_path_buf(),
            reason: format!(
                "'{} template' failed ({}): {}",
                helm.display(),
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ),
        });
    }
    scan_yaml(&output.stdout, &format!("{shown} (helm template)"), chart, found)
}

/// One reference per line; blank lines and `#` comments skipped.
fn list_file(file: &Path, shown: &str, found: &mut Vec<(String, String)>) -> Result<()> {
    let text = fs::read_to_string(file).map_err(Error::io("read", file))?;
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        if line.contains(char::is_whitespace) {
            return Err(Error::Images {
                path: file.to_path_buf(),
                reason: format!("line {} holds more than one word: '{line}'", i + 1),
            });
        }
        found.push((line.to_string(), format!("{shown}:{}", i + 1)));
    }
    Ok(())
}

fn yaml_file(file: &Path, shown: &str, found: &mut Vec<(String, String)>) -> Result<()> {
    let reader = std::io::BufReader::new(fs::File::open(file).map_err(Error::io("open", file))?);
    let mut documents = Documents { reader, next: Vec::new() };
    let mut number = 0;
    while let Some(document) = documents.next().map_err(Error::io("read", file))? {
        if !may_name_an_image(&document) {
            number += 1;
        } else if let Some(block::Found { name, images }) = block::scan(&document) {
            number += 1;
            add_places(shown, &name, images, found);
        } else {
            number = scan_yaml_from(&document, shown, file, number, found)?;
        }
    }
    Ok(())
}

/// Adds the images of a document named `name` (`KIND/NAME`, or empty), each with its field
/// path, to `found` with their places.
fn add_places(shown: &str, name: &str, images: Vec<(String, String)>, found: &mut Vec<(String, String)>) {
    for (reference, at) in images {
        let place = if name.is_empty() { at } else { format!("{name} {at}") };
        found.push((reference, format!("{shown}: {place}")));
    }
}

/// The YAML documents of a file, one at a time, so that what is read and parsed at once is a
/// document, not the file. A document ends where a line starts with the marker `---` (YAML
/// forbids that line inside any scalar), whose line begins the next one, or after a line `...`.
/// Lines before a document's first content line (comments, directives, markers) go with it.
struct Documents<R> {
    reader: R,
    /// The line that begins the next document, already read.
    next: Vec<u8>,
}

impl<R: std::io::BufRead> Documents<R> {
    fn next(&mut self) -> std::io::Result<Option<Vec<u8>>> {
        let mut document = std::mem::take(&mut self.next);
        let mut has_content = is_content(&document);
        loop {
            let start = document.len();
            if self.reader.read_until(b'\n', &mut document)? == 0 {
                return Ok(has_content.then_some(document));
            }
            let line = &document[start..];
            if has_content && is_document_start(line) {
                self.next = document.split_off(start);
                return Ok(Some(document));
            }
            if has_content && is_document_end(line) {
                return Ok(Some(document));
            }
            has_content |= is_content(line);
        }
    }
}

/// `---` alone or followed by a space or tab.
fn is_document_start(line: &[u8]) -> bool {
    line.strip_prefix(b"---").is_some_and(|rest| rest.first().is_none_or(|c| b" \t\r\n".contains(c)))
}

/// `...` alone or followed by a space or tab.
fn is_document_end(line: &[u8]) -> bool {
    line.strip_prefix(b"...").is_some_and(|rest| rest.first().is_none_or(|c| b" \t\r\n".contains(c)))
}

/// Whether a line of YAML holds more than blanks, a comment, a directive or a marker.
fn is_content(line: &[u8]) -> bool {
    let trimmed = line.trim_ascii();
    !(trimmed.is_empty()
        || trimmed.starts_with(b"#")
        || trimmed.starts_with(b"%")
        || trimmed == b"..."
        || trimmed == b"---")
}

/// Whether a YAML document can hold a field named `image`, the only place the finder takes an
/// image reference from (Helm maps included, which sit under `image`): the word `image`,
/// perhaps in quotes, followed by blanks and a colon, as a plain, quoted, flow, explicit or
/// JSON key is written. A document without one is not parsed at all: most of a rootfs's YAML
/// (custom resource definitions, configuration) names no image. A key spelled with escape
/// sequences or as an alias is not seen.
fn may_name_an_image(document: &[u8]) -> bool {
    memchr::memmem::find_iter(document, b"image").any(|at| {
        let rest = &document[at + b"image".len()..];
        let rest = rest.strip_prefix(b"\"").or_else(|| rest.strip_prefix(b"'")).unwrap_or(rest);
        rest.iter().find(|c| !c.is_ascii_whitespace()) == Some(&b':')
    })
}

/// The images of YAML documents (`file` names them in errors).
fn scan_yaml(bytes: &[u8], shown: &str, file: &Path, found: &mut Vec<(String, String)>) -> Result<()> {
    scan_yaml_from(bytes, shown, file, 0, found).map(|_| ())
}

/// [`scan_yaml`] of documents that follow `before` others in their file; returns the number
/// of documents read so far.
fn scan_yaml_from(
    bytes: &[u8],
    shown: &str,
    file: &Path,
    before: usize,
    found: &mut Vec<(String, String)>,
) -> Result<usize> {
    let mut number = before;
    for document in serde_yaml_ng::Deserializer::from_slice(bytes) {
        number += 1;
        let scan = Scan::deserialize(document).map_err(|e| Error::Images {
            path: file.to_path_buf(),
            reason: format!("document {number} is not valid YAML: {e}"),
        })?;
        let name = match (&scan.kind, &scan.metadata_name) {
            (Some(kind), Some(name)) => format!("{kind}/{name}"),
            (Some(kind), None) => kind.clone(),
            _ => String::new(),
        };
        let images = scan.images.into_iter().map(|(reference, mut path)| {
            path.reverse();
            (reference, path.join("."))
        });
        add_places(shown, &name, images.collect(), found);
    }
    Ok(number)
}

/// What the image finder keeps of a YAML node, read as a stream (no tree of the document is
/// built: a manifest of many megabytes costs the memory of its nesting, not of its size): the
/// image references below it, each with its field path (innermost segment first), and the
/// strings it needs to name places: the node's own text when it is a string, and its `name`,
/// `kind` and `metadata.name` when it is a map.
#[derive(Debug, Default)]
struct Scan {
    images: Vec<(String, Vec<String>)>,
    text: Option<String>,
    name: Option<String>,
    kind: Option<String>,
    metadata_name: Option<String>,
}

impl<'de> Deserialize<'de> for Scan {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> std::result::Result<Scan, D::Error> {
        deserializer.deserialize_any(ScanVisitor)
    }
}

struct ScanVisitor;

impl<'de> serde::de::Visitor<'de> for ScanVisitor {
    type Value = Scan;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any YAML node")
    }

    fn visit_bool<E>(self, _: bool) -> std::result::Result<Scan, E> {
        Ok(Scan::default())
    }
    fn visit_i64<E>(self, _: i64) -> std::result::Result<Scan, E> {
        Ok(Scan::default())
    }
    fn visit_u64<E>(self, _: u64) -> std::result::Result<Scan, E> {
        Ok(Scan::default())
    }
    fn visit_f64<E>(self, _: f64) -> std::result::Result<Scan, E> {
        Ok(Scan::default())
    }
    fn visit_unit<E>(self) -> std::result::Result<Scan, E> {
        Ok(Scan::default())
    }
    fn visit_none<E>(self) -> std::result::Result<Scan, E> {
        // An empty node, such as an item `-` with nothing after it.
        Ok(Scan::default())
    }
    fn visit_str<E>(self, text: &str) -> std::result::Result<Scan, E> {
        Ok(Scan { text: Some(text.to_string()), ..Scan::default() })
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<Scan, A::Error> {
        let mut scan = Scan::default();
        let mut i = 0usize;
        while let Some(item) = seq.next_element::<Scan>()? {
            if !item.images.is_empty() {
                let label = format!("[{}]", item.name.unwrap_or_else(|| i.to_string()));
                for (reference, mut path) in item.images {
                    path.push(label.clone());
                    scan.images.push((reference, path));
                }
            }
            i += 1;
        }
        Ok(scan)
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> std::result::Result<Scan, A::Error> {
        let mut scan = Scan::default();
        while let Some(key) = map.next_key::<Scan>()? {
            let Some(key) = key.text else {
                map.next_value::<serde::de::IgnoredAny>()?;
                continue;
            };
            if key == "image" {
                // Small as a rule: a reference, or a map of Helm values.
                let value: Value = map.next_value()?;
                let mut report =
                    |reference: &str, at: String| scan.images.push((reference.to_string(), vec![at]));
                match &value {
                    Value::String(reference) if looks_like_reference(reference) => report(reference, key),
                    Value::Mapping(_) => match helm_image(&value) {
                        Some(reference) => report(&reference, key),
                        None => walk(&value, &mut vec![key], &mut report),
                    },
                    _ => {}
                }
                continue;
            }
            let child: Scan = map.next_value()?;
            match key.as_str() {
                "name" => scan.name = child.text.clone(),
                "kind" => scan.kind = child.text.clone(),
                "metadata" => scan.metadata_name = child.name.clone(),
                _ => {}
            }
            for (reference, mut path) in child.images {
                path.push(key.clone());
                scan.images.push((reference, path));
            }
        }
        Ok(scan)
    }

    fn visit_enum<A: serde::de::EnumAccess<'de>>(self, data: A) -> std::result::Result<Scan, A::Error> {
        // A tagged node (`!tag value`): what matters is the value.
        use serde::de::VariantAccess as _;
        let (_, variant) = data.variant::<serde::de::IgnoredAny>()?;
        variant.newtype_variant::<Scan>()
    }
}

/// Calls `report` for every image reference below `value`, with the field path to it.
fn walk(value: &Value, path: &mut Vec<String>, report: &mut dyn FnMut(&str, String)) {
    match value {
        Value::Mapping(map) => {
            for (key, child) in map {
                let Some(key) = key.as_str() else { continue };
                path.push(key.to_string());
                match (key, child) {
                    ("image", Value::String(reference)) if looks_like_reference(reference) => {
                        report(reference, path.join("."));
                    }
                    ("image", Value::Mapping(_)) => match helm_image(child) {
                        Some(reference) => report(&reference, path.join(".")),
                        None => walk(child, path, report),
                    },
                    _ => walk(child, path, report),
                }
                path.pop();
            }
        }
        Value::Sequence(items) => {
            for (i, item) in items.iter().enumerate() {
                let label = item.get("name").and_then(Value::as_str).map_or(i.to_string(), str::to_string);
                path.push(format!("[{label}]"));
                walk(item, path, report);
                path.pop();
            }
        }
        Value::Tagged(tagged) => walk(&tagged.value, path, report),
        _ => {}
    }
}

/// A Helm-values image map: `repository` with `tag` or `digest`, and maybe `registry`.
fn helm_image(value: &Value) -> Option<String> {
    let field = |k: &str| value.get(k).and_then(scalar).filter(|s| !s.is_empty());
    let repository = field("repository")?;
    let name = match field("registry") {
        Some(registry) => format!("{registry}/{repository}"),
        None => repository,
    };
    match (field("digest"), field("tag")) {
        (Some(digest), _) => Some(format!("{name}@{digest}")),
        (None, Some(tag)) => Some(format!("{name}:{tag}")),
        (None, None) => Some(name),
    }
}

fn scalar(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Leaves out template placeholders and values that cannot name an image.
fn looks_like_reference(text: &str) -> bool {
    !text.is_empty() && !text.contains(char::is_whitespace) && !text.contains("{{")
}

/// kubeadm's control plane images for a ClusterConfiguration.
fn kubeadm_images(file: &Path, shown: &str, found: &mut Found) -> Result<()> {
    let bytes = fs::read(file).map_err(Error::io("read", file))?;
    for document in serde_yaml_ng::Deserializer::from_slice(&bytes) {
        let Ok(value) = Value::deserialize(document) else { continue };
        if value.get("kind").and_then(Value::as_str) != Some("ClusterConfiguration") {
            continue;
        }
        let Some(version) = value.get("kubernetesVersion").and_then(Value::as_str) else { continue };
        let minor = version.split('.').nth(1).and_then(|m| m.parse::<u32>().ok()).unwrap_or(0);
        // kubeadm's default repository moved to registry.k8s.io in v1.25.
        let default = if minor >= 25 { "registry.k8s.io" } else { "k8s.gcr.io" };
        let repository = value.get("imageRepository").and_then(Value::as_str).unwrap_or(default);
        let Some(images) = control_plane_images(repository, version) else {
            return Err(Error::Images {
                path: file.to_path_buf(),
                reason: format!(
                    "kubernetesVersion '{version}' is not one whose images kubeferry knows (v1.20 to v1.30); \
                     list them in manifests/imageList"
                ),
            });
        };
        for (image, reference) in images {
            add(found, file, &reference, format!("{shown}: ClusterConfiguration {version} ({image})"))?;
        }
    }
    Ok(())
}

/// The images `kubeadm config images list` prints for a version and repository: the four
/// control plane components, pause, etcd and CoreDNS, with the versions kubeadm pins.
pub fn control_plane_images(repository: &str, version: &str) -> Option<Vec<(&'static str, String)>> {
    let minor: u32 = version.strip_prefix('v')?.split('.').nth(1)?.parse().ok()?;
    let (pause, etcd, coredns) = match minor {
        20 => ("3.2", "3.4.13-0", "1.7.0"),
        21 => ("3.4.1", "3.4.13-0", "v1.8.0"),
        22 => ("3.5", "3.5.0-0", "v1.8.4"),
        23 => ("3.6", "3.5.1-0", "v1.8.6"),
        24 => ("3.7", "3.5.3-0", "v1.8.6"),
        25 => ("3.8", "3.5.4-0", "v1.9.3"),
        26 => ("3.9", "3.5.6-0", "v1.9.3"),
        27 => ("3.9", "3.5.7-0", "v1.10.1"),
        28 => ("3.9", "3.5.9-0", "v1.10.1"),
        29 => ("3.9", "3.5.10-0", "v1.11.1"),
        30 => ("3.9", "3.5.12-0", "v1.11.1"),
        _ => return None,
    };
    // The default repositories keep CoreDNS in a sub-repository; others hold it at the top.
    let coredns_name = if minor >= 21 && (repository == "registry.k8s.io" || repository == "k8s.gcr.io") {
        "coredns/coredns"
    } else {
        "coredns"
    };
    let mut images: Vec<(&'static str, String)> =
        ["kube-apiserver", "kube-controller-manager", "kube-scheduler", "kube-proxy"]
            .into_iter()
            .map(|c| (c, format!("{repository}/{c}:{version}")))
            .collect();
    images.push(("pause", format!("{repository}/pause:{pause}")));
    images.push(("etcd", format!("{repository}/etcd:{etcd}")));
    images.push(("coredns", format!("{repository}/{coredns_name}:{coredns}")));
    Some(images)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(root: &Path, path: &str, text: &str) {
        let full = root.join(path);
        fs::create_dir_all(full.parent().unwrap()).unwrap();
        fs::write(full, text).unwrap();
    }

    #[test]
    fn finds_every_place_an_image_can_hide() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        write(
            r,
            "manifests/app.yaml",
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec:\n  template:\n    spec:\n\
             \x20     initContainers: [{name: init, image: busybox:1.36}]\n\
             \x20     containers:\n      - name: nginx\n        image: nginx@sha256:0000000000000000000000000000000000000000000000000000000000000000\n\
             \x20     ephemeralContainers: [{name: dbg, image: 'docker.io/library/alpine:3'}]\n\
             ---\napiVersion: v1\nkind: List\nitems:\n- kind: Pod\n  metadata: {name: p}\n  spec:\n\
             \x20   containers: [{name: c, image: 'quay.io/x/y:1'}]\n\
             ---\napiVersion: operator.tigera.io/v1\nkind: Installation\nmetadata: {name: default}\n\
             spec: {registry: sea.hub:5000, calicoNetwork: {image: 'calico/node:v3.26.1'}}\n",
        );
        write(
            r,
            "manifests/imageList",
            "# control plane extras\n\nregistry.k8s.io/pause:3.6  # sandbox\nbusybox:1.36\n",
        );
        write(r, "manifests/notes.txt", "image: not-read:1\n");
        // A name after the image, metadata after the spec, an image map that is no Helm value.
        write(
            r,
            "manifests/late.yaml",
            "kind: Pod\nspec:\n  containers:\n  - image: late:1\n    name: after\n  - image: {spec: {image: deep:2}}\n\
             metadata: {name: q}\n",
        );
        write(
            r,
            "charts/ingress/values.yaml",
            "controller:\n  image:\n    registry: registry.k8s.io\n    repository: ingress-nginx/controller\n    tag: v1.8.1\n\
             defaultBackend:\n  image:\n    repository: defaultbackend\n    digest: sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\n\
             templated: {image: '{{ .Values.x }}'}\n",
        );
        write(r, "charts/ingress/templates/d.yaml", "image: {{ .Values.image }}\n");
        write(r, "images/shim/extra", "ghcr.io/a/b:2\n");
        write(
            r,
            "etc/kubeadm.yml",
            "kind: InitConfiguration\n---\nkind: ClusterConfiguration\nkubernetesVersion: v1.20.2\nimageRepository: sea.hub:5000/library\n",
        );
        let found = discover(r).unwrap();
        let refs: Vec<&str> = found.keys().map(String::as_str).collect();
        assert_eq!(
            refs,
            [
                "docker.io/calico/node:v3.26.1",
                "docker.io/library/alpine:3",
                "docker.io/library/busybox:1.36",
                "docker.io/library/deep:2",
                "docker.io/library/defaultbackend@sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
                "docker.io/library/late:1",
                "docker.io/library/nginx@sha256:0000000000000000000000000000000000000000000000000000000000000000",
                "ghcr.io/a/b:2",
                "quay.io/x/y:1",
                "registry.k8s.io/ingress-nginx/controller:v1.8.1",
                "registry.k8s.io/pause:3.6",
                "sea.hub:5000/library/coredns:1.7.0",
                "sea.hub:5000/library/etcd:3.4.13-0",
                "sea.hub:5000/library/kube-apiserver:v1.20.2",
                "sea.hub:5000/library/kube-controller-manager:v1.20.2",
                "sea.hub:5000/library/kube-proxy:v1.20.2",
                "sea.hub:5000/library/kube-scheduler:v1.20.2",
                "sea.hub:5000/library/pause:3.2",
            ]
        );
        assert_eq!(
            found["docker.io/library/busybox:1.36"],
            [
                "manifests/app.yaml: Deployment/web spec.template.spec.initContainers.[init].image",
                "manifests/imageList:4"
            ]
        );
        assert_eq!(found["quay.io/x/y:1"], ["manifests/app.yaml: List items.[0].spec.containers.[c].image"]);
        assert_eq!(
            found["docker.io/library/late:1"],
            ["manifests/late.yaml: Pod/q spec.containers.[after].image"]
        );
        assert_eq!(
            found["docker.io/library/deep:2"],
            ["manifests/late.yaml: Pod/q spec.containers.[1].image.spec.image"]
        );
        assert_eq!(
            found["docker.io/calico/node:v3.26.1"],
            ["manifests/app.yaml: Installation/default spec.calicoNetwork.image"]
        );
        assert_eq!(
            found["sea.hub:5000/library/etcd:3.4.13-0"],
            ["etc/kubeadm.yml: ClusterConfiguration v1.20.2 (etcd)"]
        );
    }

    /// A stand-in for helm (Debian has none): prints a rendered Deployment naming an image
    /// of the chart's values, and fails for a chart named `broken`.
    fn standin_helm(dir: &Path) -> PathBuf {
        let helm = dir.join("helm");
        fs::write(
            &helm,
            "#!/bin/sh\n[ \"$1\" = template ] || exit 2\n[ \"$2\" = broken ] && { echo 'Error: parse error in templates/x.yaml' >&2; exit 1; }\n\
             printf -- '---\\n# Source: %s/templates/d.yaml\\nkind: Deployment\\nmetadata: {name: %s-web}\\nspec: {template: {spec: {containers: [{name: web, image: rendered/%s:1}]}}}\\n' \"$2\" \"$2\" \"$2\"\n",
        )
        .unwrap();
        fs::set_permissions(&helm, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        helm
    }

    #[test]
    fn charts_are_rendered_with_helm_when_there_is_one() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("rootfs");
        write(&root, "charts/ingress/Chart.yaml", "apiVersion: v2\nname: ingress\nversion: 1.0.0\n");
        write(&root, "charts/ingress/values.yaml", "image: {repository: ingress/controller, tag: v1}\n");
        let files: Vec<(String, PathBuf)> = ["charts/ingress/Chart.yaml", "charts/ingress/values.yaml"]
            .iter()
            .map(|p| (p.to_string(), root.join(p)))
            .collect();
        let helm = standin_helm(dir.path());
        let found = discover_with(&files, Some(&helm)).unwrap();
        assert_eq!(
            found["docker.io/rendered/ingress:1"],
            [
                "charts/ingress (helm template): Deployment/ingress-web spec.template.spec.containers.[web].image"
            ]
        );
        assert!(found.contains_key("docker.io/ingress/controller:v1"), "the values are read too");
        // Without helm, the values alone.
        let found = discover_with(&files, None).unwrap();
        assert_eq!(found.keys().collect::<Vec<_>>(), ["docker.io/ingress/controller:v1"]);
        // A chart helm cannot render is an error that names it and says why.
        write(&root, "charts/broken/Chart.yaml", "apiVersion: v2\nname: broken\nversion: 1.0.0\n");
        let files = vec![("charts/broken/Chart.yaml".to_string(), root.join("charts/broken/Chart.yaml"))];
        let err = discover_with(&files, Some(&helm)).unwrap_err().to_string();
        assert!(
            err.contains("charts/broken") && err.contains("template' failed") && err.contains("parse error"),
            "{err}"
        );
    }

    #[test]
    fn a_document_is_parsed_only_when_it_can_hold_an_image_field() {
        for key in [
            "image: x",
            "image : x",
            "\"image\": \"x\"",
            "'image':\n  x",
            "{name: a, image: x}",
            "? image\n: x",
            "spec: {\"containers\":[{\"image\"  :\"x\"}]}",
            "sideimage: x",
        ] {
            assert!(may_name_an_image(key.as_bytes()), "{key}");
        }
        for text in
            ["imagePullPolicy: Always", "description: pull the image, then run it", "images:\n- a", ""]
        {
            assert!(!may_name_an_image(text.as_bytes()), "{text}");
        }
        // Such a document is not read at all, so not even its syntax is checked; one that may
        // hold an image is.
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "manifests/a.yaml", "description: no image here [\n---\nimage: busybox:1\n");
        assert_eq!(discover(dir.path()).unwrap().keys().collect::<Vec<_>>(), ["docker.io/library/busybox:1"]);
    }

    #[test]
    fn a_file_is_read_a_document_at_a_time() {
        let text =
            "# head\n%YAML 1.2\n---\na: 1\n--- |\n  text\n---\n---x: 2\nb: 3\n...\n# tail\n---\nc: 4\n";
        let mut documents = Documents { reader: text.as_bytes(), next: Vec::new() };
        let mut all = Vec::new();
        while let Some(d) = documents.next().unwrap() {
            all.push(String::from_utf8(d).unwrap());
        }
        assert_eq!(
            all,
            [
                "# head\n%YAML 1.2\n---\na: 1\n",
                "--- |\n  text\n",
                "---\n---x: 2\nb: 3\n...\n",
                "# tail\n---\nc: 4\n"
            ]
        );
        // Each part is whole YAML: together they are the documents the file holds.
        let parts: usize = all.iter().map(|d| serde_yaml_ng::Deserializer::from_str(d).count()).sum();
        assert_eq!(parts, serde_yaml_ng::Deserializer::from_str(text).count());
    }

    #[test]
    fn bad_input_is_named() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "manifests/bad.yaml", "# two documents\n---\na: 1\n---\nimage: [\n");
        let err = discover(dir.path()).unwrap_err().to_string();
        assert!(err.contains("manifests/bad.yaml") && err.contains("document 2 is not valid YAML"), "{err}");

        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "manifests/imageList", "a:1\nb:1 c:2\n");
        let err = discover(dir.path()).unwrap_err().to_string();
        assert!(err.ends_with("line 2 holds more than one word: 'b:1 c:2'"), "{err}");

        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "manifests/imageList", "Bad/Name:1\n");
        let err = discover(dir.path()).unwrap_err().to_string();
        assert!(err.contains("manifests/imageList' names: invalid image reference 'Bad/Name:1'"), "{err}");
    }

    #[test]
    fn kubeadm_1_21_and_later_keep_coredns_in_a_sub_repository_of_the_default() {
        // `kubeadm config images list --kubernetes-version v1.20.2` of the real kubeadm v1.20.2:
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "etc/kubeadm.yaml", "kind: ClusterConfiguration\nkubernetesVersion: v1.20.2\n");
        let found = discover(dir.path()).unwrap();
        let refs: Vec<&str> = found.keys().map(String::as_str).collect();
        assert_eq!(
            refs,
            [
                "k8s.gcr.io/coredns:1.7.0",
                "k8s.gcr.io/etcd:3.4.13-0",
                "k8s.gcr.io/kube-apiserver:v1.20.2",
                "k8s.gcr.io/kube-controller-manager:v1.20.2",
                "k8s.gcr.io/kube-proxy:v1.20.2",
                "k8s.gcr.io/kube-scheduler:v1.20.2",
                "k8s.gcr.io/pause:3.2",
            ]
        );
        let images = control_plane_images("registry.k8s.io", "v1.28.4").unwrap();
        assert!(images.contains(&("coredns", "registry.k8s.io/coredns/coredns:v1.10.1".to_string())));
        assert!(images.contains(&("etcd", "registry.k8s.io/etcd:3.5.9-0".to_string())));
        assert_eq!(control_plane_images("registry.k8s.io", "v1.31.0"), None);
    }
}
