//! The three patch types the API server takes besides apply: JSON merge
//! patch (RFC 7386), JSON patch (RFC 6902) and the strategic merge patch,
//! whose list merging comes from the schema's `x-kubernetes-patch-strategy`
//! and `x-kubernetes-patch-merge-key` ([`super::schema`]).
//!
//! The strategic merge follows apimachinery's `strategicpatch` rules, checked
//! against `kubectl patch --local --type strategic` by a differential test:
//! - a null deletes the key; a key the original lacks is merged into an
//!   empty value of its type (so directives apply and nulls vanish);
//! - maps merge key by key unless the field's strategy is `replace`;
//!   `$patch: replace` replaces a map, `$patch: delete` empties it;
//!   `$retainKeys` drops the original's other keys first;
//! - lists with strategy `merge` merge by their merge key (lists of maps) or
//!   as de-duplicated sets (lists of scalars); other lists are replaced. A
//!   list item `{"$patch": "delete", <key>: v}` deletes that item and
//!   `{"$patch": "replace"}` replaces the whole list by the other items.
//!   `$deleteFromPrimitiveList/<field>` removes scalars and
//!   `$setElementOrder/<field>` gives the order;
//! - merged lists are ordered as apimachinery does: the patch's items in
//!   the patch's (or `$setElementOrder`'s) order, interleaved with the
//!   items only the original has, which keep their original order; an item
//!   new to the original comes before the original's remaining items.

use serde_json::{Map, Value, json};

use super::schema::Node;

/// RFC 7386 JSON merge patch.
pub fn json_merge(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = json!({});
            }
            let t = target.as_object_mut().expect("object");
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    json_merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        other => *target = other.clone(),
    }
}

fn pointer_parts(path: &str) -> Vec<String> {
    path.split('/')
        .skip(1)
        .map(|p| p.replace("~1", "/").replace("~0", "~"))
        .collect()
}

fn pointer_of(parts: &[String]) -> String {
    parts
        .iter()
        .map(|p| format!("/{}", p.replace('~', "~0").replace('/', "~1")))
        .collect()
}

/// Adds `value` at `path` (RFC 6902 `add` semantics).
fn add_at(target: &mut Value, path: &str, value: Value, replace: bool) -> Result<(), String> {
    let parts = pointer_parts(path);
    let Some((last, parents)) = parts.split_last() else {
        *target = value;
        return Ok(());
    };
    let parent_path = pointer_of(parents);
    let parent = target
        .pointer_mut(&parent_path)
        .ok_or_else(|| format!("doc is missing path: \"{path}\": missing value"))?;
    match parent {
        Value::Array(a) => {
            if last == "-" && !replace {
                a.push(value);
                return Ok(());
            }
            let i: usize = last
                .parse()
                .map_err(|_| format!("invalid index in path \"{path}\""))?;
            if replace {
                *a.get_mut(i)
                    .ok_or_else(|| format!("doc is missing path: \"{path}\": missing value"))? =
                    value;
            } else {
                if i > a.len() {
                    return Err(format!("index out of range in path \"{path}\""));
                }
                a.insert(i, value);
            }
        }
        Value::Object(o) => {
            if replace && !o.contains_key(last) {
                return Err(format!("doc is missing key: \"{path}\": missing value"));
            }
            o.insert(last.clone(), value);
        }
        _ => return Err(format!("doc is missing path: \"{path}\": missing value")),
    }
    Ok(())
}

fn remove_at(target: &mut Value, path: &str) -> Result<Value, String> {
    let parts = pointer_parts(path);
    let (last, parents) = parts
        .split_last()
        .ok_or_else(|| "cannot remove the whole document".to_string())?;
    let parent = target
        .pointer_mut(&pointer_of(parents))
        .ok_or_else(|| format!("doc is missing path: \"{path}\": missing value"))?;
    match parent {
        Value::Array(a) => {
            let i: usize = last
                .parse()
                .map_err(|_| format!("invalid index in path \"{path}\""))?;
            if i >= a.len() {
                return Err(format!("doc is missing path: \"{path}\": missing value"));
            }
            Ok(a.remove(i))
        }
        Value::Object(o) => o
            .remove(last)
            .ok_or_else(|| format!("doc is missing key: \"{path}\": missing value")),
        _ => Err(format!("doc is missing path: \"{path}\": missing value")),
    }
}

