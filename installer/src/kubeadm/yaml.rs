//! Writing YAML that kubeadm's YAML 1.1 reader takes as it was meant.

#[allow(unused_imports)]
use super::*;

// ---------------------------------------------------------------------------------------------
// Writing YAML

pub(super) fn emit_documents(docs: &[Doc]) -> String {
    let mut out = String::new();
    for (i, doc) in docs.iter().enumerate() {
        if i > 0 {
            out.push_str("---\n");
        }
        emit_mapping(&mut out, &doc.map, 0, false);
    }
    out
}

/// A non-empty mapping in block style; `inline` when the cursor already stands where its first
/// key goes (after `- `).
pub(super) fn emit_mapping(out: &mut String, map: &Mapping, indent: usize, inline: bool) {
    for (i, (key, value)) in map.iter().enumerate() {
        if !(inline && i == 0) {
            push_indent(out, indent);
        }
        out.push_str(&scalar(key));
        out.push(':');
        emit_after_key(out, value, indent);
    }
}

pub(super) fn emit_after_key(out: &mut String, value: &Value, indent: usize) {
    match value {
        Value::Mapping(map) if !map.is_empty() => {
            out.push('\n');
            emit_mapping(out, map, indent + 2, false);
        }
        Value::Sequence(items) if !items.is_empty() => {
            out.push('\n');
            emit_sequence(out, items, indent + 2, false);
        }
        Value::Tagged(tagged) if is_block(&tagged.value) => {
            let _ = write!(out, " {}", tagged.tag);
            emit_after_key(out, &tagged.value, indent);
        }
        other => {
            out.push(' ');
            out.push_str(&scalar(other));
            out.push('\n');
        }
    }
}

pub(super) fn emit_sequence(out: &mut String, items: &[Value], indent: usize, inline: bool) {
    for (i, item) in items.iter().enumerate() {
        if !(inline && i == 0) {
            push_indent(out, indent);
        }
        out.push_str("- ");
        match item {
            Value::Mapping(map) if !map.is_empty() => emit_mapping(out, map, indent + 2, true),
            Value::Sequence(nested) if !nested.is_empty() => emit_sequence(out, nested, indent + 2, true),
            Value::Tagged(tagged) if is_block(&tagged.value) => {
                let _ = writeln!(out, "{}", tagged.tag);
                match &tagged.value {
                    Value::Mapping(map) => emit_mapping(out, map, indent + 2, false),
                    Value::Sequence(nested) => emit_sequence(out, nested, indent + 2, false),
                    _ => {}
                }
            }
            other => {
                out.push_str(&scalar(other));
                out.push('\n');
            }
        }
    }
}

pub(super) fn is_block(value: &Value) -> bool {
    matches!(value, Value::Mapping(map) if !map.is_empty())
        || matches!(value, Value::Sequence(items) if !items.is_empty())
}

pub(super) fn push_indent(out: &mut String, indent: usize) {
    out.extend(std::iter::repeat_n(' ', indent));
}

/// The text of a scalar key, for field paths.
pub(super) fn scalar_text(value: &Value) -> Option<String> {
    match value {
        Value::String(text) => Some(text.clone()),
        Value::Number(number) => Some(number.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Null => Some("null".into()),
        _ => None,
    }
}

/// A scalar (or an empty collection) in flow form.
pub(super) fn scalar(value: &Value) -> String {
    match value {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(number) => number.to_string(),
        Value::String(text) => quote_yaml(text),
        Value::Sequence(_) => "[]".into(),
        Value::Mapping(_) => "{}".into(),
        Value::Tagged(tagged) => format!("{} {}", tagged.tag, scalar(&tagged.value)),
    }
}

/// A string as a YAML scalar that YAML 1.1 and 1.2 readers both read back as this string.
pub(super) fn quote_yaml(text: &str) -> String {
    if is_plain_safe(text) {
        return text.into();
    }
    if text.chars().all(|c| c == ' ' || !c.is_control()) {
        return format!("'{}'", text.replace('\'', "''"));
    }
    let mut out = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

pub(super) fn is_plain_safe(text: &str) -> bool {
    const SPECIAL: &[&str] = &[
        "y", "Y", "yes", "Yes", "YES", "n", "N", "no", "No", "NO", "true", "True", "TRUE", "false", "False",
        "FALSE", "on", "On", "ON", "off", "Off", "OFF", "null", "Null", "NULL", "~", "<<", "=",
    ];
    let Some(first) = text.chars().next() else { return false };
    if SPECIAL.contains(&text) || !text.is_ascii() {
        return false;
    }
    if !text.bytes().all(|b| b.is_ascii_alphanumeric() || b"._/-+=@%:".contains(&b)) {
        return false;
    }
    if !(first.is_ascii_alphanumeric() || first == '/' || first == '.' || first == '_') || text.ends_with(':')
    {
        return false;
    }
    let lower = text.to_ascii_lowercase();
    if [".inf", ".nan", "+.inf", "-.inf"].contains(&lower.as_str()) {
        return false;
    }
    // Anything a YAML 1.1 reader could take for a number or a date (0755, 1e3, 1_000, 0x1f, 1:20,
    // 2001-01-01, and, conservatively, dotted addresses) is quoted.
    let digits = text.strip_prefix(['+', '-']).unwrap_or(text);
    let numeric_start = digits.starts_with(|c: char| c.is_ascii_digit() || c == '.');
    let numeric_chars = digits.bytes().all(|b| b.is_ascii_hexdigit() || b"xXoO._:+-".contains(&b));
    !(numeric_start && numeric_chars)
}
