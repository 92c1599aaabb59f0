//! The subset of Go's text/template that sealer and sealos images use, and sprig's
//! semverCompare.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use base64::Engine as _;

use super::{KubeadmError, TEMPLATE_FUNCTIONS};

pub(super) type Result<T> = std::result::Result<T, KubeadmError>;
pub(super) type Vars = BTreeMap<String, String>;

pub(super) fn problem(line: usize, text: impl Into<String>) -> KubeadmError {
    KubeadmError::Template { line, problem: text.into() }
}

/// Expands `text` with `vars`.
pub(super) fn expand(text: &str, vars: &Vars) -> Result<String> {
    let segments = lex(text)?;
    let mut at = 0;
    let (nodes, end) = parse_list(&segments, &mut at)?;
    match end {
        Stop::Eof => {}
        Stop::End(line) => return Err(problem(line, "'{{end}}' without an '{{if}}'")),
        Stop::Else(line) | Stop::ElseIf(_, line) => {
            return Err(problem(line, "'{{else}}' without an '{{if}}'"));
        }
    }
    let mut out = String::with_capacity(text.len());
    exec(&nodes, vars, &mut out)?;
    Ok(out)
}

// --- Lexing: text and actions --------------------------------------------------------------

#[derive(Debug)]
pub(super) enum Segment {
    Text(String),
    Action { line: usize, tokens: Vec<(Token, usize)> },
}

#[derive(Debug, Clone, PartialEq)]
pub(super) enum Token {
    Field(String),
    Str(String),
    Int(i64),
    Bool(bool),
    Ident(String),
    Open,
    Close,
    Pipe,
}

pub(super) fn is_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\r' | '\n')
}

pub(super) fn lex(text: &str) -> Result<Vec<Segment>> {
    let mut segments = Vec::new();
    let mut rest = text;
    let mut line = 1;
    let mut trim_next = false;
    loop {
        let Some(open) = rest.find("{{") else {
            let tail = if trim_next { rest.trim_start_matches(is_space) } else { rest };
            if !tail.is_empty() {
                segments.push(Segment::Text(tail.into()));
            }
            return Ok(segments);
        };
        let mut before = &rest[..open];
        line += before.matches('\n').count();
        if trim_next {
            before = before.trim_start_matches(is_space);
        }
        let action_line = line;
        let after = &rest[open + 2..];
        let trim_left = after.starts_with('-') && after[1..].starts_with(is_space);
        if trim_left {
            before = before.trim_end_matches(is_space);
        }
        if !before.is_empty() {
            segments.push(Segment::Text(before.into()));
        }
        let body_start = usize::from(trim_left);
        let close = find_close(&after[body_start..], action_line)?;
        let body = &after[body_start..body_start + close];
        line += body.matches('\n').count();
        let trim_right = body.strip_suffix('-').is_some_and(|rest| rest.ends_with(is_space));
        let body = if trim_right { &body[..body.len() - 1] } else { body };
        trim_next = trim_right;
        rest = &after[body_start + close + 2..];
        if body.trim_start_matches(is_space).starts_with("/*") {
            continue;
        }
        let tokens = tokenize(body, action_line)?;
        segments.push(Segment::Action { line: action_line, tokens });
    }
}

/// Where the action's closing `}}` starts, skipping quoted text and comments.
pub(super) fn find_close(body: &str, line: usize) -> Result<usize> {
    let trimmed = body.trim_start_matches(is_space);
    if trimmed.starts_with("/*") {
        let start = body.len() - trimmed.len();
        let end = trimmed.find("*/").ok_or_else(|| problem(line, "unclosed comment: '/*' has no '*/'"))?;
        let after = &body[start + end + 2..];
        let after_trim = after.trim_start_matches(is_space);
        let after_trim = after_trim.strip_prefix('-').map_or(after_trim, |t| t.trim_start_matches(is_space));
        if after_trim.starts_with("}}") {
            return Ok(body.len() - after_trim.len());
        }
        return Err(problem(line, "a comment must end its action: '*/}}'"));
    }
    let bytes = body.as_bytes();
    let mut i = 0;
    let mut quote: Option<u8> = None;
    while i < bytes.len() {
        let b = bytes[i];
        match quote {
            Some(q) => {
                if b == b'\\' && q != b'`' {
                    i += 1;
                } else if b == q {
                    quote = None;
                }
            }
            None if b == b'"' || b == b'`' || b == b'\'' => quote = Some(b),
            None if b == b'}' && bytes.get(i + 1) == Some(&b'}') => return Ok(i),
            None => {}
        }
        i += 1;
    }
    Err(problem(line, "unclosed action: '{{' has no matching '}}'"))
}

