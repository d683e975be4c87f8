//! Label and field selectors as the API server parses them
//! (`k8s.io/apimachinery/pkg/labels` and `.../fields`): a selector that
//! does not parse, or a field the resource cannot be selected by, is a
//! 400 BadRequest with the parser's message, never an empty list.

use serde_json::Value;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Token {
    Identifier,
    In,
    NotIn,
    Bang,
    NotEquals,
    Equals,
    DoubleEquals,
    Greater,
    Less,
    Open,
    Close,
    Comma,
    End,
}

/// `labels.Lexer`: special symbols, identifiers, and the keywords `in`
/// and `notin` (identifiers wherever a value is expected).
fn lex(s: &str) -> Vec<(Token, String)> {
    let special = |c: char| "=!(),><".contains(c);
    let chars: Vec<char> = s.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        if special(c) {
            let two: String = chars[i..(i + 2).min(chars.len())].iter().collect();
            let (tok, len) = match two.as_str() {
                "!=" => (Token::NotEquals, 2),
                "==" => (Token::DoubleEquals, 2),
                _ => (
                    match c {
                        '!' => Token::Bang,
                        '=' => Token::Equals,
                        '(' => Token::Open,
                        ')' => Token::Close,
                        ',' => Token::Comma,
                        '>' => Token::Greater,
                        _ => Token::Less,
                    },
                    1,
                ),
            };
            out.push((tok, chars[i..i + len].iter().collect()));
            i += len;
            continue;
        }
        let start = i;
        while i < chars.len() && !chars[i].is_whitespace() && !special(chars[i]) {
            i += 1;
        }
        let word: String = chars[start..i].iter().collect();
        let tok = match word.as_str() {
            "in" => Token::In,
            "notin" => Token::NotIn,
            _ => Token::Identifier,
        };
        out.push((tok, word));
    }
    out.push((Token::End, String::new()));
    out
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Op {
    In,
    NotIn,
    Equals,
    NotEquals,
    Exists,
    DoesNotExist,
    Greater,
    Less,
}

#[derive(Clone, Debug)]
struct Requirement {
    key: String,
    op: Op,
    values: Vec<String>,
}

/// A parsed label selector.
#[derive(Clone, Debug, Default)]
pub struct LabelSelector(Vec<Requirement>);

struct Parser {
    tokens: Vec<(Token, String)>,
    at: usize,
}

impl Parser {
    /// The next token; `in`/`notin` are identifiers where values go.
    fn peek(&self, values: bool) -> (Token, String) {
        let (t, l) = self.tokens[self.at.min(self.tokens.len() - 1)].clone();
        match t {
            Token::In | Token::NotIn if values => (Token::Identifier, l),
            _ => (t, l),
        }
    }

    fn next(&mut self, values: bool) -> (Token, String) {
        let t = self.peek(values);
        self.at += 1;
        t
    }

    fn requirement(&mut self) -> Result<Requirement, String> {
        let (mut tok, mut key) = self.next(true);
        let mut op = None;
        if tok == Token::Bang {
            op = Some(Op::DoesNotExist);
            (tok, key) = self.next(true);
        }
        if tok != Token::Identifier {
            return Err(format!("found '{key}', expected: identifier"));
        }
        validate_key(&key)?;
        if op.is_none() && matches!(self.peek(true).0, Token::End | Token::Comma) {
            op = Some(Op::Exists);
        }
        if let Some(op) = op {
            return Ok(Requirement {
                key,
                op,
                values: Vec::new(),
            });
        }
        let (tok, lit) = self.next(false);
        let op = match tok {
            Token::In => Op::In,
            Token::NotIn => Op::NotIn,
            Token::Equals | Token::DoubleEquals => Op::Equals,
            Token::NotEquals => Op::NotEquals,
            Token::Greater => Op::Greater,
            Token::Less => Op::Less,
            _ => {
                return Err(format!(
                    "found '{lit}', expected: in, notin, =, ==, !=, gt, lt"
                ));
            }
        };
        let values = if matches!(op, Op::In | Op::NotIn) {
            self.value_set()?
        } else {
            self.exact_value()?
        };
        for (i, v) in values.iter().enumerate() {
            if matches!(op, Op::Greater | Op::Less) {
                if v.parse::<i64>().is_err() {
                    return Err(format!(
                        "values[{i}]: Invalid value: \"{v}\": for 'Gt', 'Lt' operators, the value must be an integer"
                    ));
                }
            } else if let Some(problem) = label_value_problem(v) {
                return Err(format!(
                    "values[{i}][{key}]: Invalid value: \"{v}\": {problem}"
                ));
            }
        }
        Ok(Requirement { key, op, values })
    }

    fn exact_value(&mut self) -> Result<Vec<String>, String> {
        if matches!(self.peek(true).0, Token::End | Token::Comma) {
            return Ok(vec![String::new()]);
        }
        match self.next(true) {
            (Token::Identifier, v) => Ok(vec![v]),
            (_, lit) => Err(format!("found '{lit}', expected: identifier")),
        }
    }

