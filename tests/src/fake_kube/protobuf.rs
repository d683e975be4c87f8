//! Just enough of Kubernetes' protobuf encoding to read what kubectl sends
//! in it: `kubectl auth can-i` (a SelfSubjectAccessReview, always), and the
//! objects of `kubectl create configmap|secret|deployment|namespace|service`
//! (its generators send built-in kinds in protobuf). The `k8s\0` envelope
//! around a `runtime.Unknown`, then each message by a table of its fields
//! (numbers as in `k8s.io/api` and `k8s.io/apimachinery`); a field the
//! tables do not name is refused unless it is empty, never dropped.

use serde_json::{Value, json};

use super::base64;

/// Reads a varint at `*i`.
fn varint(buf: &[u8], i: &mut usize) -> Result<u64, String> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *buf.get(*i).ok_or("truncated varint")?;
        *i += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err("varint too long".into())
}

/// The length-delimited fields of a message: (field number, bytes).
fn fields(buf: &[u8]) -> Result<Vec<(u64, &[u8])>, String> {
    Ok(wire_fields(buf)?
        .into_iter()
        .filter_map(|(number, wire)| match wire {
            Wire::Bytes(b) => Some((number, b)),
            Wire::Varint(_) => None,
        })
        .collect())
}

fn field<'a>(fs: &[(u64, &'a [u8])], n: u64) -> Option<&'a [u8]> {
    fs.iter().find(|(k, _)| *k == n).map(|(_, v)| *v)
}

fn text(fs: &[(u64, &[u8])], n: u64) -> String {
    field(fs, n)
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .unwrap_or_default()
}

/// A SelfSubjectAccessReview in protobuf, as JSON.
pub fn self_subject_access_review(body: &[u8]) -> Result<Value, String> {
    let payload = body
        .strip_prefix(b"k8s\x00")
        .ok_or("not a Kubernetes protobuf envelope")?;
    let unknown = fields(payload)?;
    let raw = field(&unknown, 2).ok_or("the envelope holds no object")?;
    let review = fields(raw)?;
    let spec = fields(field(&review, 2).unwrap_or_default())?;
    let mut out = json!({
        "apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
        "metadata": {}, "spec": {},
    });
    if let Some(ra) = field(&spec, 1) {
        let a = fields(ra)?;
        out["spec"]["resourceAttributes"] = json!({
            "namespace": text(&a, 1), "verb": text(&a, 2), "group": text(&a, 3),
            "version": text(&a, 4), "resource": text(&a, 5), "subresource": text(&a, 6),
            "name": text(&a, 7),
        });
    }
    if let Some(nra) = field(&spec, 2) {
        let a = fields(nra)?;
        out["spec"]["nonResourceAttributes"] = json!({"path": text(&a, 1), "verb": text(&a, 2)});
    }
    Ok(out)
}

