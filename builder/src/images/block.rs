//! The image finder's fast path: the `image` fields of a YAML document written in plain block
//! style, the way Kubernetes manifests are, read a line at a time as sealer and sealos read
//! them, but trusted only when every line of the document has a shape whose meaning its
//! indentation settles:
//!
//! - `KEY: VALUE` with a one-line value (plain, quoted without escapes, or a flow collection
//!   that closes on its line), and `KEY:` whose value is on the lines below;
//! - `- ` items, several on a line too, whose content is such a pair or a one-line value;
//! - block scalars (`|`, `>`), whose lines are skipped;
//! - comments, blank lines, and the document's `---` and `...`.
//!
//! A line of any other shape (a scalar over several lines, a flow collection that goes on, an
//! anchor, alias or tag, a complex key, a tab, a key YAML would not read as a string, an
//! `image`, `name` or `kind` whose value is not surely a one-line string, the word `image`
//! followed by a colon anywhere but as the key of such a line) makes [`scan`] give up on the
//! whole document, which the caller then parses with the YAML parser. So on a document it
//! accepts, it finds what the parser would: the same references, in the same order, at the
//! same field paths. It does not check the syntax of what it skips, as the parser would.

/// What one document names: its `KIND/NAME` (or `KIND`, or empty without a kind) and each
/// reference with its field path, as the YAML scan reports them.
#[derive(Debug, PartialEq, Eq)]
pub struct Found {
    pub name: String,
    pub images: Vec<(String, String)>,
}

/// The images of `document`, or `None` when one of its lines is not of a shape this module
/// reads (the document must then be parsed).
pub fn scan(document: &[u8]) -> Option<Found> {
    let mut s = Scanner::default();
    let mut lines = Lines { text: document, at: 0 };
    let mut started = false;
    while let Some(line) = lines.next() {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if memchr::memchr(b'\t', line).is_some() {
            return None;
        }
        let indent = line.iter().take_while(|&&b| b == b' ').count();
        let rest = &line[indent..];
        if rest.is_empty() || rest[0] == b'#' {
            continue;
        }
        if indent == 0 && (rest.starts_with(b"---") || rest.starts_with(b"...") || rest[0] == b'%') {
            match rest {
                b"---" if !started => continue,
                b"..." => break,
                _ => return None,
            }
        }
        started = true;
        if let Some(parent) = s.line(line, indent)? {
            lines.skip_block_scalar(parent)?;
            s.open = Open::Nothing;
        }
    }
    Some(s.found())
}

/// The lines of a document.
struct Lines<'a> {
    text: &'a [u8],
    at: usize,
}

impl<'a> Lines<'a> {
    fn next(&mut self) -> Option<&'a [u8]> {
        if self.at >= self.text.len() {
            return None;
        }
        let start = self.at;
        let end = memchr::memchr(b'\n', &self.text[start..]).map_or(self.text.len(), |i| start + i);
        self.at = end + 1;
        Some(&self.text[start..end])
    }

    /// Skips the lines of a block scalar whose parent is at column `parent`: the blank ones and
    /// those more indented than it. `None` when a line is less indented than the first (an
    /// error the parser would report).
    fn skip_block_scalar(&mut self, parent: usize) -> Option<()> {
        let mut content = None;
        while self.at < self.text.len() {
            let rest = &self.text[self.at..];
            let line = &rest[..memchr::memchr(b'\n', rest).unwrap_or(rest.len())];
            let spaces = line.iter().take_while(|&&b| b == b' ').count();
            let blank = line[spaces..].iter().all(u8::is_ascii_whitespace);
            if !blank {
                if spaces <= parent {
                    break;
                }
                if spaces < *content.get_or_insert(spaces) {
                    return None;
                }
            }
            self.at += line.len() + 1;
        }
        Some(())
    }
}

/// A node of the block structure.
enum Frame<'a> {
    /// A mapping whose keys start at `col`; `key` is its latest key; `item` the sequence item
    /// it is the content of.
    Map { col: usize, key: &'a [u8], item: Option<usize> },
    /// A sequence whose dashes are at `col`; `item` indexes [`Scanner::items`].
    Seq { col: usize, item: usize },
}

impl Frame<'_> {
    fn col(&self) -> usize {
        match self {
            Frame::Map { col, .. } | Frame::Seq { col, .. } => *col,
        }
    }
}