    fn value_set(&mut self) -> Result<Vec<String>, String> {
        let (tok, lit) = self.next(true);
        if tok != Token::Open {
            return Err(format!("found '{lit}', expected: '('"));
        }
        let (tok, lit) = self.peek(true);
        match tok {
            Token::Identifier | Token::Comma => {
                let mut set = Vec::new();
                loop {
                    match self.next(true) {
                        (Token::Identifier, v) => {
                            set.push(v);
                            match self.peek(true) {
                                (Token::Comma, _) => {}
                                (Token::Close, _) => break,
                                (_, l) => return Err(format!("found '{l}', expected: ',' or ')'")),
                            }
                        }
                        (Token::Comma, _) => {
                            if set.is_empty() {
                                set.push(String::new());
                            }
                            match self.peek(true).0 {
                                Token::Close => {
                                    set.push(String::new());
                                    break;
                                }
                                Token::Comma => {
                                    self.next(true);
                                    set.push(String::new());
                                }
                                _ => {}
                            }
                        }
                        (_, l) => return Err(format!("found '{l}', expected: ',', or identifier")),
                    }
                }
                if self.next(true).0 != Token::Close {
                    return Err(format!("found '{lit}', expected: ')'"));
                }
                set.sort();
                set.dedup();
                Ok(set)
            }
            Token::Close => {
                self.next(true);
                Ok(vec![String::new()])
            }
            _ => Err(format!("found '{lit}', expected: ',', ')' or identifier")),
        }
    }
}

const NAME_RULE: &str = "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character";

fn name_like(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

fn subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|part| {
            let b = part.as_bytes();
            !b.is_empty()
                && b[0].is_ascii_alphanumeric()
                && b[b.len() - 1].is_ascii_alphanumeric()
                && b.iter()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        })
}

/// `validateLabelKey`: a qualified name, `[prefix/]name`.
fn validate_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    let mut problems = Vec::new();
    if let Some(p) = prefix
        && !subdomain(p)
    {
        problems.push(
            "prefix part a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')".to_string(),
        );
    }
    if name.is_empty() {
        problems.push("name part must be non-empty".into());
    } else if name.len() > 63 {
        problems.push("name part must be no more than 63 characters".into());
    } else if !name_like(name) {
        problems.push(format!(
            "name part {NAME_RULE} (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')"
        ));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "key: Invalid value: \"{key}\": {}",
            problems.join("; ")
        ))
    }
}

fn label_value_problem(v: &str) -> Option<String> {
    if v.len() > 63 {
        return Some("must be no more than 63 characters".into());
    }
    if v.is_empty() || name_like(v) {
        return None;
    }
    Some(format!(
        "a valid label must be an empty string or {NAME_RULE} (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')"
    ))
}

impl LabelSelector {
    /// `labels.Parse`, with its error messages.
    pub fn parse(selector: &str) -> Result<Self, String> {
        let mut p = Parser {
            tokens: lex(selector),
            at: 0,
        };
        let mut out = Vec::new();
        loop {
            let (tok, lit) = p.peek(true);
            match tok {
                Token::Identifier | Token::Bang => {
                    let r = p
                        .requirement()
                        .map_err(|e| format!("unable to parse requirement: {e}"))?;
                    out.push(r);
                    let (t, l) = p.next(true);
                    match t {
                        Token::End => return Ok(Self(out)),
                        Token::Comma => {
                            let (t2, l2) = p.peek(true);
                            if !matches!(t2, Token::Identifier | Token::Bang) {
                                return Err(format!(
                                    "found '{l2}', expected: identifier after ','"
                                ));
                            }
                        }
                        _ => return Err(format!("found '{l}', expected: ',' or 'end of string'")),
                    }
                }
                Token::End => return Ok(Self(out)),
                _ => {
                    return Err(format!(
                        "found '{lit}', expected: !, identifier, or 'end of string'"
                    ));
                }
            }
        }
    }

    pub fn matches(&self, labels: &Value) -> bool {
        self.0.iter().all(|r| {
            let v = labels.get(&r.key).and_then(Value::as_str);
            let number = |x: &str| x.parse::<i64>().ok();
            match r.op {
                Op::In | Op::Equals => v.is_some_and(|v| r.values.iter().any(|x| x == v)),
                Op::NotIn | Op::NotEquals => v.is_none_or(|v| !r.values.iter().any(|x| x == v)),
                Op::Exists => v.is_some(),
                Op::DoesNotExist => v.is_none(),
                Op::Greater | Op::Less => {
                    let (Some(have), Some(want)) = (v.and_then(number), number(&r.values[0]))
                    else {
                        return false;
                    };
                    if r.op == Op::Greater {
                        have > want
                    } else {
                        have < want
                    }
                }
            }
        })
    }
}

/// One term of a field selector: (field, value, negated).
pub type FieldTerm = (String, String, bool);

