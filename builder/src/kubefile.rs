//! The Kubefile: how sealer and sealos describe a cluster image, as a Dockerfile describes a
//! container image. kubeferry reads the instructions that assemble a rootfs and describe it:
//! `FROM`, `COPY`, `ENV`, `ARG`, `LABEL`, `CMD` and `ENTRYPOINT`. A build runs nothing, so
//! `RUN` and its relatives are refused by name.
//!
//! Syntax as Docker's: one instruction per line, keywords in any case, `#` comments on their own
//! line, a trailing `\` continues a line, JSON arrays for the exec form of `CMD`, `ENTRYPOINT`
//! and `COPY`, `$NAME` and `${NAME}` (with `${NAME:-default}`) replaced from `ARG`s and `ENV`s
//! declared before (and `ARCH` and `TARGETARCH`, the target architecture), and in `FROM` from
//! the `ARG`s before it. Every error names the line.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Component, Path, PathBuf};

use crate::collect::Layer;
use crate::reference::Reference;

/// A parsed Kubefile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kubefile {
    /// What the image starts from.
    pub from: Base,
    /// `COPY` instructions, in order: later ones override the files of earlier ones.
    pub copies: Vec<Copy>,
    /// `ENV` values, in the order they were first set.
    pub env: BTreeMap<String, String>,
    /// `LABEL` values.
    pub labels: BTreeMap<String, String>,
    /// `CMD`, when given.
    pub cmd: Option<Vec<String>>,
    /// `ENTRYPOINT`, when given.
    pub entrypoint: Option<Vec<String>>,
}

/// The base of the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Base {
    /// `FROM scratch`: nothing.
    Scratch,
    /// Anything else: a rootfs directory, a `.run` bundle or an image reference, as the build
    /// context decides.
    Named {
        /// The name as written, variables replaced.
        name: String,
        /// Its line.
        line: usize,
    },
}

/// One `COPY SRC... DEST`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Copy {
    /// Sources, relative to the build context; may hold `*`, `?` and `[...]` globs.
    pub sources: Vec<String>,
    /// Destination in the rootfs; a trailing `/` or several sources make it a directory.
    pub dest: String,
    /// Its line.
    pub line: usize,
}

/// A Kubefile that cannot be used, and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Kubefile line {line}: {message}")]
pub struct KubefileError {
    /// 1-based line number (of the first line of a continued instruction).
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for Base {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Base::Scratch => f.write_str("scratch"),
            Base::Named { name, .. } => f.write_str(name),
        }
    }
}