/// A step of a path: a mapping's key, or an item of [`Scanner::items`].
type Segment<'a> = Result<&'a [u8], usize>;

/// An item of a sequence: its position and, when it is a mapping with a string `name`, that.
struct Item<'a> {
    index: usize,
    name: Option<&'a [u8]>,
}

/// What the line before left open.
#[derive(Clone, Copy, PartialEq, Eq, Default)]
enum Open {
    /// Nothing: the next line belongs to one of the nodes of the stack.
    #[default]
    Nothing,
    /// A key or item with nothing after it on its line, at this column: the next line may be
    /// its value.
    Child(usize),
    /// A value on the line of its key or item at this column: a more indented line would
    /// continue it.
    Scalar(usize),
}

#[derive(Default)]
struct Scanner<'a> {
    stack: Vec<Frame<'a>>,
    /// Whether the document's top node has begun (a line back at its left ends it).
    rooted: bool,
    items: Vec<Item<'a>>,
    open: Open,
    kind: Option<&'a [u8]>,
    metadata_name: Option<&'a [u8]>,
    /// Each reference with its path.
    images: Vec<(&'a [u8], Vec<Segment<'a>>)>,
}

impl<'a> Scanner<'a> {
    /// Adds a line whose content starts at column `col`. `Some(Some(column))` when the line
    /// starts a block scalar whose parent is at that column; `None` when the line is of no shape
    /// this module reads.
    fn line(&mut self, line: &'a [u8], mut col: usize) -> Option<Option<usize>> {
        if let Open::Scalar(c) = self.open
            && col > c
        {
            return None;
        }
        let mut rest = &line[col..];
        // The items this line starts: `- `, perhaps several (`- - a`).
        let mut dash = None;
        while rest == b"-" || rest.starts_with(b"- ") {
            self.item(col)?;
            dash = Some(col);
            let spaces = rest[1..].iter().take_while(|&&b| b == b' ').count();
            if rest.len() == 1 + spaces {
                return Some(None);
            }
            col += 1 + spaces;
            rest = &rest[1 + spaces..];
        }
        let (key, value, parent) = match split_key(rest)? {
            Some((key, value)) => {
                self.key(col, key)?;
                (Some(key), value, col)
            }
            // A value alone on its line is an item's.
            None => (None, rest, dash?),
        };
        let value = trim_comment(value);
        // The document's metadata is read only as a block mapping: its name names the document.
        if key == Some(b"metadata") && self.stack.len() == 1 && !value.is_empty() {
            return None;
        }
        // Whether the value says where an image is or names a node on its way.
        let telling = key.is_some_and(|key| self.telling(key));
        match value.first() {
            None if telling => None,
            None => {
                if key.is_some() {
                    self.open = Open::Child(col);
                }
                Some(None)
            }
            Some(b'|' | b'>') if telling || !block_header(value) => None,
            Some(b'|' | b'>') => Some(Some(parent)),
            Some(_) => {
                let text = one_line(value)?;
                if let (Some(key), true) = (key, telling) {
                    self.value(key, string(text)?)?;
                }
                self.open = Open::Scalar(parent);
                Some(None)
            }
        }
    }

    /// Whether the value of `key`, the newest of the mapping on top, matters: an `image`, the
    /// `kind` of the document, the `name` of a sequence item or of the document's metadata.
    fn telling(&self, key: &[u8]) -> bool {
        match key {
            b"image" => true,
            b"kind" => self.stack.len() == 1,
            b"name" => match self.stack.last() {
                Some(Frame::Map { item: Some(_), .. }) => true,
                _ => self.stack.len() == 2 && matches!(self.stack[0], Frame::Map { key: b"metadata", .. }),
            },
            _ => false,
        }
    }

    /// A `- ` at column `col`: the next item of the sequence there, or the first of a new one.
    fn item(&mut self, col: usize) -> Option<()> {
        self.close(col, false);
        let index = match self.stack.last() {
            Some(Frame::Seq { col: c, item }) if *c == col => {
                let index = self.items[*item].index + 1;
                self.stack.pop();
                index
            }
            // A new sequence: the value of a key (at the key's column or deeper), of an item,
            // or the document.
            Some(Frame::Map { col: c, .. }) if self.open == Open::Child(*c) && *c <= col => 0,
            Some(Frame::Seq { col: c, .. }) if self.open == Open::Child(*c) && *c < col => 0,
            None if !self.rooted => 0,
            _ => return None,
        };
        self.items.push(Item { index, name: None });
        self.stack.push(Frame::Seq { col, item: self.items.len() - 1 });
        self.rooted = true;
        self.open = Open::Child(col);
        Some(())
    }