/// RFC 6902 JSON patch: add, remove, replace, move, copy, test.
pub fn json_patch(target: &mut Value, ops: &Value) -> Result<(), String> {
    let ops = ops
        .as_array()
        .ok_or("a JSON patch must be an array of operations")?;
    for op in ops {
        let path = op["path"]
            .as_str()
            .ok_or_else(|| format!("operation {op} has no path"))?;
        match op["op"].as_str() {
            Some("test") => {
                if target.pointer(path) != Some(&op["value"]) {
                    return Err(format!("testing value {path} failed: test failed"));
                }
            }
            Some("remove") => {
                remove_at(target, path)?;
            }
            Some("add") => add_at(target, path, op["value"].clone(), false)?,
            Some("replace") => add_at(target, path, op["value"].clone(), true)?,
            Some(kind @ ("move" | "copy")) => {
                let from = op["from"]
                    .as_str()
                    .ok_or_else(|| format!("{kind} operation without from"))?;
                let value = if kind == "move" {
                    remove_at(target, from)?
                } else {
                    target
                        .pointer(from)
                        .cloned()
                        .ok_or_else(|| format!("doc is missing from path: \"{from}\""))?
                };
                add_at(target, path, value, false)?;
            }
            other => return Err(format!("Unexpected kind: {other:?}")),
        }
    }
    Ok(())
}

// === strategic merge patch ===

const DIRECTIVE: &str = "$patch";
const RETAIN_KEYS: &str = "$retainKeys";
const SET_ORDER: &str = "$setElementOrder/";
const DELETE_PRIMITIVES: &str = "$deleteFromPrimitiveList/";

/// Applies a strategic merge patch to `original` (a whole object), with
/// `node` the schema of its kind (None: plain JSON merge rules for lists).
pub fn strategic_merge(
    original: &Value,
    patch: &Value,
    node: Option<Node<'_>>,
) -> Result<Value, String> {
    let Value::Object(p) = patch else {
        return Err("a strategic merge patch must be a JSON object".into());
    };
    let mut o = match original {
        Value::Object(o) => o.clone(),
        _ => Map::new(),
    };
    merge_map(&mut o, p, node)?;
    Ok(Value::Object(o))
}

fn merge_map(
    original: &mut Map<String, Value>,
    patch: &Map<String, Value>,
    node: Option<Node<'_>>,
) -> Result<(), String> {
    if let Some(d) = patch.get(DIRECTIVE) {
        match d.as_str() {
            Some("replace") => {
                *original = patch
                    .iter()
                    .filter(|(k, _)| k.as_str() != DIRECTIVE)
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                return Ok(());
            }
            Some("delete") => {
                original.clear();
                return Ok(());
            }
            _ => {
                return Err(format!(
                    "unknown patch type: {d} in map: {}",
                    Value::Object(patch.clone())
                ));
            }
        }
    }
    if let Some(keep) = patch.get(RETAIN_KEYS) {
        let keep: Vec<&str> = keep
            .as_array()
            .ok_or("$retainKeys must be a list")?
            .iter()
            .filter_map(Value::as_str)
            .collect();
        original.retain(|k, _| keep.contains(&k.as_str()));
    }
    let mut handled = std::collections::BTreeSet::new();
    // Lists with an explicit order first.
    for (k, order) in patch {
        let Some(field) = k.strip_prefix(SET_ORDER) else {
            continue;
        };
        let order = order
            .as_array()
            .ok_or_else(|| format!("{k} must be a list"))?;
        let field_node = node.and_then(|n| n.field(field));
        let existing = original.get(field).cloned();
        let list_patch = patch.get(field).cloned().unwrap_or_else(|| json!([]));
        let deletions = patch.get(&format!("{DELETE_PRIMITIVES}{field}"));
        if let Value::Array(pl) = &list_patch {
            let key = field_node.and_then(|n| n.patch_merge_key());
            check_order(pl, order, key)?;
        }
        let mut merged = match (&existing, &list_patch) {
            (Some(Value::Array(orig)), Value::Array(pl)) => {
                merge_list(orig, pl, field_node, Some(order))?
            }
            (_, Value::Array(pl)) => pl.clone(),
            (_, other) => return Err(format!("{field} must be a list, found {other}")),
        };
        if let Some(Value::Array(d)) = deletions {
            merged.retain(|v| !d.contains(v));
        }
        if merged.is_empty() && existing.is_none() {
            original.remove(field);
        } else {
            original.insert(field.to_string(), Value::Array(merged));
        }
        handled.insert(field.to_string());
        handled.insert(format!("{DELETE_PRIMITIVES}{field}"));
    }
    for (k, v) in patch {
        if k == DIRECTIVE || k == RETAIN_KEYS || k.starts_with(SET_ORDER) || handled.contains(k) {
            continue;
        }
        if let Some(field) = k.strip_prefix(DELETE_PRIMITIVES) {
            let d = v.as_array().ok_or_else(|| format!("{k} must be a list"))?;
            if let Some(Value::Array(list)) = original.get_mut(field) {
                list.retain(|x| !d.contains(x));
            }
            continue;
        }
        if v.is_null() {
            original.remove(k);
            continue;
        }
        let field_node = node.and_then(|n| n.field(k));
        if !original.contains_key(k) {
            // Merged into an empty value of its own type: directives apply,
            // nulls vanish.
            let empty = match v {
                Value::Object(_) => json!({}),
                Value::Array(_) => json!([]),
                other => {
                    original.insert(k.clone(), other.clone());
                    continue;
                }
            };
            original.insert(k.clone(), empty);
        }
        let existing = original.get_mut(k).expect("inserted above");
        match (existing, v) {
            (Value::Object(eo), Value::Object(po)) => {
                let replace = field_node.is_some_and(|n| n.patch_strategies().contains(&"replace"));
                if replace {
                    *eo = po
                        .iter()
                        .filter(|(k, _)| k.as_str() != DIRECTIVE)
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect();
                } else {
                    merge_map(eo, po, field_node)?;
                }
            }
            (Value::Array(ea), Value::Array(pa)) => {
                let merging = field_node.is_some_and(|n| n.patch_strategies().contains(&"merge"));
                *ea = if merging {
                    merge_list(ea, pa, field_node, None)?
                } else {
                    pa.clone()
                };
            }
            (slot, other) => *slot = other.clone(),
        }
    }
    Ok(())
}