impl Kubefile {
    /// The layers of the rootfs this Kubefile describes, from the build context `context`:
    /// the base, then each `COPY`. A directory source lays its contents at the destination; a
    /// file source goes into the destination as a directory (`COPY imageList manifests` gives
    /// `manifests/imageList`), as sealer does. Sources are globs relative to the context and
    /// may not leave it.
    ///
    /// `FROM FILE.run` hands the bundle to `open_base` as [`BaseSource::Bundle`], and `FROM
    /// IMAGE` the reference as [`BaseSource::Image`]; `open_base` checks or pulls it, unpacks
    /// it and returns the directory it unpacked to. Which a name is: see [`classify`].
    pub fn layers(
        &self,
        context: &Path,
        open_base: &mut dyn FnMut(BaseSource<'_>) -> Result<PathBuf, String>,
    ) -> Result<Vec<Layer>, KubefileError> {
        let context = context.canonicalize().map_err(|e| KubefileError {
            line: 1,
            message: format!("the build context '{}' cannot be read: {e}", context.display()),
        })?;
        let mut layers = Vec::new();
        if let Base::Named { name, line } = &self.from {
            let err = |message: String| KubefileError { line: *line, message };
            match classify(name, &context).map_err(err)? {
                Named::Directory(path) => layers.push(Layer::root(&inside(&context, &path).map_err(err)?)),
                Named::Bundle(path) => {
                    let bundle = inside(&context, &path).map_err(err)?;
                    layers.push(Layer::root(&open_base(BaseSource::Bundle(&bundle)).map_err(err)?));
                }
                Named::Image(reference) => {
                    let dir = open_base(BaseSource::Image(&reference)).map_err(|message| {
                        if name.contains([':', '@']) {
                            err(message)
                        } else {
                            err(format!(
                                "{message}; nor is '{name}' a directory of the build context '{}'",
                                context.display()
                            ))
                        }
                    })?;
                    layers.push(Layer::root(&dir));
                }
            }
        }
        for copy in &self.copies {
            let err = |message: String| KubefileError { line: copy.line, message };
            let dest = normal_dest(&copy.dest).map_err(err)?;
            for source in &copy.sources {
                if Path::new(source)
                    .components()
                    .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
                {
                    return Err(err(format!(
                        "the source '{source}' must be a relative path inside the build context"
                    )));
                }
                let pattern = context.join(source);
                let matches: Vec<PathBuf> = glob::glob(&pattern.to_string_lossy())
                    .map_err(|e| err(format!("the source '{source}' is not a valid pattern: {e}")))?
                    .filter_map(std::result::Result::ok)
                    .collect();
                if matches.is_empty() {
                    return Err(err(format!(
                        "'{source}' matches nothing in the build context '{}'",
                        context.display()
                    )));
                }
                for found in matches {
                    let found = inside(&context, &found).map_err(err)?;
                    let at = if found.is_dir() {
                        dest.clone()
                    } else {
                        let name =
                            found.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                        if dest.is_empty() { name } else { format!("{dest}/{name}") }
                    };
                    layers.push(Layer { source: found, at });
                }
            }
        }
        Ok(layers)
    }
}

/// What `FROM NAME` starts from, as [`Kubefile::layers`] hands it to the build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BaseSource<'a> {
    /// A `.run` bundle of the build context.
    Bundle(&'a Path),
    /// A cluster image in a registry.
    Image(&'a Reference),
}

/// What a `FROM` name means, decided by [`classify`].
#[derive(Debug, Clone, PartialEq, Eq)]
enum Named {
    Directory(PathBuf),
    Bundle(PathBuf),
    Image(Reference),
}

/// Decides what `FROM NAME` names, by these rules, the first that applies:
///
/// 1. a name that starts with `./`, `../` or `/` is a path of the build context: a `.run`
///    bundle or a directory, which must exist;
/// 2. a name that ends with `.run` is a bundle of the build context, which must exist;
/// 3. a name with a `:` or an `@` (a tag, a digest or a registry's port) is an image reference;
/// 4. a name that is a directory of the build context is that directory;
/// 5. anything else is an image reference (`labring/kubernetes` is
///    `docker.io/labring/kubernetes:latest`).
///
/// So `FROM rootfs` is the directory when the context has one, and `FROM rootfs:latest` or
/// `FROM docker.io/library/rootfs` the image whatever the context holds.
fn classify(name: &str, context: &Path) -> Result<Named, String> {
    let path = context.join(name);
    if name.starts_with("./") || name.starts_with("../") || name.starts_with('/') || name == "." {
        return if name.ends_with(".run") && path.is_file() {
            Ok(Named::Bundle(path))
        } else if path.is_dir() {
            Ok(Named::Directory(path))
        } else {
            Err(format!(
                "'{name}' is neither a directory nor a .run bundle of the build context '{}'",
                context.display()
            ))
        };
    }
    if name.ends_with(".run") {
        return if path.is_file() {
            Ok(Named::Bundle(path))
        } else {
            Err(format!("the bundle '{name}' is not in the build context '{}'", context.display()))
        };
    }
    if !name.contains([':', '@']) && path.is_dir() {
        return Ok(Named::Directory(path));
    }
    Reference::parse(name).map(Named::Image).map_err(|e| {
        if name.contains([':', '@']) {
            e.to_string()
        } else {
            format!("'{name}' is not a directory of the build context '{}', and {e}", context.display())
        }
    })
}

/// `path`, resolved, if it lies inside the (canonical) `context`.
fn inside(context: &Path, path: &Path) -> Result<PathBuf, String> {
    let resolved = path.canonicalize().map_err(|e| format!("'{}' cannot be read: {e}", path.display()))?;
    if !resolved.starts_with(context) {
        return Err(format!("'{}' leads outside the build context", path.display()));
    }
    Ok(resolved)
}

/// A destination as a relative `/`-separated path, `""` for the root.
fn normal_dest(dest: &str) -> Result<String, String> {
    let mut parts = Vec::new();
    for component in Path::new(dest).components() {
        match component {
            Component::Normal(part) => parts.push(part.to_string_lossy().into_owned()),
            Component::RootDir | Component::CurDir => {}
            _ => return Err(format!("the destination '{dest}' climbs out of the rootfs")),
        }
    }
    Ok(parts.join("/"))
}

/// Build arguments every Kubefile sees without declaring them.
pub const PREDEFINED: [&str; 2] = ["ARCH", "TARGETARCH"];

/// Instructions a build would have to run, refused with the reason.
const RUNNING: [&str; 5] = ["RUN", "CMDS", "LAUNCH", "APP", "APPCMDS"];
/// Dockerfile instructions that mean nothing for a cluster image, ignored with no effect.
const IGNORED: [&str; 7] = ["MAINTAINER", "EXPOSE", "VOLUME", "USER", "WORKDIR", "STOPSIGNAL", "HEALTHCHECK"];

/// Parses a Kubefile; `build_args` are `--build-arg NAME=VALUE` values, which override `ARG`
/// defaults.
pub fn parse(text: &str, build_args: &BTreeMap<String, String>) -> Result<Kubefile, KubefileError> {
    let mut from: Option<Base> = None;
    // The target architecture is known without an ARG, as sealer's and Docker's builds know it.
    let mut args: BTreeMap<String, String> = build_args
        .iter()
        .filter(|(k, _)| PREDEFINED.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let mut kubefile = Kubefile {
        from: Base::Scratch,
        copies: Vec::new(),
        env: BTreeMap::new(),
        labels: BTreeMap::new(),
        cmd: None,
        entrypoint: None,
    };
    for (line, instruction) in logical_lines(text)? {
        let err = |message: String| KubefileError { line, message };
        let (keyword, rest) = match instruction.split_once(char::is_whitespace) {
            Some((k, r)) => (k.to_ascii_uppercase(), r.trim()),
            None => (instruction.to_ascii_uppercase(), ""),
        };
        if keyword != "FROM" && keyword != "ARG" && from.is_none() {
            return Err(err(format!("{keyword} comes before FROM; a Kubefile starts with FROM")));
        }
        match keyword.as_str() {
            "FROM" => {
                if from.is_some() {
                    return Err(err("a second FROM: kubeferry builds one image per Kubefile; combine \
                                    images with several --from instead"
                        .into()));
                }
                let name = substitute(rest, &args).map_err(err)?;
                if name.is_empty() || name.contains(char::is_whitespace) {
                    return Err(err(format!("FROM takes one name, not '{rest}'")));
                }
                from = Some(if name == "scratch" { Base::Scratch } else { Base::Named { name, line } });
            }
            "ARG" => {
                let (name, default) = match rest.split_once('=') {
                    Some((n, d)) => (n.trim(), Some(unquote(d.trim()))),
                    None => (rest, None),
                };
                check_name(name).map_err(err)?;
                let value = build_args.get(name).cloned().or(default).unwrap_or_default();
                args.insert(name.to_string(), value);
            }
            "ENV" => {
                for (k, v) in pairs(rest, true).map_err(err)? {
                    let v = substitute(&v, &scope(&args, &kubefile.env)).map_err(err)?;
                    kubefile.env.insert(k, v);
                }
            }
            "LABEL" => {
                for (k, v) in pairs(rest, false).map_err(err)? {
                    let v = substitute(&v, &scope(&args, &kubefile.env)).map_err(err)?;
                    kubefile.labels.insert(k, v);
                }
            }
            "COPY" | "ADD" => {
                let words = match json_array(rest).map_err(err)? {
                    Some(words) => words,
                    None => rest.split_whitespace().map(str::to_string).collect(),
                };
                if words.iter().any(|w| w.starts_with("--")) {
                    return Err(err(format!(
                        "{keyword} options such as '--from' or '--chown' are not supported"
                    )));
                }
                if keyword == "ADD" && words.iter().any(|w| w.contains("://")) {
                    return Err(err("ADD from a URL is not supported: a build fetches only images".into()));
                }
                let words = words
                    .iter()
                    .map(|w| substitute(w, &scope(&args, &kubefile.env)))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(err)?;
                let Some((dest, sources)) = words.split_last().filter(|(_, s)| !s.is_empty()) else {
                    return Err(err(format!("{keyword} needs a source and a destination")));
                };
                kubefile.copies.push(Copy { sources: sources.to_vec(), dest: dest.clone(), line });
            }
            "CMD" | "ENTRYPOINT" => {
                let command = match json_array(rest).map_err(err)? {
                    Some(words) => words,
                    None if rest.is_empty() => return Err(err(format!("{keyword} needs a command"))),
                    None => vec![rest.to_string()],
                };
                if keyword == "CMD" {
                    kubefile.cmd = Some(command);
                } else {
                    kubefile.entrypoint = Some(command);
                }
            }
            k if RUNNING.contains(&k) => {
                return Err(err(format!(
                    "{k} is not supported: a kubeferry build runs nothing; put commands to run at \
                     install time in CMD or ENTRYPOINT"
                )));
            }
            k if IGNORED.contains(&k) => {}
            k => return Err(err(format!("unknown instruction '{k}'"))),
        }
    }
    kubefile.from = from.ok_or(KubefileError { line: 1, message: "the Kubefile has no FROM".into() })?;
    Ok(kubefile)
}

/// The variables an instruction sees: the `ARG`s, then the `ENV`s, which win.
fn scope(args: &BTreeMap<String, String>, env: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    let mut vars = args.clone();
    vars.extend(env.iter().map(|(k, v)| (k.clone(), v.clone())));
    vars
}

/// Joins continued lines and drops comments and blank lines; yields each instruction with the
/// number of its first line.
fn logical_lines(text: &str) -> Result<Vec<(usize, String)>, KubefileError> {
    let mut out = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.starts_with('#') || (line.is_empty() && current.is_none()) {
            continue;
        }
        let (body, continued) = match line.strip_suffix('\\') {
            Some(body) => (body.trim_end(), true),
            None => (line, false),
        };
        let (start, mut text) = current.take().unwrap_or((i + 1, String::new()));
        if !text.is_empty() && !body.is_empty() {
            text.push(' ');
        }
        text.push_str(body);
        if continued {
            current = Some((start, text));
        } else if !text.is_empty() {
            out.push((start, text));
        }
    }
    if let Some((line, _)) = current {
        return Err(KubefileError { line, message: "the last instruction ends with a '\\'".into() });
    }
    Ok(out)
}

/// A JSON array of strings (`["a", "b"]`), or None when `text` is not one.
fn json_array(text: &str) -> Result<Option<Vec<String>>, String> {
    if !text.starts_with('[') {
        return Ok(None);
    }
    serde_json::from_str::<Vec<String>>(text)
        .map(Some)
        .map_err(|e| format!("'{text}' is not a JSON array of strings: {e}"))
}

/// `KEY=VALUE KEY2="VALUE 2"` pairs, or with `legacy` the `ENV KEY VALUE WORDS` form.
fn pairs(text: &str, legacy: bool) -> Result<Vec<(String, String)>, String> {
    let words = split_words(text)?;
    if legacy && words.first().is_some_and(|w| !w.contains('=')) {
        let (key, value) = text.split_once(char::is_whitespace).unwrap_or((text, ""));
        check_name(key)?;
        return Ok(vec![(key.to_string(), unquote(value.trim()))]);
    }
    if words.is_empty() {
        return Err("expected KEY=VALUE".into());
    }
    words
        .iter()
        .map(|w| {
            let (k, v) = w.split_once('=').ok_or_else(|| format!("'{w}' is not KEY=VALUE"))?;
            let k = unquote(k);
            if k.is_empty() {
                return Err(format!("'{w}' has an empty key"));
            }
            Ok((k, unquote(v)))
        })
        .collect()
}

/// Splits on whitespace outside double or single quotes, keeping the quotes.
fn split_words(text: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut quote: Option<char> = None;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (None, c) if c.is_whitespace() => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
            }
            (None, '"' | '\'') => {
                quote = Some(c);
                word.push(c);
            }
            (Some(q), c) if c == q => {
                quote = None;
                word.push(c);
            }
            (_, '\\') => {
                word.push(c);
                if let Some(next) = chars.next() {
                    word.push(next);
                }
            }
            (_, c) => word.push(c),
        }
    }
    if quote.is_some() {
        return Err(format!("an unclosed quote in '{text}'"));
    }
    if !word.is_empty() {
        words.push(word);
    }
    Ok(words)
}