    /// A key at column `col`: the next key of the mapping there, or the first of a new one.
    fn key(&mut self, col: usize, key: &'a [u8]) -> Option<()> {
        self.close(col, true);
        match self.stack.last_mut() {
            Some(Frame::Map { col: c, key: k, .. }) if *c == col => *k = key,
            Some(Frame::Map { col: c, .. }) if self.open == Open::Child(*c) && *c < col => {
                self.stack.push(Frame::Map { col, key, item: None });
            }
            Some(&mut Frame::Seq { col: c, item }) if self.open == Open::Child(c) && c < col => {
                self.stack.push(Frame::Map { col, key, item: Some(item) });
            }
            None if !self.rooted => self.stack.push(Frame::Map { col, key, item: None }),
            _ => return None,
        }
        self.rooted = true;
        self.open = Open::Nothing;
        Some(())
    }

    /// Ends the nodes that a line at column `col` is not inside: those more indented, and a
    /// sequence at its column when the line holds a key (the sequence was the value of a key
    /// of that column).
    fn close(&mut self, col: usize, is_key: bool) {
        while let Some(top) = self.stack.last() {
            let c = top.col();
            if c > col || (is_key && c == col && matches!(top, Frame::Seq { .. })) {
                self.stack.pop();
                self.open = Open::Nothing;
            } else {
                break;
            }
        }
    }

    /// The string value of an `image`, `name` or `kind` key (`None` in the option when it is
    /// not a string).
    fn value(&mut self, key: &[u8], text: Option<&'a [u8]>) -> Option<()> {
        let Some(&Frame::Map { item, .. }) = self.stack.last() else { return None };
        match key {
            b"image" => {
                let reference = text?;
                if super::looks_like_reference(std::str::from_utf8(reference).ok()?) {
                    let path = self
                        .stack
                        .iter()
                        .map(|frame| match frame {
                            Frame::Map { key, .. } => Ok(*key),
                            Frame::Seq { item, .. } => Err(*item),
                        })
                        .collect();
                    self.images.push((reference, path));
                }
            }
            // A sequence item's, or else (see `telling`) the document's metadata's.
            b"name" => match item {
                Some(item) => self.items[item].name = text,
                None => self.metadata_name = text,
            },
            _ => self.kind = text,
        }
        Some(())
    }

    fn found(self) -> Found {
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        let name = match (self.kind, self.metadata_name) {
            (Some(kind), Some(name)) => format!("{}/{}", text(kind), text(name)),
            (Some(kind), None) => text(kind),
            _ => String::new(),
        };
        let images = self
            .images
            .iter()
            .map(|(reference, path)| {
                let at: Vec<String> = path
                    .iter()
                    .map(|segment| match *segment {
                        Ok(key) => text(key),
                        Err(i) => match self.items[i].name {
                            Some(name) => format!("[{}]", text(name)),
                            None => format!("[{}]", self.items[i].index),
                        },
                    })
                    .collect();
                (text(reference), at.join("."))
            })
            .collect();
        Found { name, images }
    }
}

/// Splits `KEY: VALUE` (or `KEY:`) into the key's text and the rest of the line. `Some(None)`
/// when the line holds no key (a value alone); `None` when it may hold one this module does not
/// read: a complex key, an anchor, alias or tag, a quoted key with escapes, a key YAML would
/// not read as a string.
fn split_key(rest: &[u8]) -> Option<Option<(&[u8], &[u8])>> {
    let (key, after) = match rest[0] {
        q @ (b'"' | b'\'') => {
            let end = memchr::memchr(q, &rest[1..])? + 1;
            let (key, after) = (&rest[1..end], &rest[end + 1..]);
            if after.first() == Some(&q) || (q == b'"' && key.contains(&b'\\')) {
                return None;
            }
            (key, after)
        }
        b'{' | b'[' | b'|' | b'>' => return Some(None),
        b'?' | b':' | b'&' | b'*' | b'!' | b'@' | b'`' | b'%' | b',' => return None,
        _ => {
            let len = rest.iter().position(|&b| !is_key_byte(b)).unwrap_or(rest.len());
            let (key, after) = rest.split_at(len);
            if !(after == b":" || after.starts_with(b": ")) {
                return Some(None);
            }
            if plain_string(key) != Some(true) {
                return None;
            }
            (key, after)
        }
    };
    if !(after == b":" || after.starts_with(b": ")) {
        return Some(None);
    }
    Some(Some((key, after[1..].trim_ascii_start())))
}