pub(super) fn tokenize(body: &str, first_line: usize) -> Result<Vec<(Token, usize)>> {
    let chars: Vec<char> = body.chars().collect();
    let mut tokens = Vec::new();
    let mut line = first_line;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let start = i;
        match c {
            '\n' => {
                line += 1;
                i += 1;
            }
            c if is_space(c) => i += 1,
            '(' => {
                tokens.push((Token::Open, line));
                i += 1;
            }
            ')' => {
                tokens.push((Token::Close, line));
                i += 1;
            }
            '|' => {
                tokens.push((Token::Pipe, line));
                i += 1;
            }
            '"' => {
                let mut text = String::new();
                i += 1;
                loop {
                    let Some(&c) = chars.get(i) else {
                        return Err(problem(line, "unterminated string"));
                    };
                    i += 1;
                    match c {
                        '"' => break,
                        '\n' => return Err(problem(line, "newline in string")),
                        '\\' => {
                            let escaped = chars.get(i).copied().unwrap_or('\\');
                            i += 1;
                            text.push(match escaped {
                                'n' => '\n',
                                't' => '\t',
                                'r' => '\r',
                                '\\' => '\\',
                                '"' => '"',
                                '\'' => '\'',
                                other => {
                                    return Err(problem(
                                        line,
                                        format!("unsupported escape '\\{other}' in string"),
                                    ));
                                }
                            });
                        }
                        c => text.push(c),
                    }
                }
                tokens.push((Token::Str(text), line));
            }
            '`' => {
                i += 1;
                let end = chars[i..]
                    .iter()
                    .position(|&c| c == '`')
                    .ok_or_else(|| problem(line, "unterminated raw string"))?;
                let text: String = chars[i..i + end].iter().collect();
                tokens.push((Token::Str(text.clone()), line));
                line += text.matches('\n').count();
                i += end + 1;
            }
            '.' => {
                i += 1;
                let len = chars[i..].iter().take_while(|c| c.is_alphanumeric() || **c == '_').count();
                if len == 0 {
                    return Err(problem(
                        line,
                        "'.' alone (the whole data) is not supported; name a variable: {{ .NAME }}",
                    ));
                }
                let name: String = chars[i..i + len].iter().collect();
                i += len;
                if chars.get(i) == Some(&'.') {
                    return Err(problem(line, format!("'.{name}.…': variables have no fields")));
                }
                tokens.push((Token::Field(name), line));
            }
            '$' => return Err(problem(line, "template variables ('$') are not supported")),
            '\'' => return Err(problem(line, "character constants are not supported")),
            c if c.is_ascii_digit()
                || ((c == '-' || c == '+') && chars.get(i + 1).is_some_and(char::is_ascii_digit)) =>
            {
                i += 1;
                while chars.get(i).is_some_and(|c| c.is_alphanumeric() || *c == '.' || *c == '_') {
                    i += 1;
                }
                let text: String = chars[start..i].iter().collect();
                let value = text.parse::<i64>().map_err(|_| {
                    problem(line, format!("unsupported number '{text}': only decimal integers are"))
                })?;
                tokens.push((Token::Int(value), line));
            }
            c if c.is_alphabetic() || c == '_' => {
                while chars.get(i).is_some_and(|c| c.is_alphanumeric() || *c == '_') {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                tokens.push((
                    match word.as_str() {
                        "true" => Token::Bool(true),
                        "false" => Token::Bool(false),
                        "nil" => return Err(problem(line, "'nil' is not supported")),
                        _ => Token::Ident(word),
                    },
                    line,
                ));
            }
            ':' | '=' => return Err(problem(line, "variable assignment is not supported")),
            other => return Err(problem(line, format!("unexpected '{other}' in action"))),
        }
    }
    Ok(tokens)
}