/// `fields.ParseSelector`: terms `f=v`, `f==v`, `f!=v` split on commas
/// (a backslash escapes `,`, `=` and `\` itself).
pub fn parse_fields(selector: &str) -> Result<Vec<FieldTerm>, String> {
    let mut terms = Vec::new();
    let mut part = String::new();
    let mut parts = Vec::new();
    let mut escaped = false;
    for c in selector.chars() {
        if escaped {
            part.push('\\');
            part.push(c);
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == ',' {
            parts.push(std::mem::take(&mut part));
        } else {
            part.push(c);
        }
    }
    parts.push(part);
    let unescape = |s: &str| {
        s.replace("\\,", ",")
            .replace("\\=", "=")
            .replace("\\\\", "\\")
    };
    for part in parts.iter().filter(|p| !p.is_empty()) {
        let found = ["!=", "==", "="].iter().find_map(|op| {
            // The first unescaped occurrence.
            let mut i = 0;
            while let Some(at) = part[i..].find(op) {
                let at = i + at;
                if !part[..at].ends_with('\\') {
                    return Some((&part[..at], &part[at + op.len()..], *op == "!="));
                }
                i = at + 1;
            }
            None
        });
        match found {
            Some((k, v, neg)) => terms.push((k.to_string(), unescape(v), neg)),
            None => {
                return Err(format!(
                    "invalid selector: '{selector}'; can't understand '{part}'"
                ));
            }
        }
    }
    Ok(terms)
}

/// The fields a kind can be selected by besides `metadata.name` and
/// `metadata.namespace`, and how the API server words a field it cannot:
/// kinds with their own field label conversion say "field label not
/// supported"; the rest get the default conversion's message.
pub fn check_field(kind: &str, field: &str) -> Result<(), String> {
    if field == "metadata.name" || field == "metadata.namespace" {
        return Ok(());
    }
    let extra: &[&str] = match kind {
        "Pod" => &[
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "status.phase",
            "status.podIP",
            "status.nominatedNodeName",
        ],
        "Event" => &[
            "involvedObject.kind",
            "involvedObject.namespace",
            "involvedObject.name",
            "involvedObject.uid",
            "involvedObject.apiVersion",
            "involvedObject.resourceVersion",
            "involvedObject.fieldPath",
            "reason",
            "reportingComponent",
            "source",
            "type",
        ],
        "Secret" => &["type"],
        "Namespace" => &["status.phase"],
        "Service" => &["spec.clusterIP", "spec.type"],
        _ => &[],
    };
    if extra.contains(&field) {
        return Ok(());
    }
    Err(match kind {
        "Pod" | "Event" | "Secret" | "Namespace" | "Service" | "Node" | "ReplicationController" => {
            format!("field label not supported: {field}")
        }
        "ConfigMap"
        | "Endpoints"
        | "LimitRange"
        | "PersistentVolume"
        | "PersistentVolumeClaim"
        | "PodTemplate"
        | "ResourceQuota"
        | "ServiceAccount" => {
            format!("field label \"{field}\" not supported for \"{kind}\"")
        }
        _ => format!(
            "\"{field}\" is not a known field selector: only \"metadata.name\", \"metadata.namespace\""
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn labels_parse_and_match_as_the_api_server() {
        let labels = json!({"app": "web", "tier": "front", "n": "5"});
        let m = |s: &str| LabelSelector::parse(s).unwrap().matches(&labels);
        assert!(m("app=web,tier"));
        assert!(m("app in (web,api),!missing"));
        assert!(m("app notin (api)"));
        assert!(!m("app!=web"));
        assert!(m("n>4,n<6"));
        assert!(m(""));
        let err = |s: &str| LabelSelector::parse(s).unwrap_err();
        assert_eq!(
            err("tier=("),
            "unable to parse requirement: found '(', expected: identifier"
        );
        assert!(
            err("Tier In (a)")
                .starts_with("unable to parse requirement: found 'In', expected: in, notin")
        );
        assert!(err("a b").starts_with("unable to parse requirement"));
        assert!(err("app=web,").contains("expected: identifier after ','"));
        assert!(err("app=a b").contains("expected: ',' or 'end of string'"));
        assert!(err("bad key!=x").starts_with("unable to parse requirement"));
        assert!(err("Bad_/x=y").contains("key: Invalid value"));
    }

    #[test]
    fn fields_parse_as_the_api_server() {
        assert_eq!(
            parse_fields("metadata.name=a,b!=c").unwrap(),
            vec![
                ("metadata.name".into(), "a".into(), false),
                ("b".into(), "c".into(), true)
            ]
        );
        assert_eq!(
            parse_fields("foo").unwrap_err(),
            "invalid selector: 'foo'; can't understand 'foo'"
        );
        assert!(check_field("ConfigMap", "status.phase").is_err());
        assert!(check_field("Pod", "status.phase").is_ok());
    }
}