fn is_key_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'/' | b'-')
}

/// A value with its comment (from ` #`) and trailing blanks cut off.
fn trim_comment(value: &[u8]) -> &[u8] {
    if value.first() == Some(&b'#') {
        return &[];
    }
    let end = memchr::memmem::find(value, b" #").unwrap_or(value.len());
    value[..end].trim_ascii_end()
}

/// A block scalar's header: `|` or `>`, then chomping and indentation indicators.
fn block_header(value: &[u8]) -> bool {
    value[1..].iter().all(|b| b"+-123456789".contains(b))
}

/// A value that is whole on its line: a quoted string without escapes (its text), a flow
/// collection that closes on the line, or a plain scalar. `None` for anything else.
fn one_line(value: &[u8]) -> Option<Value<'_>> {
    match value[0] {
        q @ (b'"' | b'\'') => {
            let inner = value[1..].strip_suffix(&[q])?;
            if inner.contains(&q) || (q == b'"' && inner.contains(&b'\\')) {
                return None;
            }
            Some(Value::Quoted(inner))
        }
        // A flow collection may hold an `image` key: the parser's.
        b'{' | b'[' => (one_line_flow(value) && !super::may_name_an_image(value)).then_some(Value::Flow),
        b'&' | b'*' | b'!' | b'|' | b'>' | b'@' | b'`' | b'%' | b'#' | b',' => None,
        b'-' | b'?' | b':' if value.len() == 1 || value[1] == b' ' => None,
        // `: ` in a plain scalar, or a `:` at its end, makes a mapping: the parser's.
        _ if memchr::memmem::find(value, b": ").is_some() || value.ends_with(b":") => None,
        _ => Some(Value::Plain(value)),
    }
}