/// apimachinery's check that a patch list follows its `$setElementOrder`
/// list, and deletes nothing that list keeps.
fn check_order(patch: &[Value], order: &[Value], key: Option<&str>) -> Result<(), String> {
    let is_delete = |v: &Value| v.get(DIRECTIVE).and_then(Value::as_str) == Some("delete");
    let kept: Vec<&Value> = patch.iter().filter(|v| !is_delete(v)).collect();
    let same = |a: &Value, b: &Value| match key {
        Some(k) => key_of(a, k).is_some() && key_of(a, k) == key_of(b, k),
        None => a == b,
    };
    let (mut p, mut o) = (0, 0);
    while p < kept.len() && o < order.len() {
        if kept[p].get(DIRECTIVE).is_some() {
            p += 1;
            continue;
        }
        if same(kept[p], &order[o]) {
            p += 1;
        }
        o += 1;
    }
    if p < kept.len() && o >= order.len() {
        return Err(format!(
            "The order in patch list:\n{}\n doesn't match $setElementOrder list:\n{}\n",
            Value::Array(patch.to_vec()),
            Value::Array(order.to_vec())
        ));
    }
    for d in patch.iter().filter(|v| is_delete(v)) {
        if order.iter().any(|o| same(d, o)) {
            return Err(format!(
                "error: {d} is in the setElementOrder list and it's marked to be deleted"
            ));
        }
    }
    Ok(())
}

fn key_of<'v>(item: &'v Value, key: &str) -> Option<&'v Value> {
    item.as_object().and_then(|o| o.get(key))
}

/// Position of `item` in `list`, by merge key (maps) or value (scalars).
fn index_in(list: &[Value], item: &Value, key: Option<&str>) -> Option<usize> {
    match key {
        Some(k) => {
            let want = key_of(item, k)?;
            list.iter().position(|x| key_of(x, k) == Some(want))
        }
        None => list.iter().position(|x| x == item),
    }
}

