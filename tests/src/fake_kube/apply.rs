//! Server-side apply and field ownership: a minimal `managedFields` model.
//!
//! Every write records which manager set which fields, in the real
//! `metadata.managedFields` format (`fieldsType: FieldsV1`, paths like
//! `f:spec`, `k:{"name":"app"}`, `v:"x"`, and `.` for a list item itself).
//! The rules, from the server-side apply documentation:
//!
//! - Fields are leaves of the object as the schema shapes it: a granular map
//!   or struct is a set of fields, an atomic map or list is one field
//!   (`x-kubernetes-map-type: atomic`, `x-kubernetes-list-type: atomic`), a
//!   list of type `map` is a set of items keyed by `x-kubernetes-list-map-keys`,
//!   a list of type `set` is a set of values.
//! - An apply sets the fields of its configuration. A field another manager
//!   owns whose value the apply would change is a conflict: 409, listing
//!   each, unless `force` (then the applier takes the field over).
//! - Fields the applier owned and no longer applies are removed, unless
//!   another manager owns them too.
//! - Any other write (create, replace, patch) gives its manager the fields
//!   it changed, taken from whoever had them; it never conflicts.
//! - `apiVersion`, `kind`, the identity and bookkeeping of `metadata`, and
//!   `status` are not owned.

use std::collections::BTreeSet;

use serde_json::{Map, Value, json};

use super::schema::{ListType, Node};

/// One step of a field path.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Step {
    /// `f:name`: a field of a struct or map.
    Field(String),
    /// `k:{...}`: an item of a list of type map, by its keys (canonical JSON).
    Key(String),
    /// `v:...`: a value of a list of type set (canonical JSON).
    Value(String),
}

pub type Path = Vec<Step>;
pub type FieldSet = BTreeSet<Path>;

const UNOWNED_METADATA: [&str; 9] = [
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "managedFields",
    "selfLink",
    "deletionTimestamp",
];

/// The key object of a list-map item, with Kubernetes' defaults for key
/// fields a client may leave out (`protocol: TCP`).
fn item_key(item: &Value, keys: &[String]) -> Option<String> {
    let mut m = Map::new();
    for k in keys {
        let v = match item.get(k) {
            Some(v) if !v.is_null() => v.clone(),
            _ if k == "protocol" => json!("TCP"),
            _ => return None,
        };
        m.insert(k.clone(), v);
    }
    Some(canonical(&Value::Object(m)))
}

/// JSON with sorted keys (serde_json's map is sorted: plain `to_string`).
fn canonical(v: &Value) -> String {
    v.to_string()
}

/// The fields a (whole or partial) object sets.
pub fn field_set(object: &Value, root: Option<Node<'_>>) -> FieldSet {
    let mut out = FieldSet::new();
    let Some(o) = object.as_object() else {
        return out;
    };
    for (k, v) in o {
        let node = root.and_then(|n| n.field(k));
        match k.as_str() {
            "apiVersion" | "kind" | "status" => {}
            "metadata" => {
                if let Some(m) = v.as_object() {
                    for (mk, mv) in m {
                        if !UNOWNED_METADATA.contains(&mk.as_str()) {
                            let mn = node.and_then(|n| n.field(mk));
                            collect(
                                mv,
                                mn,
                                vec![Step::Field(k.clone()), Step::Field(mk.clone())],
                                &mut out,
                            );
                        }
                    }
                }
            }
            _ => collect(v, node, vec![Step::Field(k.clone())], &mut out),
        }
    }
    out
}