// --- Parsing ---------------------------------------------------------------------------------

#[derive(Debug)]
pub(super) enum Node {
    Text(String),
    Output(Pipeline),
    If { branches: Vec<(Pipeline, Vec<Node>)>, otherwise: Vec<Node> },
}

#[derive(Debug)]
pub(super) struct Pipeline {
    commands: Vec<Command>,
}

#[derive(Debug)]
pub(super) struct Command {
    line: usize,
    operands: Vec<Operand>,
}

#[derive(Debug)]
pub(super) enum Operand {
    Field(String, usize),
    Literal(Val),
    Function(String, usize),
    Nested(Pipeline),
}

pub(super) enum Stop {
    Eof,
    End(usize),
    Else(usize),
    ElseIf(Pipeline, usize),
}

pub(super) const UNSUPPORTED_ACTIONS: &[&str] =
    &["range", "with", "define", "template", "block", "break", "continue"];

pub(super) fn parse_list(segments: &[Segment], at: &mut usize) -> Result<(Vec<Node>, Stop)> {
    let mut nodes = Vec::new();
    while let Some(segment) = segments.get(*at) {
        *at += 1;
        let (line, tokens) = match segment {
            Segment::Text(text) => {
                nodes.push(Node::Text(text.clone()));
                continue;
            }
            Segment::Action { line, tokens } => (*line, tokens.as_slice()),
        };
        let keyword = match tokens.first() {
            Some((Token::Ident(word), _)) => word.as_str(),
            _ => "",
        };
        match keyword {
            "if" => {
                let condition = parse_pipeline(&tokens[1..], line)?;
                nodes.push(parse_if(segments, at, condition, line)?);
            }
            "else" => {
                return match tokens.get(1) {
                    None => Ok((nodes, Stop::Else(line))),
                    Some((Token::Ident(word), _)) if word == "if" => {
                        Ok((nodes, Stop::ElseIf(parse_pipeline(&tokens[2..], line)?, line)))
                    }
                    Some(_) => Err(problem(line, "'else' takes nothing but 'if'")),
                };
            }
            "end" if tokens.len() == 1 => return Ok((nodes, Stop::End(line))),
            "end" => return Err(problem(line, "'end' takes no arguments")),
            word if UNSUPPORTED_ACTIONS.contains(&word) => {
                return Err(problem(
                    line,
                    format!(
                        "'{word}' is not supported: kubeadm templates may use variables ({{{{ .NAME }}}}), \
                         if/else/end and the functions {}",
                        TEMPLATE_FUNCTIONS.join(", ")
                    ),
                ));
            }
            _ => nodes.push(Node::Output(parse_pipeline(tokens, line)?)),
        }
    }
    Ok((nodes, Stop::Eof))
}

pub(super) fn parse_if(
    segments: &[Segment],
    at: &mut usize,
    condition: Pipeline,
    line: usize,
) -> Result<Node> {
    let mut branches = Vec::new();
    let mut condition = condition;
    loop {
        let (body, end) = parse_list(segments, at)?;
        branches.push((condition, body));
        match end {
            Stop::End(_) => return Ok(Node::If { branches, otherwise: Vec::new() }),
            Stop::ElseIf(next, _) => condition = next,
            Stop::Else(else_line) => {
                let (otherwise, end) = parse_list(segments, at)?;
                return match end {
                    Stop::End(_) => Ok(Node::If { branches, otherwise }),
                    Stop::Eof => Err(problem(line, "'if' has no matching '{{end}}'")),
                    Stop::Else(_) | Stop::ElseIf(..) => {
                        Err(problem(else_line, "a second '{{else}}' in one 'if'"))
                    }
                };
            }
            Stop::Eof => return Err(problem(line, "'if' has no matching '{{end}}'")),
        }
    }
}