fn merge_list(
    original: &[Value],
    patch: &[Value],
    node: Option<Node<'_>>,
    set_order: Option<&Vec<Value>>,
) -> Result<Vec<Value>, String> {
    let item_node = node.and_then(|n| n.items());
    let maps = patch.iter().chain(original).any(Value::is_object);
    let merge_key = node.and_then(|n| n.patch_merge_key());
    if !maps {
        // Scalars: a de-duplicated union.
        let mut merged: Vec<Value> = Vec::new();
        for v in original.iter().chain(patch) {
            if !merged.contains(v) {
                merged.push(v.clone());
            }
        }
        let order = set_order.map(Vec::as_slice).unwrap_or(patch);
        return Ok(order_like_apimachinery(merged, order, original, None));
    }
    let key = merge_key.ok_or_else(|| "cannot merge lists without merge key".to_string())?;
    let mut original = original.to_vec();
    let mut plain = Vec::new();
    let mut replace = false;
    for item in patch {
        match item.get(DIRECTIVE).and_then(Value::as_str) {
            None => plain.push(item.clone()),
            Some("delete") => {
                let want = key_of(item, key)
                    .ok_or("delete patch type with no merge key defined")?
                    .clone();
                original.retain(|x| key_of(x, key) != Some(&want));
            }
            Some("replace") => replace = true,
            Some("merge") => {
                return Err("merging lists cannot yet be specified in the patch".into());
            }
            Some(other) => return Err(format!("unknown patch type: {other} in map: {item}")),
        }
    }
    if replace {
        return Ok(plain);
    }
    let mut merged = original.clone();
    for item in &plain {
        let Some(want) = key_of(item, key) else {
            return Err(format!(
                "map: {} does not contain declared merge key: {key}",
                go_map(item)
            ));
        };
        match merged.iter_mut().find(|x| key_of(x, key) == Some(want)) {
            Some(existing) => {
                let mut m = existing.as_object().cloned().unwrap_or_default();
                merge_map(&mut m, item.as_object().expect("checked"), item_node)?;
                *existing = Value::Object(m);
            }
            None => merged.push(item.clone()),
        }
    }
    // Directive items (`$patch: delete`, ...) take no place in the order.
    let order = set_order.cloned().unwrap_or(plain);
    Ok(order_like_apimachinery(
        merged,
        &order,
        &original,
        Some(key),
    ))
}

/// How Go prints a map in that error message: `map[k:v ...]`.
fn go_map(v: &Value) -> String {
    match v {
        Value::Object(o) => format!(
            "map[{}]",
            o.iter()
                .map(|(k, v)| format!(
                    "{k}:{}",
                    v.as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| v.to_string())
                ))
                .collect::<Vec<_>>()
                .join(" ")
        ),
        other => other.to_string(),
    }
}

/// apimachinery's `normalizeElementOrder`: the items named by `patch_order`
/// sorted in that order, the others in the original's order, then merged.
fn order_like_apimachinery(
    merged: Vec<Value>,
    patch_order: &[Value],
    server_order: &[Value],
    key: Option<&str>,
) -> Vec<Value> {
    let (mut from_patch, mut server_only): (Vec<Value>, Vec<Value>) = merged
        .into_iter()
        .partition(|v| index_in(patch_order, v, key).is_some());
    from_patch.sort_by_key(|v| index_in(patch_order, v, key).unwrap_or(usize::MAX));
    server_only.sort_by_key(|v| index_in(server_order, v, key).unwrap_or(usize::MAX));
    let mut out = Vec::with_capacity(from_patch.len() + server_only.len());
    let (mut i, mut j) = (0, 0);
    while i < server_only.len() || j < from_patch.len() {
        if j >= from_patch.len() {
            out.push(server_only[i].clone());
            i += 1;
        } else if i >= server_only.len() {
            out.push(from_patch[j].clone());
            j += 1;
        } else {
            let left = index_in(server_order, &server_only[i], key);
            let right = index_in(server_order, &from_patch[j], key);
            match (left, right) {
                (Some(l), Some(r)) if l < r => {
                    out.push(server_only[i].clone());
                    i += 1;
                }
                _ => {
                    out.push(from_patch[j].clone());
                    j += 1;
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_merge_and_json_patch() {
        let mut o = json!({"a": {"b": 1, "c": 2}, "l": [1, 2]});
        json_merge(&mut o, &json!({"a": {"b": null, "d": 3}}));
        assert_eq!(o, json!({"a": {"c": 2, "d": 3}, "l": [1, 2]}));
        json_patch(
            &mut o,
            &json!([
                {"op": "add", "path": "/l/-", "value": 3},
                {"op": "remove", "path": "/l/0"},
                {"op": "move", "from": "/a/c", "path": "/e"},
                {"op": "copy", "from": "/e", "path": "/f"},
            ]),
        )
        .unwrap();
        assert_eq!(o, json!({"a": {"d": 3}, "l": [2, 3], "e": 2, "f": 2}));
        assert!(json_patch(&mut o, &json!([{"op": "test", "path": "/l/0", "value": 9}])).is_err());
        assert!(
            json_patch(
                &mut o,
                &json!([{"op": "replace", "path": "/nope", "value": 9}])
            )
            .is_err()
        );
    }
}