fn collect(value: &Value, node: Option<Node<'_>>, prefix: Path, out: &mut FieldSet) {
    match value {
        Value::Object(m) if !node.is_some_and(|n| n.map_is_atomic()) && !m.is_empty() => {
            for (k, v) in m {
                let mut p = prefix.clone();
                p.push(Step::Field(k.clone()));
                collect(v, node.and_then(|n| n.field(k)), p, out);
            }
        }
        Value::Array(items) => match node.map(|n| n.list_type()) {
            Some(ListType::Set) => {
                if items.is_empty() {
                    out.insert(prefix.clone());
                }
                for v in items {
                    let mut p = prefix.clone();
                    p.push(Step::Value(canonical(v)));
                    out.insert(p);
                }
            }
            Some(ListType::Map(keys)) => {
                if items.is_empty() {
                    out.insert(prefix.clone());
                }
                let item_node = node.and_then(|n| n.items());
                for item in items {
                    let Some(k) = item_key(item, &keys) else {
                        out.insert(prefix.clone());
                        continue;
                    };
                    let mut p = prefix.clone();
                    p.push(Step::Key(k));
                    out.insert(p.clone());
                    if let Some(m) = item.as_object() {
                        for (f, v) in m {
                            let mut fp = p.clone();
                            fp.push(Step::Field(f.clone()));
                            collect(v, item_node.and_then(|n| n.field(f)), fp, out);
                        }
                    }
                }
            }
            _ => {
                out.insert(prefix);
            }
        },
        _ => {
            out.insert(prefix);
        }
    }
}

/// Whether two objects differ at `path`: a list-map item by presence (its
/// fields are paths of their own), anything else by value.
fn differs(a: &Value, b: &Value, path: &[Step], root: Option<Node<'_>>) -> bool {
    let (x, y) = (value_at(a, path, root), value_at(b, path, root));
    if matches!(path.last(), Some(Step::Key(_))) {
        x.is_some() != y.is_some()
    } else {
        x != y
    }
}

/// The value at `path`, if the object has one.
pub fn value_at<'v>(object: &'v Value, path: &[Step], root: Option<Node<'_>>) -> Option<&'v Value> {
    let mut v = object;
    let mut node = root;
    for step in path {
        match step {
            Step::Field(f) => {
                v = v.get(f)?;
                node = node.and_then(|n| n.field(f));
            }
            Step::Key(k) => {
                let keys = match node.map(|n| n.list_type()) {
                    Some(ListType::Map(keys)) => keys,
                    _ => return None,
                };
                v = v
                    .as_array()?
                    .iter()
                    .find(|item| item_key(item, &keys).as_deref() == Some(k.as_str()))?;
                node = node.and_then(|n| n.items());
            }
            Step::Value(x) => {
                v = v.as_array()?.iter().find(|item| canonical(item) == *x)?;
            }
        }
    }
    Some(v)
}

/// Removes the field at `path` (an item, a value or a field).
fn remove_path(object: &mut Value, path: &[Step], root: Option<Node<'_>>) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut v = object;
    let mut node = root;
    for step in parents {
        let next = match step {
            Step::Field(f) => {
                node = node.and_then(|n| n.field(f));
                v.get_mut(f)
            }
            Step::Key(k) => {
                let keys = match node.map(|n| n.list_type()) {
                    Some(ListType::Map(keys)) => keys,
                    _ => return,
                };
                node = node.and_then(|n| n.items());
                v.as_array_mut().and_then(|a| {
                    a.iter_mut()
                        .find(|item| item_key(item, &keys).as_deref() == Some(k.as_str()))
                })
            }
            Step::Value(_) => return,
        };
        match next {
            Some(n) => v = n,
            None => return,
        }
    }
    match last {
        Step::Field(f) => {
            if let Some(m) = v.as_object_mut() {
                m.remove(f);
            }
        }
        Step::Key(k) => {
            if let (Some(ListType::Map(keys)), Some(a)) =
                (node.map(|n| n.list_type()), v.as_array_mut())
            {
                a.retain(|item| item_key(item, &keys).as_deref() != Some(k.as_str()));
            }
        }
        Step::Value(x) => {
            if let Some(a) = v.as_array_mut() {
                a.retain(|item| canonical(item) != *x);
            }
        }
    }
}

