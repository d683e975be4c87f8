//! Just enough of Kubernetes' protobuf encoding to read what `kubectl auth
//! can-i` sends (a SelfSubjectAccessReview, always as protobuf): the `k8s\0`
//! envelope around a `runtime.Unknown`, and the review's resource
//! attributes. Field numbers are those of `k8s.io/api/authorization/v1`.

use serde_json::{Value, json};

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
    let mut out = Vec::new();
    let mut i = 0;
    while i < buf.len() {
        let key = varint(buf, &mut i)?;
        let (number, wire) = (key >> 3, key & 7);
        match wire {
            0 => {
                varint(buf, &mut i)?;
            }
            1 => i += 8,
            2 => {
                let len = varint(buf, &mut i)? as usize;
                let end = i
                    .checked_add(len)
                    .filter(|e| *e <= buf.len())
                    .ok_or("truncated field")?;
                out.push((number, &buf[i..end]));
                i = end;
            }
            5 => i += 4,
            other => return Err(format!("unsupported wire type {other}")),
        }
    }
    Ok(out)
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
