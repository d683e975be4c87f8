//! The Kubernetes 1.35 API schema, as published: the OpenAPI definitions
//! that `kubernetes-validate` ships (its `v1.35.0-local-strict/_definitions.json`,
//! converted from the upstream `swagger.json` with every `x-kubernetes-*`
//! extension kept). The fake reads from it, at run time, what the real API
//! server reads from its own types:
//!
//! - `x-kubernetes-list-type` (`atomic`, `set`, `map`) and
//!   `x-kubernetes-list-map-keys`, `x-kubernetes-map-type` (`atomic`,
//!   `granular`): how server-side apply merges and owns fields;
//! - `x-kubernetes-patch-strategy` (`merge`, `replace`, `retainKeys`) and
//!   `x-kubernetes-patch-merge-key`: how a strategic merge patch merges lists;
//! - the properties of every object, for strict field validation and types.
//!
//! Nothing is copied into the repository: the file is found in the Python
//! environment `tests/run` installs (`target/py-venv`), or where
//! `SLUICE_K8S_SCHEMA` points.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::OnceLock;

use serde_json::Value;

/// The definitions, loaded once per process.
pub struct Schema {
    defs: BTreeMap<String, Value>,
    /// (group, version, kind) -> definition name.
    by_gvk: BTreeMap<(String, String, String), String>,
    /// Where `$ref`s not defined here are resolved: a CustomResourceDefinition's
    /// schema refers to the built-in `ObjectMeta`.
    fallback: Option<&'static Schema>,
}

/// A node of the schema: a resolved definition or inline schema.
#[derive(Clone, Copy)]
pub struct Node<'a> {
    schema: &'a Schema,
    value: &'a Value,
}

/// How a list merges.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListType {
    Atomic,
    Set,
    Map(Vec<String>),
}

/// Where the schema's `_definitions.json` is: `SLUICE_K8S_SCHEMA`, or the
/// one kubernetes-validate installed in `target/py-venv`.
pub fn find_definitions() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("SLUICE_K8S_SCHEMA") {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(format!("SLUICE_K8S_SCHEMA={} is not a file", p.display()))
        };
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf();
    let lib = root.join("target/py-venv/lib");
    let entries = std::fs::read_dir(&lib).map_err(|e| format!("{}: {e}", lib.display()))?;
    for entry in entries.flatten() {
        let candidate = entry.path().join(
            "site-packages/kubernetes_validate/kubernetes-json-schema/v1.35.0-local-strict/_definitions.json",
        );
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    Err(format!(
        "no kubernetes_validate 1.35 schema under {}",
        lib.display()
    ))
}

impl Schema {
    /// The published 1.35 schema. Panics with what to install when missing.
    pub fn get() -> &'static Schema {
        static SCHEMA: OnceLock<Schema> = OnceLock::new();
        SCHEMA.get_or_init(|| {
            let path = find_definitions().unwrap_or_else(|e| {
                panic!(
                    "the Kubernetes 1.35 API schema is missing ({e}): install kubernetes-validate into target/py-venv (tests/run does: python3 -m venv target/py-venv && target/py-venv/bin/pip install kubernetes-validate), or set SLUICE_K8S_SCHEMA"
                )
            });
            let text = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
            let doc: Value = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()));
            let defs: BTreeMap<String, Value> = doc["$defs"]
                .as_object()
                .expect("$defs")
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            let mut by_gvk = BTreeMap::new();
            for (name, def) in &defs {
                for gvk in def["x-kubernetes-group-version-kind"]
                    .as_array()
                    .into_iter()
                    .flatten()
                {
                    let key = (
                        gvk["group"].as_str().unwrap_or("").to_string(),
                        gvk["version"].as_str().unwrap_or("").to_string(),
                        gvk["kind"].as_str().unwrap_or("").to_string(),
                    );
                    // Prefer the definition in the kind's own API package.
                    by_gvk.entry(key).or_insert_with(|| name.clone());
                }
            }
            Schema {
                defs,
                by_gvk,
                fallback: None,
            }
        })
    }

    /// The root node of a kind (`apiVersion` like `apps/v1` or `v1`).
    pub fn kind(&self, api_version: &str, kind: &str) -> Option<Node<'_>> {
        let (group, version) = match api_version.split_once('/') {
            Some((g, v)) => (g, v),
            None => ("", api_version),
        };
        let name = self
            .by_gvk
            .get(&(group.to_string(), version.to_string(), kind.to_string()))?;
        Some(Node {
            schema: self,
            value: self.defs.get(name)?,
        })
    }

    /// A schema of one definition, `root` (a CustomResourceDefinition's
    /// `openAPIV3Schema`), whose `$ref`s resolve in the built-in schema.
    pub fn of_root(root: Value) -> Schema {
        Schema {
            defs: BTreeMap::from([("root".to_string(), root)]),
            by_gvk: BTreeMap::new(),
            fallback: Some(Schema::get()),
        }
    }

    /// The root node of a schema made by [`Schema::of_root`].
    pub fn root(&self) -> Option<Node<'_>> {
        Some(Node {
            schema: self,
            value: self.defs.get("root")?,
        })
    }

    /// Every definition, by its full name (`io.k8s.api.apps.v1.Deployment`).
    pub fn definitions(&self) -> &BTreeMap<String, Value> {
        &self.defs
    }

    /// The definition name of a kind (`apiVersion` like `apps/v1` or `v1`).
    pub fn definition_name(&self, api_version: &str, kind: &str) -> Option<&str> {
        let (group, version) = match api_version.split_once('/') {
            Some((g, v)) => (g, v),
            None => ("", api_version),
        };
        self.by_gvk
            .get(&(group.to_string(), version.to_string(), kind.to_string()))
            .map(String::as_str)
    }

    fn resolve<'a>(&'a self, mut value: &'a Value) -> &'a Value {
        for _ in 0..8 {
            match value.get("$ref").and_then(Value::as_str) {
                Some(r) => {
                    let name = r.rsplit('/').next().unwrap_or(r);
                    match self
                        .defs
                        .get(name)
                        .or_else(|| self.fallback.and_then(|f| f.defs.get(name)))
                    {
                        Some(v) => value = v,
                        None => return value,
                    }
                }
                None => return value,
            }
        }
        value
    }
}