/// How a protobuf field reads as JSON.
#[derive(Clone, Copy)]
enum Kind {
    Text,
    Int,
    Bool,
    Message(&'static [Field]),
    /// `map<string, string>`.
    TextMap,
    /// `map<string, bytes>`, values as base64.
    BytesMap,
    /// `map<string, Quantity>` (resource requests and limits).
    QuantityMap,
    /// An `IntOrString` (a target port).
    IntOrText,
    /// Read past: what a client sends there a server ignores (a status).
    Ignored,
}

/// A field: number, JSON name, kind, repeated.
type Field = (u64, &'static str, Kind, bool);

const OBJECT_META: &[Field] = &[
    (1, "name", Kind::Text, false),
    (2, "generateName", Kind::Text, false),
    (3, "namespace", Kind::Text, false),
    (11, "labels", Kind::TextMap, false),
    (12, "annotations", Kind::TextMap, false),
    (14, "finalizers", Kind::Text, true),
];
const LABEL_SELECTOR: &[Field] = &[(1, "matchLabels", Kind::TextMap, false)];
const CONTAINER_PORT: &[Field] = &[
    (1, "name", Kind::Text, false),
    (2, "hostPort", Kind::Int, false),
    (3, "containerPort", Kind::Int, false),
    (4, "protocol", Kind::Text, false),
];
const ENV_VAR: &[Field] = &[
    (1, "name", Kind::Text, false),
    (2, "value", Kind::Text, false),
];
const RESOURCES: &[Field] = &[
    (1, "limits", Kind::QuantityMap, false),
    (2, "requests", Kind::QuantityMap, false),
];
const CONTAINER: &[Field] = &[
    (1, "name", Kind::Text, false),
    (2, "image", Kind::Text, false),
    (3, "command", Kind::Text, true),
    (4, "args", Kind::Text, true),
    (5, "workingDir", Kind::Text, false),
    (6, "ports", Kind::Message(CONTAINER_PORT), true),
    (7, "env", Kind::Message(ENV_VAR), true),
    (8, "resources", Kind::Message(RESOURCES), false),
    (14, "imagePullPolicy", Kind::Text, false),
];
const POD_SPEC: &[Field] = &[
    (2, "containers", Kind::Message(CONTAINER), true),
    (3, "restartPolicy", Kind::Text, false),
    (8, "serviceAccountName", Kind::Text, false),
];
const POD_TEMPLATE: &[Field] = &[
    (1, "metadata", Kind::Message(OBJECT_META), false),
    (2, "spec", Kind::Message(POD_SPEC), false),
];
const STRATEGY: &[Field] = &[(1, "type", Kind::Text, false)];
const DEPLOYMENT_SPEC: &[Field] = &[
    (1, "replicas", Kind::Int, false),
    (2, "selector", Kind::Message(LABEL_SELECTOR), false),
    (3, "template", Kind::Message(POD_TEMPLATE), false),
    (4, "strategy", Kind::Message(STRATEGY), false),
    (5, "minReadySeconds", Kind::Int, false),
    (6, "revisionHistoryLimit", Kind::Int, false),
    (7, "paused", Kind::Bool, false),
    (9, "progressDeadlineSeconds", Kind::Int, false),
];
const SERVICE_PORT: &[Field] = &[
    (1, "name", Kind::Text, false),
    (2, "protocol", Kind::Text, false),
    (3, "port", Kind::Int, false),
    (4, "targetPort", Kind::IntOrText, false),
    (5, "nodePort", Kind::Int, false),
];
const SERVICE_SPEC: &[Field] = &[
    (1, "ports", Kind::Message(SERVICE_PORT), true),
    (2, "selector", Kind::TextMap, false),
    (3, "clusterIP", Kind::Text, false),
    (4, "type", Kind::Text, false),
    (11, "externalName", Kind::Text, false),
];
const CONFIG_MAP: &[Field] = &[
    (1, "metadata", Kind::Message(OBJECT_META), false),
    (2, "data", Kind::TextMap, false),
    (3, "binaryData", Kind::BytesMap, false),
    (4, "immutable", Kind::Bool, false),
];
const SECRET: &[Field] = &[
    (1, "metadata", Kind::Message(OBJECT_META), false),
    (2, "data", Kind::BytesMap, false),
    (3, "type", Kind::Text, false),
    (4, "stringData", Kind::TextMap, false),
    (5, "immutable", Kind::Bool, false),
];
const NAMESPACE: &[Field] = &[
    (1, "metadata", Kind::Message(OBJECT_META), false),
    (3, "status", Kind::Ignored, false),
];
const DEPLOYMENT: &[Field] = &[
    (1, "metadata", Kind::Message(OBJECT_META), false),
    (2, "spec", Kind::Message(DEPLOYMENT_SPEC), false),
    (3, "status", Kind::Ignored, false),
];
const SERVICE: &[Field] = &[
    (1, "metadata", Kind::Message(OBJECT_META), false),
    (2, "spec", Kind::Message(SERVICE_SPEC), false),
    (3, "status", Kind::Ignored, false),
];

/// Every field of a message with its wire value: (number, varint or
/// bytes).
enum Wire<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
}

fn wire_fields(buf: &[u8]) -> Result<Vec<(u64, Wire<'_>)>, String> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < buf.len() {
        let key = varint(buf, &mut i)?;
        let (number, wire) = (key >> 3, key & 7);
        match wire {
            0 => out.push((number, Wire::Varint(varint(buf, &mut i)?))),
            1 => i += 8,
            2 => {
                let len = varint(buf, &mut i)? as usize;
                let end = i
                    .checked_add(len)
                    .filter(|e| *e <= buf.len())
                    .ok_or("truncated field")?;
                out.push((number, Wire::Bytes(&buf[i..end])));
                i = end;
            }
            5 => i += 4,
            other => return Err(format!("unsupported wire type {other}")),
        }
    }
    Ok(out)
}

/// A map entry (key 1, value 2) as its key and raw value.
fn entry(bytes: &[u8]) -> Result<(String, &[u8]), String> {
    let fs = fields(bytes)?;
    Ok((text(&fs, 1), field(&fs, 2).unwrap_or_default()))
}