/// Sets the applied configuration's values into `live`.
fn merge_applied(live: &mut Value, applied: &Value, node: Option<Node<'_>>) {
    match (live, applied) {
        (Value::Object(l), Value::Object(a)) if !node.is_some_and(|n| n.map_is_atomic()) => {
            for (k, v) in a {
                let child = node.and_then(|n| n.field(k));
                match l.get_mut(k) {
                    Some(existing) => merge_applied(existing, v, child),
                    None => {
                        l.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (Value::Array(l), Value::Array(a)) => match node.map(|n| n.list_type()) {
            Some(ListType::Set) => {
                for v in a {
                    if !l.contains(v) {
                        l.push(v.clone());
                    }
                }
            }
            Some(ListType::Map(keys)) => {
                let item_node = node.and_then(|n| n.items());
                for item in a {
                    let key = item_key(item, &keys);
                    match l
                        .iter_mut()
                        .find(|x| key.is_some() && item_key(x, &keys) == key)
                    {
                        Some(existing) => merge_applied(existing, item, item_node),
                        None => l.push(item.clone()),
                    }
                }
            }
            _ => *l = a.clone(),
        },
        (slot, v) => *slot = v.clone(),
    }
}

// === managedFields ===

/// One `managedFields` entry.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub manager: String,
    pub operation: String,
    pub api_version: String,
    pub fields: FieldSet,
    pub time: String,
}

fn encode_step(s: &Step) -> String {
    match s {
        Step::Field(f) => format!("f:{f}"),
        Step::Key(k) => format!("k:{k}"),
        Step::Value(v) => format!("v:{v}"),
    }
}

fn decode_step(s: &str) -> Option<Step> {
    let (kind, rest) = s.split_at_checked(2)?;
    match kind {
        "f:" => Some(Step::Field(rest.to_string())),
        "k:" => Some(Step::Key(
            serde_json::from_str::<Value>(rest)
                .ok()
                .map(|v| canonical(&v))?,
        )),
        "v:" => Some(Step::Value(
            serde_json::from_str::<Value>(rest)
                .ok()
                .map(|v| canonical(&v))?,
        )),
        _ => None,
    }
}

/// FieldsV1 JSON of a set: a tree of steps, `{}` at leaves, `.` for items.
pub fn encode(fields: &FieldSet) -> Value {
    let mut root = Map::new();
    for path in fields {
        let mut node = &mut root;
        for step in path {
            node = node
                .entry(encode_step(step))
                .or_insert_with(|| json!({}))
                .as_object_mut()
                .expect("tree node");
        }
        if matches!(path.last(), Some(Step::Key(_))) {
            node.insert(".".into(), json!({}));
        }
    }
    Value::Object(root)
}

pub fn decode(tree: &Value) -> FieldSet {
    let mut out = FieldSet::new();
    fn walk(node: &Value, prefix: Path, out: &mut FieldSet) {
        let Some(m) = node.as_object() else { return };
        if (m.is_empty() || m.contains_key(".")) && !prefix.is_empty() {
            out.insert(prefix.clone());
        }
        for (k, v) in m {
            if k == "." {
                continue;
            }
            if let Some(step) = decode_step(k) {
                let mut p = prefix.clone();
                p.push(step);
                walk(v, p, out);
            }
        }
    }
    walk(tree, Vec::new(), &mut out);
    out
}

pub fn read_entries(object: &Value) -> Vec<Entry> {
    object["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| Entry {
            manager: e["manager"].as_str().unwrap_or_default().to_string(),
            operation: e["operation"].as_str().unwrap_or_default().to_string(),
            api_version: e["apiVersion"].as_str().unwrap_or_default().to_string(),
            fields: decode(&e["fieldsV1"]),
            time: e["time"].as_str().unwrap_or_default().to_string(),
        })
        .collect()
}

pub fn write_entries(object: &mut Value, entries: &[Entry]) {
    let list: Vec<Value> = entries
        .iter()
        .filter(|e| !e.fields.is_empty())
        .map(|e| {
            json!({
                "manager": e.manager, "operation": e.operation, "apiVersion": e.api_version,
                "time": e.time, "fieldsType": "FieldsV1", "fieldsV1": encode(&e.fields),
            })
        })
        .collect();
    if let Some(m) = object["metadata"].as_object_mut() {
        if list.is_empty() {
            m.remove("managedFields");
        } else {
            m.insert("managedFields".into(), Value::Array(list));
        }
    }
}

/// A path as the API prints it in conflicts: `.spec.containers[name="app"].image`.
pub fn display(path: &Path) -> String {
    let mut s = String::new();
    for step in path {
        match step {
            Step::Field(f) => {
                s.push('.');
                s.push_str(f);
            }
            Step::Key(k) => {
                let keys: Value = serde_json::from_str(k).unwrap_or(Value::Null);
                let parts: Vec<String> = keys
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect();
                s.push_str(&format!("[{}]", parts.join(",")));
            }
            Step::Value(v) => s.push_str(&format!("[={v}]")),
        }
    }
    s
}

/// A field another manager owns, that an apply would change.
#[derive(Clone, Debug, PartialEq)]
pub struct Conflict {
    pub manager: String,
    pub api_version: String,
    pub path: Path,
}

fn owned_elsewhere(entries: &[Entry], me: &str, path: &Path) -> bool {
    entries.iter().filter(|e| e.manager != me).any(|e| {
        e.fields
            .iter()
            .any(|p| p.len() >= path.len() && p[..path.len()] == path[..])
    })
}

/// Server-side apply of `applied` by `manager` over `live` (None: create).
/// Returns the new object, with `managedFields` updated, or the conflicts.
pub fn apply(
    live: Option<&Value>,
    applied: &Value,
    manager: &str,
    force: bool,
    api_version: &str,
    now: &str,
    root: Option<Node<'_>>,
) -> Result<Value, Vec<Conflict>> {
    let new_set = field_set(applied, root);
    let mut entries = live.map(read_entries).unwrap_or_default();
    let base = live.cloned().unwrap_or_else(|| json!({}));
    let mut conflicts = Vec::new();
    for e in entries.iter().filter(|e| e.manager != manager) {
        for p in e.fields.intersection(&new_set) {
            if differs(&base, applied, p, root) {
                conflicts.push(Conflict {
                    manager: e.manager.clone(),
                    api_version: e.api_version.clone(),
                    path: p.clone(),
                });
            }
        }
    }
    if !conflicts.is_empty() && !force {
        return Err(conflicts);
    }
    for c in &conflicts {
        for e in entries.iter_mut().filter(|e| e.manager == c.manager) {
            e.fields.remove(&c.path);
        }
    }
    let old_set = entries
        .iter()
        .find(|e| e.manager == manager && e.operation == "Apply")
        .map(|e| e.fields.clone())
        .unwrap_or_default();
    let mut result = base;
    merge_applied(&mut result, applied, root);
    // Longest paths first, so children go before their item.
    let mut stale: Vec<&Path> = old_set.difference(&new_set).collect();
    stale.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in stale {
        if !owned_elsewhere(&entries, manager, p) && !new_set.iter().any(|n| n.starts_with(p)) {
            remove_path(&mut result, p, root);
            // A map left empty by the removal goes too, unless someone owns it.
            for len in (1..p.len()).rev() {
                let parent = &p[..len];
                let empty = value_at(&result, parent, root)
                    .is_some_and(|v| v.as_object().is_some_and(|m| m.is_empty()));
                let owned = new_set.contains(parent)
                    || owned_elsewhere(&entries, manager, &parent.to_vec());
                if empty && !owned && matches!(parent.last(), Some(Step::Field(_))) {
                    remove_path(&mut result, parent, root);
                } else {
                    break;
                }
            }
        }
    }
    entries.retain(|e| !(e.manager == manager && e.operation == "Apply"));
    entries.push(Entry {
        manager: manager.to_string(),
        operation: "Apply".into(),
        api_version: api_version.to_string(),
        fields: new_set,
        time: now.to_string(),
    });
    write_entries(&mut result, &entries);
    Ok(result)
}

/// Records a non-apply write from `old` to `new` by `manager`: it owns what
/// it changed, from then on.
pub fn record_update(
    old: Option<&Value>,
    new: &mut Value,
    manager: &str,
    api_version: &str,
    now: &str,
    root: Option<Node<'_>>,
) {
    let mut entries = old.map(read_entries).unwrap_or_default();
    let before = old.map(|o| field_set(o, root)).unwrap_or_default();
    let after = field_set(new, root);
    let empty = json!({});
    let old_v = old.unwrap_or(&empty);
    let changed: FieldSet = after
        .iter()
        .filter(|p| !before.contains(*p) || differs(old_v, new, p, root))
        .cloned()
        .collect();
    let removed: FieldSet = before.difference(&after).cloned().collect();
    for e in entries.iter_mut() {
        e.fields.retain(|p| !removed.contains(p));
        if e.manager != manager {
            e.fields.retain(|p| !changed.contains(p));
        }
    }
    if !changed.is_empty() {
        match entries
            .iter_mut()
            .find(|e| e.manager == manager && e.operation == "Update")
        {
            Some(e) => {
                e.fields.extend(changed);
                e.time = now.to_string();
            }
            None => entries.push(Entry {
                manager: manager.to_string(),
                operation: "Update".into(),
                api_version: api_version.to_string(),
                fields: changed,
                time: now.to_string(),
            }),
        }
    }
    write_entries(new, &entries);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake_kube::schema::Schema;

    fn deployment_node() -> Option<Node<'static>> {
        Schema::get().kind("apps/v1", "Deployment")
    }

    fn deployment(image: &str, replicas: i64) -> Value {
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "app", "labels": {"team": "a"}},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": {"app": "app"}},
                "template": {"metadata": {"labels": {"app": "app"}},
                    "spec": {"containers": [{"name": "app", "image": image, "ports": [{"containerPort": 80}]}]}},
            },
        })
    }

    #[test]
    fn fields_follow_the_schema_and_round_trip_through_fields_v1() {
        let set = field_set(&deployment("a:1", 3), deployment_node());
        let shown: Vec<String> = set.iter().map(display).collect();
        assert!(shown.contains(&".spec.selector".to_string()), "{shown:?}");
        assert!(shown.contains(&".spec.template.spec.containers[name=\"app\"].image".to_string()));
        assert!(shown.contains(
            &".spec.template.spec.containers[name=\"app\"].ports[containerPort=80,protocol=\"TCP\"]"
                .to_string()
        ));
        assert_eq!(decode(&encode(&set)), set);
    }

    #[test]
    fn a_second_applier_conflicts_unless_forced_and_stale_fields_are_removed() {
        let node = deployment_node();
        let live = apply(
            None,
            &deployment("a:1", 3),
            "gitops",
            false,
            "apps/v1",
            "t",
            node,
        )
        .unwrap();
        // Another manager applying a different image conflicts.
        let mut other = deployment("a:2", 3);
        other["spec"].as_object_mut().unwrap().remove("replicas");
        let err = apply(Some(&live), &other, "sluice", false, "apps/v1", "t", node).unwrap_err();
        assert_eq!(err.len(), 1);
        assert_eq!(
            display(&err[0].path),
            ".spec.template.spec.containers[name=\"app\"].image"
        );
        // Applying the same value is shared ownership, not a conflict.
        let same = apply(
            Some(&live),
            &deployment("a:1", 3),
            "sluice",
            false,
            "apps/v1",
            "t",
            node,
        );
        assert!(same.is_ok());
        let forced = apply(Some(&live), &other, "sluice", true, "apps/v1", "t", node).unwrap();
        assert_eq!(
            forced["spec"]["template"]["spec"]["containers"][0]["image"],
            "a:2"
        );
        // gitops stops applying its labels: they go, as nobody else owns them.
        let mut fewer = deployment("a:1", 3);
        fewer["metadata"].as_object_mut().unwrap().remove("labels");
        let after = apply(Some(&live), &fewer, "gitops", false, "apps/v1", "t", node).unwrap();
        assert!(after["metadata"].get("labels").is_none(), "{after}");
    }

    #[test]
    fn updates_take_ownership_of_what_they_change() {
        let node = deployment_node();
        let live = apply(
            None,
            &deployment("a:1", 3),
            "gitops",
            false,
            "apps/v1",
            "t",
            node,
        )
        .unwrap();
        let mut scaled = live.clone();
        scaled["spec"]["replicas"] = json!(5);
        record_update(Some(&live), &mut scaled, "hpa", "apps/v1", "t", node);
        let entries = read_entries(&scaled);
        let hpa = entries.iter().find(|e| e.manager == "hpa").unwrap();
        assert_eq!(
            hpa.fields.iter().map(display).collect::<Vec<_>>(),
            [".spec.replicas"]
        );
        let gitops = entries.iter().find(|e| e.manager == "gitops").unwrap();
        assert!(!gitops.fields.iter().any(|p| display(p) == ".spec.replicas"));
        // gitops applying replicas 3 again now conflicts with the HPA.
        let err = apply(
            Some(&scaled),
            &deployment("a:1", 3),
            "gitops",
            false,
            "apps/v1",
            "t",
            node,
        )
        .unwrap_err();
        assert_eq!(err[0].manager, "hpa");
    }
}