impl<'a> Node<'a> {
    fn wrap(&self, value: &'a Value) -> Node<'a> {
        // Extensions sit next to a `$ref` on the property; the type is behind it.
        Node {
            schema: self.schema,
            value,
        }
    }

    fn target(&self) -> &'a Value {
        self.schema.resolve(self.value)
    }

    /// The node of a field of this object.
    pub fn field(&self, name: &str) -> Option<Node<'a>> {
        let t = self.target();
        if let Some(p) = t.get("properties").and_then(|p| p.get(name)) {
            return Some(self.wrap(p));
        }
        match t.get("additionalProperties") {
            Some(v) if v.is_object() => Some(self.wrap(v)),
            _ => None,
        }
    }

    /// The node of this list's items, or of this map's values.
    pub fn items(&self) -> Option<Node<'a>> {
        let t = self.target();
        t.get("items")
            .or_else(|| t.get("additionalProperties").filter(|v| v.is_object()))
            .map(|v| self.wrap(v))
    }

    fn types(&self) -> Vec<&'a str> {
        let t = self.target();
        match t.get("type") {
            Some(Value::String(s)) => vec![s.as_str()],
            Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
            _ => match t.get("oneOf").and_then(Value::as_array) {
                Some(options) => options
                    .iter()
                    .flat_map(|o| match o.get("type") {
                        Some(Value::String(s)) => vec![s.as_str()],
                        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
                        _ => Vec::new(),
                    })
                    .collect(),
                None => Vec::new(),
            },
        }
    }

    pub fn is_list(&self) -> bool {
        self.types().contains(&"array")
    }

    /// Whether this object has named properties (a struct), as opposed to a
    /// map of arbitrary keys.
    pub fn is_struct(&self) -> bool {
        self.target().get("properties").is_some()
    }

    /// The JSON types this node accepts (empty: anything).
    pub fn accepted_types(&self) -> Vec<&'a str> {
        self.types()
    }

    /// Whether unknown fields are allowed under this node.
    pub fn allows_unknown_fields(&self) -> bool {
        let t = self.target();
        t.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true))
            || matches!(t.get("additionalProperties"), Some(v) if v.is_object() || v == &Value::Bool(true))
            || (t.get("properties").is_none() && t.get("additionalProperties").is_none())
    }

    fn extension(&self, key: &str) -> Option<&'a Value> {
        self.value.get(key).or_else(|| self.target().get(key))
    }

    pub fn list_type(&self) -> ListType {
        match self
            .extension("x-kubernetes-list-type")
            .and_then(Value::as_str)
        {
            Some("set") => ListType::Set,
            Some("map") => ListType::Map(
                self.extension("x-kubernetes-list-map-keys")
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .filter_map(Value::as_str)
                            .map(str::to_string)
                            .collect()
                    })
                    .unwrap_or_default(),
            ),
            _ => ListType::Atomic,
        }
    }

    /// Whether a map (or struct) is owned and replaced as a whole by apply.
    pub fn map_is_atomic(&self) -> bool {
        self.extension("x-kubernetes-map-type")
            .and_then(Value::as_str)
            == Some("atomic")
    }

    /// The strategic-merge strategy of a field (`merge`, `replace`, `retainKeys`).
    pub fn patch_strategies(&self) -> Vec<&'a str> {
        self.extension("x-kubernetes-patch-strategy")
            .and_then(Value::as_str)
            .map(|s| s.split(',').collect())
            .unwrap_or_default()
    }

    pub fn patch_merge_key(&self) -> Option<&'a str> {
        self.extension("x-kubernetes-patch-merge-key")
            .and_then(Value::as_str)
    }

    /// The fields this struct requires.
    pub fn required(&self) -> Vec<&'a str> {
        self.target()
            .get("required")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_published_extensions_are_read() {
        let s = Schema::get();
        let d = s.kind("apps/v1", "Deployment").expect("Deployment");
        let pod = d
            .field("spec")
            .and_then(|n| n.field("template"))
            .and_then(|n| n.field("spec"))
            .expect("pod spec");
        let containers = pod.field("containers").unwrap();
        assert_eq!(containers.list_type(), ListType::Map(vec!["name".into()]));
        assert_eq!(containers.patch_merge_key(), Some("name"));
        let ports = containers.items().unwrap().field("ports").unwrap();
        assert_eq!(
            ports.list_type(),
            ListType::Map(vec!["containerPort".into(), "protocol".into()])
        );
        assert_eq!(
            pod.field("volumes").unwrap().patch_strategies(),
            ["merge", "retainKeys"]
        );
        let svc = s.kind("v1", "Service").unwrap();
        assert!(
            svc.field("spec")
                .unwrap()
                .field("selector")
                .unwrap()
                .map_is_atomic()
        );
        let meta = d.field("metadata").unwrap();
        assert_eq!(meta.field("finalizers").unwrap().list_type(), ListType::Set);
        assert_eq!(
            meta.field("ownerReferences").unwrap().list_type(),
            ListType::Map(vec!["uid".into()])
        );
        assert!(!d.field("spec").unwrap().allows_unknown_fields());
        assert!(meta.field("labels").unwrap().allows_unknown_fields());
    }
}