/// Removes one pair of surrounding quotes; in double quotes `\"` and `\\` are unescaped.
fn unquote(text: &str) -> String {
    if text.len() >= 2 && text.starts_with('"') && text.ends_with('"') {
        text[1..text.len() - 1].replace("\\\"", "\"").replace("\\\\", "\\")
    } else if text.len() >= 2 && text.starts_with('\'') && text.ends_with('\'') {
        text[1..text.len() - 1].to_string()
    } else {
        text.to_string()
    }
}

fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok { Ok(()) } else { Err(format!("'{name}' is not a valid variable name")) }
}

/// Replaces `$NAME`, `${NAME}` and `${NAME:-default}`; `\$` is a literal `$`. An unknown
/// name is an error, so that a typo never builds an image from an empty value.
fn substitute(text: &str, vars: &BTreeMap<String, String>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(['$', '\\']) {
        out.push_str(&rest[..at]);
        let tail = &rest[at..];
        if let Some(after) = tail.strip_prefix("\\$") {
            out.push('$');
            rest = after;
            continue;
        }
        if let Some(after) = tail.strip_prefix('\\') {
            out.push('\\');
            rest = after;
            continue;
        }
        let (name, default, len) = if let Some(braced) = tail.strip_prefix("${") {
            let end = braced.find('}').ok_or_else(|| format!("an unclosed '${{' in '{text}'"))?;
            let inner = &braced[..end];
            match inner.split_once(":-") {
                Some((name, default)) => (name, Some(default), end + 3),
                None => (inner, None, end + 3),
            }
        } else {
            let name_len =
                tail[1..].find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len() - 1);
            (&tail[1..1 + name_len], None, name_len + 1)
        };
        if name.is_empty() {
            out.push('$');
            rest = &tail[1..];
            continue;
        }
        match (vars.get(name), default) {
            (Some(value), _) if !value.is_empty() || default.is_none() => out.push_str(value),
            (_, Some(default)) => out.push_str(default),
            (None, None) => {
                return Err(format!("'${name}' is not declared by an ARG or ENV before this line"));
            }
            (Some(_), None) => {}
        }
        rest = &tail[len..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_ok(text: &str) -> Kubefile {
        parse(text, &BTreeMap::new()).unwrap()
    }

    fn parse_err(text: &str) -> String {
        parse(text, &BTreeMap::new()).unwrap_err().to_string()
    }

    #[test]
    fn reads_the_sealer_k0s_example() {
        let k = parse_ok(
            "FROM scratch\nCOPY rootfs .\nCOPY amd64 .\nCOPY imageList manifests\n\
             LABEL \"cluster.alpha.sealer.io/cluster-runtime-version\"=\"v1.24.10\"\n\
             LABEL \"cluster.alpha.sealer.io/cluster-runtime-type\"=\"k0s\"\n",
        );
        assert_eq!(k.from, Base::Scratch);
        assert_eq!(
            k.copies,
            [
                Copy { sources: vec!["rootfs".into()], dest: ".".into(), line: 2 },
                Copy { sources: vec!["amd64".into()], dest: ".".into(), line: 3 },
                Copy { sources: vec!["imageList".into()], dest: "manifests".into(), line: 4 },
            ]
        );
        assert_eq!(k.labels["cluster.alpha.sealer.io/cluster-runtime-type"], "k0s");
    }

    #[test]
    fn reads_the_sealos_example_with_exec_forms() {
        let k = parse_ok(
            "FROM labring/kubernetes:v1.24.0\nENV version v1.1.0\nCOPY manifests ./manifests\n\
             COPY registry ./registry\nENTRYPOINT [\"kubectl apply -f manifests/tigera-operator.yaml\"]\n\
             CMD [\"kubectl apply -f manifests/custom-resources.yaml\"]\n",
        );
        assert_eq!(k.from, Base::Named { name: "labring/kubernetes:v1.24.0".into(), line: 1 });
        assert_eq!(k.env["version"], "v1.1.0");
        assert_eq!(k.entrypoint, Some(vec!["kubectl apply -f manifests/tigera-operator.yaml".to_string()]));
        assert_eq!(k.cmd, Some(vec!["kubectl apply -f manifests/custom-resources.yaml".to_string()]));
    }

    #[test]
    fn shell_form_cmd_continuations_comments_and_variables() {
        let text = "# a comment\nARG BASE=kubernetes-rawdocker\nARG TAG\nFROM ${BASE}:${TAG:-v1.19.8}\n\n\
                    ENV registryDomain=sea.hub registryPort=5000 \\\n    dir=\"/opt/my dir\"\n\
                    COPY imageList manifests\nCOPY etc/$registryDomain.conf \\\n etc/\n\
                    CMD kubectl apply -f etc/tigera-operator.yaml && kubectl apply -f etc/custom-resources.yaml\n";
        let k = parse_ok(text);
        assert_eq!(k.from.to_string(), "kubernetes-rawdocker:v1.19.8");
        assert_eq!(k.env["registryPort"], "5000");
        assert_eq!(k.env["dir"], "/opt/my dir");
        assert_eq!(
            k.copies[1],
            Copy { sources: vec!["etc/sea.hub.conf".into()], dest: "etc/".into(), line: 9 }
        );
        assert_eq!(
            k.cmd,
            Some(vec![
                "kubectl apply -f etc/tigera-operator.yaml && kubectl apply -f etc/custom-resources.yaml"
                    .into()
            ])
        );
        let args = BTreeMap::from([("TAG".to_string(), "v1.20.2".to_string())]);
        assert_eq!(parse(text, &args).unwrap().from.to_string(), "kubernetes-rawdocker:v1.20.2");
    }

    #[test]
    fn layers_lay_directories_at_their_destination_and_files_into_it() {
        let dir = tempfile::tempdir().unwrap();
        let c = dir.path();
        for d in ["base/bin", "etc", "charts/a", "charts/b"] {
            std::fs::create_dir_all(c.join(d)).unwrap();
        }
        for f in ["imageList", "etc/daemon.json", "base/bin/tool"] {
            std::fs::write(c.join(f), "x").unwrap();
        }
        let k = parse_ok(
            "FROM base\nCOPY imageList manifests\nCOPY etc/daemon.json ./etc/\nCOPY charts/* /charts\nCOPY etc .\n",
        );
        let c = c.canonicalize().unwrap();
        let layers = k.layers(&c, &mut |_| unreachable!()).unwrap();
        let got: Vec<(String, String)> = layers
            .iter()
            .map(|l| (l.source.strip_prefix(&c).unwrap().display().to_string(), l.at.clone()))
            .collect();
        let want = [
            ("base", ""),
            ("imageList", "manifests/imageList"),
            ("etc/daemon.json", "etc/daemon.json"),
            ("charts/a", "charts"),
            ("charts/b", "charts"),
            ("etc", ""),
        ];
        assert_eq!(got, want.map(|(a, b)| (a.to_string(), b.to_string())));

        let err =
            |text: &str| parse_ok(text).layers(&c, &mut |_| Err("refused".into())).unwrap_err().to_string();
        assert_eq!(
            err("FROM scratch\nCOPY ../x .\n"),
            "Kubefile line 2: the source '../x' must be a relative path inside the build context"
        );
        assert!(
            err("FROM scratch\nCOPY nothing* .\n")
                .starts_with("Kubefile line 2: 'nothing*' matches nothing in the build context")
        );
        assert_eq!(
            err("FROM scratch\nCOPY etc ../up\n"),
            "Kubefile line 2: the destination '../up' climbs out of the rootfs"
        );
        assert_eq!(err("FROM labring/kubernetes:v1.24.0\n"), "Kubefile line 1: refused");
        assert_eq!(
            err("FROM nothing-here\n"),
            format!(
                "Kubefile line 1: refused; nor is 'nothing-here' a directory of the build context '{}'",
                c.display()
            )
        );
        assert_eq!(
            err("FROM ./nothing-here\n"),
            format!(
                "Kubefile line 1: './nothing-here' is neither a directory nor a .run bundle of the build context '{}'",
                c.display()
            )
        );
        assert_eq!(
            err("FROM Bad/Name:v1\n"),
            "Kubefile line 1: invalid image reference 'Bad/Name:v1': the repository name 'Bad/Name' must be lowercase"
        );
        std::fs::write(c.join("base.run"), "x").unwrap();
        assert_eq!(err("FROM base.run\n"), "Kubefile line 1: refused");
        std::os::unix::fs::symlink("/etc", c.join("escape")).unwrap();
        assert_eq!(
            err("FROM scratch\nCOPY escape .\n"),
            format!("Kubefile line 2: '{}' leads outside the build context", c.join("escape").display())
        );
    }

    #[test]
    fn a_from_name_is_a_path_a_bundle_or_an_image_by_fixed_rules() {
        let dir = tempfile::tempdir().unwrap();
        let c = dir.path().canonicalize().unwrap();
        std::fs::create_dir_all(c.join("rootfs")).unwrap();
        std::fs::create_dir_all(c.join("labring/kubernetes")).unwrap();
        std::fs::write(c.join("base.run"), "x").unwrap();
        let image = |name: &str| Named::Image(Reference::parse(name).unwrap());
        assert_eq!(classify("rootfs", &c).unwrap(), Named::Directory(c.join("rootfs")));
        assert_eq!(classify("./rootfs", &c).unwrap(), Named::Directory(c.join("./rootfs")));
        assert_eq!(
            classify("labring/kubernetes", &c).unwrap(),
            Named::Directory(c.join("labring/kubernetes"))
        );
        assert_eq!(classify("rootfs:latest", &c).unwrap(), image("rootfs:latest"));
        assert_eq!(classify("labring/kubernetes:v1.28.4", &c).unwrap(), image("labring/kubernetes:v1.28.4"));
        assert_eq!(classify("localhost:5000/x/y", &c).unwrap(), image("localhost:5000/x/y"));
        assert_eq!(classify("other/image", &c).unwrap(), image("docker.io/other/image:latest"));
        assert_eq!(classify("base.run", &c).unwrap(), Named::Bundle(c.join("base.run")));
        assert!(classify("missing.run", &c).unwrap_err().starts_with("the bundle 'missing.run' is not in"));
        let digest = format!("r.example.com/c@sha256:{}", "a".repeat(64));
        assert_eq!(classify(&digest, &c).unwrap(), image(&digest));
    }

    #[test]
    fn every_error_names_its_line() {
        assert_eq!(
            parse_err("COPY a b\n"),
            "Kubefile line 1: COPY comes before FROM; a Kubefile starts with FROM"
        );
        assert_eq!(parse_err("# only\n"), "Kubefile line 1: the Kubefile has no FROM");
        assert_eq!(
            parse_err("FROM scratch\nRUN apt-get update\n"),
            "Kubefile line 2: RUN is not supported: a kubeferry build runs nothing; put commands to run at \
             install time in CMD or ENTRYPOINT"
        );
        assert_eq!(
            parse_err("FROM scratch\n\nFROBNICATE x\n"),
            "Kubefile line 3: unknown instruction 'FROBNICATE'"
        );
        assert_eq!(
            parse_err("FROM scratch\nCOPY onlyone\n"),
            "Kubefile line 2: COPY needs a source and a destination"
        );
        assert_eq!(
            parse_err("FROM scratch\nCOPY $NOPE .\n"),
            "Kubefile line 2: '$NOPE' is not declared by an ARG or ENV before this line"
        );
        assert_eq!(
            parse_err("FROM scratch\nCMD [\"a\", 1]\n"),
            "Kubefile line 2: '[\"a\", 1]' is not a JSON array of strings: invalid type: integer `1`, expected a string at line 1 column 7"
        );
        assert_eq!(
            parse_err("FROM scratch\nCOPY a \\\n"),
            "Kubefile line 2: the last instruction ends with a '\\'"
        );
        assert_eq!(
            parse_err("FROM scratch\nFROM scratch\n"),
            "Kubefile line 2: a second FROM: kubeferry builds one image per Kubefile; combine images with several --from instead"
        );
        assert_eq!(
            parse_err("FROM scratch\nCOPY --from=x a b\n"),
            "Kubefile line 2: COPY options such as '--from' or '--chown' are not supported"
        );
        assert_eq!(parse_err("FROM scratch\nLABEL \"a=b\n"), "Kubefile line 2: an unclosed quote in '\"a=b'");
    }
}