/// A value of one line, as [`one_line`] reads it.
enum Value<'a> {
    Quoted(&'a [u8]),
    Plain(&'a [u8]),
    Flow,
}

/// The text of a value that is a string, `None` in the option for one that is surely not
/// (a flow collection, a number), `None` when that is not sure.
fn string(value: Value<'_>) -> Option<Option<&[u8]>> {
    match value {
        Value::Quoted(text) => Some(Some(text)),
        Value::Flow => Some(None),
        Value::Plain(text) => match plain_string(text)? {
            true => Some(Some(text)),
            false => Some(None),
        },
    }
}

/// Whether YAML reads a plain scalar as a string: surely when it starts with a letter, `_` or
/// `/` and is none of the words read as null, booleans or special numbers, or starts with a
/// digit and holds a `/` (a registry address) that no number holds; surely not when it is all
/// digits. `None` when that is not sure.
fn plain_string(text: &[u8]) -> Option<bool> {
    const WORDS: [&[u8]; 12] =
        [b"true", b"false", b"null", b"yes", b"no", b"on", b"off", b"y", b"n", b"inf", b"infinity", b"nan"];
    match text[0] {
        b'a'..=b'z' | b'A'..=b'Z' | b'_' | b'/' => {
            if WORDS.iter().any(|w| text.eq_ignore_ascii_case(w)) {
                None
            } else {
                Some(true)
            }
        }
        b'0'..=b'9' if text.contains(&b'/') => Some(true),
        _ if text.iter().all(u8::is_ascii_digit) => Some(false),
        _ => None,
    }
}

/// Whether a flow collection closes on its line (quoted parts skipped), with nothing after it.
fn one_line_flow(value: &[u8]) -> bool {
    let mut depth = 0usize;
    let mut quote = None;
    for (i, &b) in value.iter().enumerate() {
        match (quote, b) {
            (Some(q), _) if b == q => quote = None,
            (Some(_), _) => {}
            (None, b'"' | b'\'') => quote = Some(b),
            (None, b'{' | b'[') => depth += 1,
            (None, b'}' | b']') => {
                let Some(d) = depth.checked_sub(1) else { return false };
                depth = d;
                if depth == 0 {
                    return value[i + 1..].is_empty();
                }
            }
            _ => {}
        }
    }
    false
}
#[cfg(test)]
mod tests {
    use super::*;

    /// What the YAML parser finds in `document`, as (reference, place).
    fn parsed(document: &str) -> Vec<(String, String)> {
        let mut found = Vec::new();
        super::super::scan_yaml(document.as_bytes(), "f", std::path::Path::new("f"), &mut found).unwrap();
        found
    }

    /// What [`scan`] finds, in the same form; `None` when it leaves the document to the parser.
    fn scanned(document: &str) -> Option<Vec<(String, String)>> {
        let Found { name, images } = scan(document.as_bytes())?;
        let mut found = Vec::new();
        super::super::add_places("f", &name, images, &mut found);
        Some(found)
    }

    const DEPLOYMENT: &str = "\
---
# a comment
apiVersion: apps/v1
kind: Deployment
spec:
  template:
    metadata:
      annotations: {}
      labels: {app.kubernetes.io/name: web, 'x': \"y\"}
    spec:
      initContainers:
      - image: busybox:1.36   # the name comes after
        name: init
        command: [sh, -c, 'echo hi']
        args:
        - --image=nope
        - |
          image: in-a-block-scalar
      containers:
        - name: \"nginx\"
          image: 'nginx@sha256:0000000000000000000000000000000000000000000000000000000000000000'
          env:
            - name: A
              value: \"1\"
          resources:
            limits: {cpu: 100m, memory: 128Mi}
        -   image: registry.local:5000/x/request-image:v1
        - image: \"{{ .Values.image }}\"
          name: templated
      volumes:
      - - nested
        - items
      - name: config
        configMap:
          data:
            script: >-
              image: folded text
            other: 1
metadata:
  name: web
  labels:
    kind: not-the-kind
...
";

    #[test]
    fn finds_what_the_parser_finds_in_block_style_manifests() {
        let expected = parsed(DEPLOYMENT);
        assert_eq!(
            expected,
            [
                (
                    "busybox:1.36".to_string(),
                    "f: Deployment/web spec.template.spec.initContainers.[init].image".to_string()
                ),
                (
                    "nginx@sha256:0000000000000000000000000000000000000000000000000000000000000000".into(),
                    "f: Deployment/web spec.template.spec.containers.[nginx].image".into()
                ),
                (
                    "registry.local:5000/x/request-image:v1".into(),
                    "f: Deployment/web spec.template.spec.containers.[1].image".into()
                ),
            ]
        );
        assert_eq!(scanned(DEPLOYMENT), Some(expected));
        // Windows line ends read the same.
        let crlf = DEPLOYMENT.replace('\n', "\r\n");
        assert_eq!(scanned(&crlf), Some(parsed(&crlf)));
    }

    #[test]
    fn accepts_and_agrees_with_the_parser_on_these_shapes() {
        for document in [
            // A List: items without a kind of their own at the top.
            "kind: List\nitems:\n- kind: Pod\n  metadata:\n    name: p\n  spec:\n    containers:\n    - {name: c, imagePullPolicy: x}\n",
            "kind: List\nitems:\n- kind: Pod\n  spec:\n    containers:\n    - name: c\n      image: quay.io/x/y:1\n",
            // A sequence at the top, items' names that are not strings, a scalar item's index.
            "- image: a:1\n- name: 7\n  image: b:1\n- plain\n- name: [x]\n  image: c:1\n",
            // A key at the column of the sequence before it goes back to the mapping.
            "spec:\n  containers:\n  - image: a:1\n  kind: x\n  other:\n  - image: b:1\n",
            // Only the metadata's name names the document.
            "kind: K\nspec:\n  name: not-the-name\n  image: a:1\nmetadata:\n  labels:\n    name: no\n",
            // No kind: the path alone; a kind that is not at the top does not name the document.
            "spec:\n  kind: Nested\n  image: a:1\n",
            // The metadata's name without a kind is not shown.
            "metadata:\n  name: m\nimage: a:1\n",
            // Empty values, null items, nothing at all.
            "a:\nb:\n-\n- image: a:1\n",
            "",
            "# only a comment\n",
        ] {
            assert_eq!(scanned(document), Some(parsed(document)), "{document}");
        }
    }

    #[test]
    fn leaves_to_the_parser_what_lines_alone_cannot_settle() {
        for document in [
            // A scalar over several lines: the next line could hide in it, or not.
            "a: one\n  image: x\n",
            "- one\n  image: x\n",
            "a: \"one\n  image: x\"\n",
            "a:\n  plain on the next line\n",
            // A flow collection that goes on, or that holds an image key.
            "a: [\n  image: x\n]\n",
            "containers: [{name: c, image: x}]\n",
            "- {name: c, image: x}\n",
            "command: [sh, -c, 'echo image: x']\n",
            // Helm values and other maps under `image`, images that are not strings.
            "image:\n  repository: r\n  tag: t\n",
            "image: {repository: r, tag: t}\n",
            "image: 123\n",
            "image: true\n",
            "image: |\n  x\n",
            // Anchors, aliases, tags, complex keys, directives, tabs, escapes.
            "a: &x\n  image: x\nb: *x\n",
            "image: !!str x\n",
            "? image\n: x\n",
            "%YAML 1.2\n---\nimage: x\n",
            "image:\tx\n",
            "\"im\\u0061ge\": x\n",
            // A name or kind it cannot type, or that goes on; metadata not as a block.
            "kind: Pod\nmetadata: {name: p}\nspec:\n  containers:\n  - image: a:1\n",
            "kind: 1e3\n",
            "- name: 1.0\n  image: x\n",
            "kind:\n  x: y\n",
            // Broken structure the parser names.
            "a: 1\n - b\n",
            "  a: 1\nb: 2\n",
            "a: b: c\n",
            "a: |\n    x\n  y\n",
        ] {
            assert_eq!(scanned(document), None, "{document}");
        }
    }

    #[test]
    fn block_scalars_are_skipped_to_their_end() {
        let document =
            "data:\n  a: |+\n    image: no\n\n    # also text\n  b: >2\n     image: no\nimage: yes:1\n";
        assert_eq!(scanned(document), Some(parsed(document)));
        assert_eq!(scanned(document).unwrap().len(), 1);
    }

    /// Documents made at random of the lines this module reads and of some it does not, at
    /// random indentation: on every one the YAML parser reads, the fast path finds the same or
    /// gives up.
    #[test]
    fn never_disagrees_with_the_parser_on_random_documents() {
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        const KEYS: [&str; 11] = [
            "image",
            "image",
            "name",
            "name",
            "kind",
            "metadata",
            "spec",
            "containers",
            "a",
            "'image'",
            "x.io/y",
        ];
        const VALUES: [&str; 22] = [
            "",
            "",
            "",
            "a:1",
            "quay.io/b/c:2",
            "'q:3'",
            "\"d:4\"",
            "7",
            "true",
            "{}",
            "[]",
            "{name: n}",
            "[x, image: y]",
            "|",
            ">-",
            "&anchor v",
            "*anchor",
            "!!str s",
            "e # image: f",
            "g: h",
            "\"unclosed",
            "{{ .Values.x }}",
        ];
        let (mut accepted, mut valid, mut with_images) = (0, 0, 0);
        for _ in 0..200_000 {
            let mut document = String::new();
            let mut indent = 0;
            for _ in 0..1 + next(10) {
                // Deeper by a step at most, or back to any shallower column.
                indent = next(indent / 2 + 2) * 2 + usize::from(next(20) == 0);
                document.push_str(&" ".repeat(indent));
                for _ in 0..next(3).saturating_sub(1) {
                    document.push_str("- ");
                }
                match next(10) {
                    0 => document.push_str("# image: comment"),
                    1 => document.push_str("plain text"),
                    2 => document.push_str("  block line image: z"),
                    _ => {
                        document.push_str(KEYS[next(KEYS.len())]);
                        document.push(':');
                        let value = VALUES[next(VALUES.len())];
                        if !value.is_empty() {
                            document.push(' ');
                            document.push_str(value);
                        }
                    }
                }
                document.push('\n');
            }
            let mut parsed = Vec::new();
            let file = std::path::Path::new("f");
            if super::super::scan_yaml(document.as_bytes(), "f", file, &mut parsed).is_err() {
                continue;
            }
            valid += 1;
            if let Some(found) = scanned(&document) {
                accepted += 1;
                with_images += usize::from(!found.is_empty());
                assert_eq!(found, parsed, "{document}");
            }
        }
        // The corpus exercises both paths.
        assert!(
            valid > 20_000 && accepted > 10_000 && with_images > 1_000,
            "{valid} valid, {accepted} accepted, {with_images} with images"
        );
    }
}