fn value_of(kind: Kind, wire: &Wire<'_>) -> Result<Value, String> {
    Ok(match (kind, wire) {
        (Kind::Int, Wire::Varint(v)) => json!(*v as i64 as i32),
        (Kind::Bool, Wire::Varint(v)) => json!(*v != 0),
        (Kind::Text, Wire::Bytes(b)) => json!(String::from_utf8_lossy(b)),
        (Kind::Message(schema), Wire::Bytes(b)) => message(b, schema)?,
        (Kind::IntOrText, Wire::Bytes(b)) => {
            let fs = wire_fields(b)?;
            let is_text = fs
                .iter()
                .any(|(n, w)| *n == 1 && matches!(w, Wire::Varint(1)));
            let mut value = json!(0);
            for (n, w) in &fs {
                match (n, w, is_text) {
                    (2, Wire::Varint(v), false) => value = json!(*v as i64 as i32),
                    (3, Wire::Bytes(s), true) => value = json!(String::from_utf8_lossy(s)),
                    _ => {}
                }
            }
            value
        }
        _ => return Err("a field of an unexpected wire type".into()),
    })
}

/// A message read with `schema`, as JSON; fields the schema does not name
/// are refused (never dropped without a word).
fn message(buf: &[u8], schema: &[Field]) -> Result<Value, String> {
    let mut out = serde_json::Map::new();
    for (number, wire) in wire_fields(buf)? {
        // Kubernetes' protobuf writes every field that is not a pointer,
        // empty or not (`selfLink: ""`, `generation: 0`): an empty one
        // says nothing, and reads as JSON's omitted field.
        let empty = match &wire {
            Wire::Varint(v) => *v == 0,
            Wire::Bytes(b) => b.is_empty(),
        };
        let Some(&(_, name, kind, repeated)) = schema.iter().find(|f| f.0 == number) else {
            if empty {
                continue;
            }
            return Err(format!("field {number} is not one this fake server reads"));
        };
        if matches!(kind, Kind::Ignored) {
            continue;
        }
        // `replicas` is a pointer: a 0 written is a 0 asked for.
        if empty && !repeated && name != "replicas" && !matches!(kind, Kind::Message(_)) {
            continue;
        }
        let value = match (kind, &wire) {
            (Kind::TextMap | Kind::BytesMap | Kind::QuantityMap, Wire::Bytes(b)) => {
                let (key, raw) = entry(b)?;
                let value = match kind {
                    Kind::TextMap => json!(String::from_utf8_lossy(raw)),
                    Kind::BytesMap => json!(base64(raw)),
                    _ => json!(text(&fields(raw)?, 1)),
                };
                let map = out.entry(name).or_insert_with(|| json!({}));
                map[key] = value;
                continue;
            }
            _ => value_of(kind, &wire)?,
        };
        if repeated {
            let list = out.entry(name).or_insert_with(|| json!([]));
            list.as_array_mut().expect("a list").push(value);
        } else {
            out.insert(name.to_string(), value);
        }
    }
    Ok(Value::Object(out))
}

/// An object `kubectl create` sends in protobuf (its generators do, for
/// the built-in kinds), as JSON: ConfigMap, Secret, Namespace, Deployment
/// and Service, the kinds its `create` subcommands for them make. Field
/// numbers are those of `k8s.io/api` (core/v1, apps/v1) and
/// `k8s.io/apimachinery` (meta/v1).
pub fn object(body: &[u8]) -> Result<Value, String> {
    let payload = body
        .strip_prefix(b"k8s\x00")
        .ok_or("not a Kubernetes protobuf envelope")?;
    let unknown = fields(payload)?;
    let type_meta = fields(field(&unknown, 1).unwrap_or_default())?;
    let (api_version, kind) = (text(&type_meta, 1), text(&type_meta, 2));
    let raw = field(&unknown, 2).ok_or("the envelope holds no object")?;
    let schema = match (api_version.as_str(), kind.as_str()) {
        ("v1", "ConfigMap") => CONFIG_MAP,
        ("v1", "Secret") => SECRET,
        ("v1", "Namespace") => NAMESPACE,
        ("v1", "Service") => SERVICE,
        ("apps/v1", "Deployment") => DEPLOYMENT,
        _ => {
            return Err(format!(
                "{api_version} {kind} in protobuf is not read by this fake server; send JSON"
            ));
        }
    };
    let mut object = message(raw, schema)?;
    object["apiVersion"] = json!(api_version);
    object["kind"] = json!(kind);
    Ok(object)
}

#[cfg(test)]
mod tests {
    use super::base64;

    /// The server's base64 (a Secret's data, read from protobuf too) is
    /// RFC 4648's.
    #[test]
    fn base64_as_rfc_4648() {
        for (raw, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(raw.as_bytes()), encoded);
        }
    }
}
