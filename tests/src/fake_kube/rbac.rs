//! The RBAC authorizer, as the API server runs it: the Roles, ClusterRoles
//! and their bindings in the store decide every request, for the identity
//! that made it (its bearer token, or an impersonated user).
//!
//! - `system:masters` may do anything (the test's admin);
//! - a rule allows a request when its verbs, API groups and resources
//!   (`resource/subresource` for subresources) contain the request's or
//!   `*`, and its `resourceNames` are empty or contain the request's name.
//!   A create has no name, so `resourceNames` never allows one; a list or
//!   watch has the name of a `metadata.name=` field selector;
//! - a RoleBinding grants its Role's (or ClusterRole's) rules in its own
//!   namespace; a ClusterRoleBinding grants a ClusterRole everywhere;
//!   a ServiceAccount subject without a namespace means the binding's;
//! - escalation prevention: creating or updating a Role grants nothing the
//!   creator does not hold (unless it may `escalate`), and a binding may
//!   only bind a role whose permissions the creator holds (or may `bind`).

use serde_json::Value;

/// Who makes a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub groups: Vec<String>,
}

impl User {
    pub fn service_account(namespace: &str, name: &str) -> Self {
        Self {
            name: format!("system:serviceaccount:{namespace}:{name}"),
            groups: vec![
                "system:serviceaccounts".into(),
                format!("system:serviceaccounts:{namespace}"),
                "system:authenticated".into(),
            ],
        }
    }

    pub fn admin() -> Self {
        Self {
            name: "kubernetes-admin".into(),
            groups: vec!["system:masters".into(), "system:authenticated".into()],
        }
    }

    pub fn is_admin(&self) -> bool {
        self.groups.iter().any(|g| g == "system:masters")
    }
}

/// What a request does, as the authorizer sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attributes {
    pub verb: String,
    pub group: String,
    pub resource: String,
    pub subresource: Option<String>,
    pub namespace: Option<String>,
    pub name: Option<String>,
}

impl Attributes {
    /// `User "u" cannot get resource "deployments" in API group "apps" in the namespace "ns"`.
    pub fn denial(&self, user: &User) -> String {
        let resource = match &self.subresource {
            Some(s) => format!("{}/{s}", self.resource),
            None => self.resource.clone(),
        };
        let scope = match &self.namespace {
            Some(ns) => format!(" in the namespace \"{ns}\""),
            None => " at the cluster scope".into(),
        };
        format!(
            "User \"{}\" cannot {} resource \"{resource}\" in API group \"{}\"{scope}",
            user.name, self.verb, self.group
        )
    }
}

/// The RBAC objects of the store.
pub struct Policy<'a> {
    pub cluster_roles: Vec<&'a Value>,
    pub cluster_role_bindings: Vec<&'a Value>,
    pub roles: Vec<&'a Value>,
    pub role_bindings: Vec<&'a Value>,
}

fn strings(v: &Value) -> Vec<&str> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect()
}

fn subject_is(subject: &Value, user: &User, binding_ns: Option<&str>) -> bool {
    let name = subject["name"].as_str().unwrap_or_default();
    match subject["kind"].as_str() {
        Some("User") => user.name == name,
        Some("Group") => user.groups.iter().any(|g| g == name),
        Some("ServiceAccount") => {
            let ns = subject["namespace"]
                .as_str()
                .filter(|s| !s.is_empty())
                .or(binding_ns)
                .unwrap_or_default();
            user.name == format!("system:serviceaccount:{ns}:{name}")
        }
        _ => false,
    }
}

/// Whether `rule` allows `attrs`. A requested `*` is matched only by a `*`.
pub fn rule_allows(rule: &Value, attrs: &Attributes) -> bool {
    let contains = |list: Vec<&str>, want: &str| list.iter().any(|x| *x == "*" || *x == want);
    let resource = match &attrs.subresource {
        Some(s) => format!("{}/{s}", attrs.resource),
        None => attrs.resource.clone(),
    };
    let resources = strings(&rule["resources"]);
    let resource_ok = resources.iter().any(|r| {
        *r == "*"
            || *r == resource
            || (attrs.subresource.is_some() && r.strip_prefix("*/") == attrs.subresource.as_deref())
    });
    let names = strings(&rule["resourceNames"]);
    let name_ok = names.is_empty() || attrs.name.as_deref().is_some_and(|n| names.contains(&n));
    contains(strings(&rule["verbs"]), &attrs.verb)
        && contains(strings(&rule["apiGroups"]), &attrs.group)
        && resource_ok
        && name_ok
}