pub(super) fn parse_pipeline(tokens: &[(Token, usize)], line: usize) -> Result<Pipeline> {
    let mut at = 0;
    let pipeline = parse_pipeline_at(tokens, &mut at, line, false)?;
    Ok(pipeline)
}

pub(super) fn parse_pipeline_at(
    tokens: &[(Token, usize)],
    at: &mut usize,
    line: usize,
    nested: bool,
) -> Result<Pipeline> {
    let mut commands = Vec::new();
    let mut operands = Vec::new();
    let mut command_line = tokens.get(*at).map_or(line, |(_, l)| *l);
    while let Some((token, token_line)) = tokens.get(*at) {
        *at += 1;
        match token {
            Token::Pipe => {
                if operands.is_empty() {
                    return Err(problem(*token_line, "missing command before '|'"));
                }
                commands.push(Command { line: command_line, operands: std::mem::take(&mut operands) });
                command_line = tokens.get(*at).map_or(*token_line, |(_, l)| *l);
            }
            Token::Close if nested => {
                return finish(commands, operands, command_line, *token_line);
            }
            Token::Close => return Err(problem(*token_line, "unexpected ')'")),
            Token::Open => operands.push(Operand::Nested(parse_pipeline_at(tokens, at, *token_line, true)?)),
            Token::Field(name) => operands.push(Operand::Field(name.clone(), *token_line)),
            Token::Str(text) => operands.push(Operand::Literal(Val::Str(text.clone()))),
            Token::Int(value) => operands.push(Operand::Literal(Val::Int(*value))),
            Token::Bool(value) => operands.push(Operand::Literal(Val::Bool(*value))),
            Token::Ident(name) => operands.push(Operand::Function(name.clone(), *token_line)),
        }
    }
    if nested {
        return Err(problem(line, "unclosed '('"));
    }
    finish(commands, operands, command_line, line)
}

pub(super) fn finish(
    mut commands: Vec<Command>,
    operands: Vec<Operand>,
    command_line: usize,
    line: usize,
) -> Result<Pipeline> {
    if operands.is_empty() {
        return Err(problem(
            line,
            if commands.is_empty() { "empty action" } else { "missing command after '|'" },
        ));
    }
    commands.push(Command { line: command_line, operands });
    Ok(Pipeline { commands })
}

// --- Evaluation ------------------------------------------------------------------------------

/// A value: env values are strings; literals may be numbers or booleans.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Val {
    Str(String),
    Int(i64),
    Bool(bool),
    /// An undefined variable, with the line that named it.
    Missing(String, usize),
}

impl Val {
    fn truthy(&self) -> bool {
        match self {
            Val::Str(text) => !text.is_empty(),
            Val::Int(value) => *value != 0,
            Val::Bool(value) => *value,
            Val::Missing(..) => false,
        }
    }

    /// The value, or the error its absence is.
    fn defined(self) -> Result<Val> {
        match self {
            Val::Missing(name, line) => Err(KubeadmError::UnknownVariable { line, name }),
            other => Ok(other),
        }
    }

    fn text(self) -> Result<String> {
        Ok(match self.defined()? {
            Val::Str(text) => text,
            Val::Int(value) => value.to_string(),
            Val::Bool(value) => value.to_string(),
            Val::Missing(..) => String::new(),
        })
    }

    fn kind(&self) -> &'static str {
        match self {
            Val::Str(_) => "a string",
            Val::Int(_) => "a number",
            Val::Bool(_) => "a boolean",
            Val::Missing(..) => "undefined",
        }
    }
}

pub(super) fn exec(nodes: &[Node], vars: &Vars, out: &mut String) -> Result<()> {
    for node in nodes {
        match node {
            Node::Text(text) => out.push_str(text),
            Node::Output(pipeline) => out.push_str(&eval_pipeline(pipeline, vars)?.text()?),
            Node::If { branches, otherwise } => {
                let mut taken = None;
                for (condition, body) in branches {
                    if eval_pipeline(condition, vars)?.truthy() {
                        taken = Some(body);
                        break;
                    }
                }
                exec(taken.unwrap_or(otherwise), vars, out)?;
            }
        }
    }
    Ok(())
}

pub(super) fn eval_pipeline(pipeline: &Pipeline, vars: &Vars) -> Result<Val> {
    let mut piped: Option<Val> = None;
    for command in &pipeline.commands {
        piped = Some(eval_command(command, piped, vars)?);
    }
    // The parser makes no empty pipeline; an empty one would be an empty string.
    Ok(piped.unwrap_or(Val::Str(String::new())))
}

pub(super) fn eval_command(command: &Command, piped: Option<Val>, vars: &Vars) -> Result<Val> {
    match command.operands.as_slice() {
        [Operand::Function(name, line), args @ ..] => call(name, *line, args, piped, vars),
        [single] if piped.is_none() => eval_operand(single, vars),
        _ => Err(problem(command.line, "only a function can take arguments or a piped value")),
    }
}

pub(super) fn eval_operand(operand: &Operand, vars: &Vars) -> Result<Val> {
    Ok(match operand {
        Operand::Field(name, line) => match vars.get(name) {
            Some(value) => Val::Str(value.clone()),
            None => Val::Missing(name.clone(), *line),
        },
        Operand::Literal(value) => value.clone(),
        Operand::Function(name, line) => call(name, *line, &[], None, vars)?,
        Operand::Nested(pipeline) => eval_pipeline(pipeline, vars)?,
    })
}

/// An argument, evaluated only when a function asks for it (`and` and `or` stop early).
pub(super) enum Arg<'a> {
    Operand(&'a Operand),
    Value(Val),
}

pub(super) fn call(
    name: &str,
    line: usize,
    operands: &[Operand],
    piped: Option<Val>,
    vars: &Vars,
) -> Result<Val> {
    let mut args: Vec<Arg> = operands.iter().map(Arg::Operand).collect();
    if let Some(value) = piped {
        args.push(Arg::Value(value));
    }
    let eval = |arg: &Arg| match arg {
        Arg::Operand(operand) => eval_operand(operand, vars),
        Arg::Value(value) => Ok(value.clone()),
    };
    let arity = |want: &str| problem(line, format!("function '{name}' takes {want}, not {}", args.len()));
    let strings = |count: usize| -> Result<Vec<String>> {
        if args.len() != count {
            return Err(arity(&plural(count)));
        }
        args.iter().map(|arg| eval(arg)?.text()).collect()
    };
    match name {
        "or" | "and" => {
            let mut last = None;
            for arg in &args {
                let value = eval(arg)?;
                if value.truthy() == (name == "or") {
                    return Ok(value);
                }
                last = Some(value);
            }
            last.ok_or_else(|| arity("at least 1 argument"))
        }
        "not" | "empty" => match args.as_slice() {
            [arg] => Ok(Val::Bool(!eval(arg)?.truthy())),
            _ => Err(arity("1 argument")),
        },
        "default" => match args.as_slice() {
            [fallback] => eval(fallback),
            [fallback, given] => {
                let given = eval(given)?;
                if given.truthy() { Ok(given) } else { eval(fallback) }
            }
            _ => Err(arity("1 or 2 arguments")),
        },
        "eq" => {
            let [first, rest @ ..] = args.as_slice() else { return Err(arity("at least 2 arguments")) };
            if rest.is_empty() {
                return Err(arity("at least 2 arguments"));
            }
            let first = eval(first)?.defined()?;
            for other in rest {
                if compare(&first, &eval(other)?.defined()?, line, true)? == Ordering::Equal {
                    return Ok(Val::Bool(true));
                }
            }
            Ok(Val::Bool(false))
        }
        "ne" | "lt" | "le" | "gt" | "ge" => {
            let [a, b] = args.as_slice() else { return Err(arity("2 arguments")) };
            let (a, b) = (eval(a)?.defined()?, eval(b)?.defined()?);
            let order = compare(&a, &b, line, name == "ne")?;
            Ok(Val::Bool(match name {
                "ne" => order != Ordering::Equal,
                "lt" => order == Ordering::Less,
                "le" => order != Ordering::Greater,
                "gt" => order == Ordering::Greater,
                _ => order != Ordering::Less,
            }))
        }
        "quote" | "squote" => {
            let mut words = Vec::new();
            for arg in &args {
                let text = eval(arg)?.text()?;
                words.push(if name == "quote" { go_quote(&text) } else { format!("'{text}'") });
            }
            Ok(Val::Str(words.join(" ")))
        }
        "upper" | "lower" | "trim" | "b64enc" | "b64dec" => {
            let [text] = <[String; 1]>::try_from(strings(1)?).map_err(|_| arity("1 argument"))?;
            Ok(Val::Str(match name {
                "upper" => text.to_uppercase(),
                "lower" => text.to_lowercase(),
                "trim" => text.trim().to_string(),
                "b64enc" => base64::engine::general_purpose::STANDARD.encode(text.as_bytes()),
                _ => base64::engine::general_purpose::STANDARD
                    .decode(text.trim())
                    .ok()
                    .and_then(|bytes| String::from_utf8(bytes).ok())
                    .ok_or_else(|| problem(line, format!("b64dec: '{text}' is not base64 of UTF-8 text")))?,
            }))
        }
        "printf" => {
            let [format, rest @ ..] = args.as_slice() else { return Err(arity("at least 1 argument")) };
            let format = eval(format)?.text()?;
            let values = rest.iter().map(|arg| eval(arg)?.defined()).collect::<Result<Vec<_>>>()?;
            printf(&format, values, line).map(Val::Str)
        }
        "semverCompare" => {
            let [constraint, version] =
                <[String; 2]>::try_from(strings(2)?).map_err(|_| arity("2 arguments"))?;
            semver_compare(&constraint, &version)
                .map(Val::Bool)
                .map_err(|why| problem(line, format!("semverCompare: {why}")))
        }
        _ => Err(problem(
            line,
            format!(
                "function '{name}' is not supported: kubeadm templates may use {}",
                TEMPLATE_FUNCTIONS.join(", ")
            ),
        )),
    }
}