impl Policy<'_> {
    fn cluster_role(&self, name: &str) -> Option<&Value> {
        self.cluster_roles
            .iter()
            .copied()
            .find(|r| r["metadata"]["name"] == name)
    }

    /// Every rule granted to `user` where `namespace` applies.
    pub fn rules_for(&self, user: &User, namespace: Option<&str>) -> Vec<Value> {
        let mut rules = Vec::new();
        for b in &self.cluster_role_bindings {
            if strings_subjects(b).any(|s| subject_is(s, user, None))
                && let Some(r) =
                    self.cluster_role(b["roleRef"]["name"].as_str().unwrap_or_default())
            {
                rules.extend(r["rules"].as_array().cloned().unwrap_or_default());
            }
        }
        let Some(ns) = namespace else { return rules };
        for b in self
            .role_bindings
            .iter()
            .filter(|b| b["metadata"]["namespace"] == ns)
        {
            if !strings_subjects(b).any(|s| subject_is(s, user, Some(ns))) {
                continue;
            }
            let name = b["roleRef"]["name"].as_str().unwrap_or_default();
            let role =
                match b["roleRef"]["kind"].as_str() {
                    Some("ClusterRole") => self.cluster_role(name),
                    _ => self.roles.iter().copied().find(|r| {
                        r["metadata"]["namespace"] == ns && r["metadata"]["name"] == name
                    }),
                };
            if let Some(r) = role {
                rules.extend(r["rules"].as_array().cloned().unwrap_or_default());
            }
        }
        rules
    }

    pub fn allows(&self, user: &User, attrs: &Attributes) -> bool {
        user.is_admin()
            || self
                .rules_for(user, attrs.namespace.as_deref())
                .iter()
                .any(|r| rule_allows(r, attrs))
    }

    /// Whether `user` holds every permission of `rules` in `namespace`.
    pub fn covers(
        &self,
        user: &User,
        namespace: Option<&str>,
        rules: &[Value],
    ) -> Result<(), String> {
        if user.is_admin() {
            return Ok(());
        }
        let held = self.rules_for(user, namespace);
        for rule in rules {
            let names = strings(&rule["resourceNames"]);
            let names: Vec<Option<&str>> = if names.is_empty() {
                vec![None]
            } else {
                names.into_iter().map(Some).collect()
            };
            for verb in strings(&rule["verbs"]) {
                for group in strings(&rule["apiGroups"]) {
                    for resource in strings(&rule["resources"]) {
                        let (resource, subresource) = match resource.split_once('/') {
                            Some((r, s)) => (r, Some(s.to_string())),
                            None => (resource, None),
                        };
                        for name in &names {
                            let attrs = Attributes {
                                verb: verb.to_string(),
                                group: group.to_string(),
                                resource: resource.to_string(),
                                subresource: subresource.clone(),
                                namespace: namespace.map(str::to_string),
                                name: name.map(str::to_string),
                            };
                            if !held.iter().any(|h| rule_allows(h, &attrs)) {
                                return Err(format!(
                                    "{{APIGroups:[\"{group}\"], Resources:[\"{}\"], Verbs:[\"{verb}\"]{}}}",
                                    match &subresource {
                                        Some(s) => format!("{resource}/{s}"),
                                        None => resource.to_string(),
                                    },
                                    name.map(|n| format!(", ResourceNames:[\"{n}\"]"))
                                        .unwrap_or_default()
                                ));
                            }
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

fn strings_subjects(binding: &Value) -> impl Iterator<Item = &Value> {
    binding["subjects"].as_array().into_iter().flatten()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn bindings_grant_rules_and_resource_names_need_a_name() {
        let role = json!({"metadata": {"name": "read-cm", "namespace": "shop"},
            "rules": [{"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["app-sluice"], "verbs": ["get", "list", "watch"]}]});
        let binding = json!({"metadata": {"name": "read-cm", "namespace": "shop"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "read-cm"},
            "subjects": [{"kind": "ServiceAccount", "name": "app-sluice"}]});
        let policy = Policy {
            cluster_roles: vec![],
            cluster_role_bindings: vec![],
            roles: vec![&role],
            role_bindings: vec![&binding],
        };
        let proxy = User::service_account("shop", "app-sluice");
        let attrs = |verb: &str, name: Option<&str>, ns: &str| Attributes {
            verb: verb.into(),
            group: "".into(),
            resource: "configmaps".into(),
            subresource: None,
            namespace: Some(ns.into()),
            name: name.map(str::to_string),
        };
        assert!(policy.allows(&proxy, &attrs("watch", Some("app-sluice"), "shop")));
        assert!(
            !policy.allows(&proxy, &attrs("watch", None, "shop")),
            "a watch of every ConfigMap"
        );
        assert!(!policy.allows(&proxy, &attrs("get", Some("other"), "shop")));
        assert!(!policy.allows(&proxy, &attrs("get", Some("app-sluice"), "other-ns")));
        assert!(!policy.allows(&proxy, &attrs("update", Some("app-sluice"), "shop")));
        let escalating = [json!({"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]})];
        assert!(policy.covers(&proxy, Some("shop"), &escalating).is_err());
    }
}