pub(super) fn plural(count: usize) -> String {
    if count == 1 { "1 argument".into() } else { format!("{count} arguments") }
}

pub(super) fn compare(a: &Val, b: &Val, line: usize, equality: bool) -> Result<Ordering> {
    match (a, b) {
        (Val::Str(a), Val::Str(b)) => Ok(a.cmp(b)),
        (Val::Int(a), Val::Int(b)) => Ok(a.cmp(b)),
        (Val::Bool(a), Val::Bool(b)) if equality => Ok(a.cmp(b)),
        (Val::Bool(_), Val::Bool(_)) => Err(problem(line, "booleans cannot be ordered")),
        _ => Err(problem(line, format!("cannot compare {} with {}", a.kind(), b.kind()))),
    }
}

/// Go's `%q`, for printable text.
pub(super) fn go_quote(text: &str) -> String {
    let mut out = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Go's `printf` for the verbs `%s`, `%v`, `%d`, `%q` and `%%`.
pub(super) fn printf(format: &str, values: Vec<Val>, line: usize) -> Result<String> {
    let mut values = values.into_iter();
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let verb = chars.next().ok_or_else(|| problem(line, "printf: the format ends with '%'"))?;
        if verb == '%' {
            out.push('%');
            continue;
        }
        let value =
            values.next().ok_or_else(|| problem(line, format!("printf: no argument for '%{verb}'")))?;
        match (verb, value) {
            ('d', Val::Int(number)) => out.push_str(&number.to_string()),
            ('d', other) => {
                return Err(problem(line, format!("printf: '%d' needs a number, not {}", other.kind())));
            }
            ('s' | 'v', value) => out.push_str(&value.text()?),
            ('q', value) => out.push_str(&go_quote(&value.text()?)),
            (other, _) => {
                return Err(problem(line, format!("printf: the verb '%{other}' is not supported")));
            }
        }
    }
    if values.next().is_some() {
        return Err(problem(line, "printf: more arguments than verbs"));
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// semverCompare, as sprig (Masterminds semver) reads constraints

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct SemVer {
    core: [u64; 3],
    /// How many of major, minor, patch were written.
    given: usize,
    pre: Option<String>,
}

impl SemVer {
    fn parse(text: &str) -> Option<SemVer> {
        let text = text.trim().trim_start_matches(['v', 'V']);
        let text = text.split_once('+').map_or(text, |(version, _build)| version);
        let (core, pre) = match text.split_once('-') {
            Some((core, pre)) if !pre.is_empty() => (core, Some(pre.to_string())),
            Some(_) => return None,
            None => (text, None),
        };
        let mut parts = [0u64; 3];
        let mut given = 0;
        for (i, part) in core.split('.').enumerate() {
            if i >= 3 || part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            parts[i] = part.parse().ok()?;
            given = i + 1;
        }
        Some(SemVer { core: parts, given, pre })
    }

    fn cmp(&self, other: &SemVer) -> Ordering {
        self.core.cmp(&other.core).then_with(|| match (&self.pre, &other.pre) {
            (None, None) => Ordering::Equal,
            (None, Some(_)) => Ordering::Greater,
            (Some(_), None) => Ordering::Less,
            (Some(a), Some(b)) => a.cmp(b),
        })
    }
}

/// Whether `version` satisfies `constraint`: comparisons (`=`, `!=`, `>`, `<`, `>=`, `<=`),
/// `~` and `^` ranges, joined by `,` or spaces (and) and `||` (or). A pre-release version
/// satisfies only constraints that name a pre-release, as in Masterminds semver.
pub(super) fn semver_compare(constraint: &str, version: &str) -> std::result::Result<bool, String> {
    let version = SemVer::parse(version).ok_or_else(|| format!("'{version}' is not a semantic version"))?;
    let mut any = false;
    for alternative in constraint.split("||") {
        let mut all = true;
        let mut rest = alternative.trim();
        let mut count = 0;
        while !rest.is_empty() {
            let op_len = rest.find(|c: char| !"=!<>~^".contains(c)).unwrap_or(rest.len());
            let op = &rest[..op_len];
            rest = rest[op_len..].trim_start();
            let end = rest.find(|c: char| c == ',' || c.is_whitespace()).unwrap_or(rest.len());
            let bound_text = &rest[..end];
            rest = rest[end..].trim_start_matches(|c: char| c == ',' || c.is_whitespace());
            let bound = SemVer::parse(bound_text)
                .ok_or_else(|| format!("'{op}{bound_text}' is not a constraint kubeferry understands"))?;
            count += 1;
            all &= satisfies(&version, op, &bound).ok_or_else(|| format!("unsupported operator '{op}'"))?;
        }
        if count == 0 {
            return Err(format!("empty constraint in '{constraint}'"));
        }
        any |= all;
    }
    Ok(any)
}

pub(super) fn satisfies(version: &SemVer, op: &str, bound: &SemVer) -> Option<bool> {
    if version.pre.is_some() && bound.pre.is_none() {
        return Some(false);
    }
    let order = version.cmp(bound);
    let [major, minor, patch] = bound.core;
    let below = |limit: [u64; 3]| version.core < limit;
    Some(match op {
        "" | "=" => order == Ordering::Equal,
        "!=" => order != Ordering::Equal,
        ">" => order == Ordering::Greater,
        "<" => order == Ordering::Less,
        ">=" | "=>" => order != Ordering::Less,
        "<=" | "=<" => order != Ordering::Greater,
        "~" | "~>" => {
            let limit = if bound.given >= 2 { [major, minor + 1, 0] } else { [major + 1, 0, 0] };
            order != Ordering::Less && below(limit)
        }
        "^" => {
            let limit = if major > 0 || bound.given == 1 {
                [major + 1, 0, 0]
            } else if minor > 0 || bound.given == 2 {
                [0, minor + 1, 0]
            } else {
                [0, 0, patch + 1]
            };
            order != Ordering::Less && below(limit)
        }
        _ => return None,
    })
}
