//! `ValidatingAdmissionPolicy` and `ValidatingAdmissionPolicyBinding`
//! (admissionregistration.k8s.io/v1), evaluated as a 1.30+ API server
//! does, with a real CEL interpreter (`cel-interpreter`).
//!
//! What is modelled, and how:
//!
//! - **Creating a policy** compiles every expression (`matchConditions`,
//!   `variables`, `validations` `expression` and `messageExpression`); one
//!   that does not compile is a 422 `Invalid` naming the field, as the real
//!   server refuses it. (The real server also type-checks; this fake does
//!   not, so a policy should be checked on a real cluster too.)
//! - **Matching**: a binding (`spec.policyName`) applies its policy to a
//!   write when the policy's `matchConstraints` and the binding's
//!   `matchResources` both match: `resourceRules` (`apiGroups`,
//!   `apiVersions`, `resources` with `*` and `x/sub`, `operations`, `scope`),
//!   `excludeResourceRules`, `namespaceSelector` (the namespace's labels) and
//!   `objectSelector` (the new object's labels, or the old one's). Then every
//!   `matchCondition` must be true; one that errs follows `failurePolicy`.
//!   A binding with `paramRef` is refused as a configuration error (params
//!   are not modelled), following `failurePolicy`.
//! - **Evaluation**: `object`, `oldObject` (null on CREATE), `request`
//!   (operation, name, namespace, userInfo, kind, resource, subResource,
//!   dryRun), `namespaceObject`, `params` (null) and `variables` (each
//!   evaluated in order, later ones may use earlier ones). A variable that
//!   errs errs an expression only when its evaluation reaches the read, as
//!   the real server's lazy variables do: `!a || variables.v` with `a`
//!   false never reads `v` (`||`, `&&` and `?:` short-circuit left to
//!   right; unlike cel-go, an erring left operand of `||` errs even when
//!   the right one is true).
//! - **Decisions**: a validation that is not `true` denies with the first
//!   of: its `messageExpression` (trimmed; dropped when it errs, is not a
//!   string, is empty, holds a newline or is over 5 KiB), its `message`,
//!   or `failed expression: EXPR`, and its `reason` (default `Invalid`).
//!   An expression that errs is, under `failurePolicy: Fail` (the default),
//!   a denial with `expression 'EXPR' resulted in error: ...`; under
//!   `Ignore` it admits.
//! - **Answers**, per binding's `validationActions`: `Deny` refuses the
//!   write with the first denial, worded as the API server words it
//!   (`deployments.apps "web" is forbidden: ValidatingAdmissionPolicy 'P'
//!   with binding 'B' denied request: MESSAGE`, reason from the validation,
//!   code from the reason: 403 Forbidden, 401 Unauthorized, 413
//!   RequestEntityTooLarge, else 422); `Warn` adds a `Warning` header
//!   (`Validation failed for ValidatingAdmissionPolicy 'P' with binding 'B':
//!   MESSAGE`); `Audit` is accepted and changes nothing (no audit log here).
//!
//! CEL functions beyond the interpreter's standard set, with Kubernetes'
//! semantics (strings counted in code points, regexes in RE2 syntax with
//! ASCII `\s`, `\d`, `\w`): the strings library (`trim`, `substring`,
//! `indexOf`, `lastIndexOf`, `split`, `join`, `lowerAscii`, `upperAscii`,
//! `replace`), `size` in code points, the regex library (`find`,
//! `findAll`), and the lists library (`sum`, `isSorted`, `min`, `max`,
//! `indexOf`). Map lookups of a missing key must be guarded (`in`, `has`)
//! as on a real server, where they err; this interpreter answers null.

use std::collections::BTreeMap;
use std::sync::Arc;

use cel_interpreter::extractors::{Arguments, This};
use cel_interpreter::{Context, ExecutionError, FunctionContext, Program, Value as Cel};
use http::StatusCode;
use serde_json::{Value, json};

use super::{FakeBody, KindInfo, Store, User, respond, status_body};

pub const POLICIES: (&str, &str) = (
    "apis/admissionregistration.k8s.io/v1",
    "validatingadmissionpolicies",
);
pub const BINDINGS: (&str, &str) = (
    "apis/admissionregistration.k8s.io/v1",
    "validatingadmissionpolicybindings",
);

/// The most a `messageExpression` may produce before it is ignored.
const MAX_MESSAGE_BYTES: usize = 5 * 1024;

/// One write, as admission sees it.
#[derive(Clone, Debug)]
pub struct Attributes<'a> {
    pub operation: &'a str,
    pub group: &'a str,
    pub version: &'a str,
    pub kind: &'a str,
    pub resource: &'a str,
    pub subresource: &'a str,
    pub namespace: &'a str,
    pub name: &'a str,
    pub object: &'a Value,
    pub old_object: Option<&'a Value>,
    pub namespace_object: Option<&'a Value>,
    pub user: Option<&'a User>,
    pub dry_run: bool,
}

impl<'a> Attributes<'a> {
    /// The creation of Deployment `name` (`object`) in `default` by
    /// nobody in particular: what in-process policy checks evaluate.
    pub fn deployment_created(name: &'a str, object: &'a Value) -> Self {
        Self {
            operation: "CREATE",
            group: "apps",
            version: "v1",
            kind: "Deployment",
            resource: "deployments",
            subresource: "",
            namespace: "default",
            name,
            object,
            old_object: None,
            namespace_object: None,
            user: None,
            dry_run: false,
        }
    }
}

/// One validation that did not pass.
#[derive(Clone, Debug, PartialEq)]
pub struct Denial {
    pub message: String,
    pub reason: String,
    /// The expression erred (rather than being false).
    pub error: bool,
}

/// The outcome of one policy for one write: the denials in validation
/// order (empty: admitted). `None` when the policy does not apply.
pub fn evaluate(policy: &Value, attrs: &Attributes<'_>) -> Option<Vec<Denial>> {
    let spec = &policy["spec"];
    if !matches_resources(&spec["matchConstraints"], attrs, true) {
        return None;
    }
    let fail = spec["failurePolicy"].as_str() != Some("Ignore");
    let on_error = |message: String| -> Vec<Denial> {
        if fail {
            vec![Denial {
                message,
                reason: "Invalid".into(),
                error: true,
            }]
        } else {
            Vec::new()
        }
    };
    let base = base_context(attrs);
    for c in spec["matchConditions"].as_array().into_iter().flatten() {
        let expr = c["expression"].as_str().unwrap_or_default();
        match run(expr, &base) {
            Ok(Cel::Bool(true)) => {}
            Ok(Cel::Bool(false)) => return None,
            Ok(other) => {
                return Some(on_error(format!(
                    "matchCondition '{}' resulted in a {} rather than a bool",
                    c["name"].as_str().unwrap_or_default(),
                    type_name(&other)
                )));
            }
            Err(e) => {
                return Some(on_error(format!(
                    "expression '{expr}' resulted in error: {e}"
                )));
            }
        }
    }
    // Variables, in order; an erring one is remembered by name.
    let mut variables: BTreeMap<String, Cel> = BTreeMap::new();
    let mut broken: BTreeMap<String, String> = BTreeMap::new();
    for v in spec["variables"].as_array().into_iter().flatten() {
        let name = v["name"].as_str().unwrap_or_default().to_string();
        let expr = v["expression"].as_str().unwrap_or_default();
        let mut ctx = base.new_inner_scope();
        ctx.add_variable_from_value("variables", variables_value(&variables));
        match run_lazily(expr, &ctx, &broken) {
            Ok(value) => {
                variables.insert(name, value);
            }
            Err(e) => {
                broken.insert(name, e);
            }
        }
    }
    let mut ctx = base.new_inner_scope();
    ctx.add_variable_from_value("variables", variables_value(&variables));
    let mut denials = Vec::new();
    for v in spec["validations"].as_array().into_iter().flatten() {
        let expr = v["expression"].as_str().unwrap_or_default();
        let outcome = run_lazily(expr, &ctx, &broken);
        match outcome {
            Ok(Cel::Bool(true)) => {}
            Ok(_) => {
                let from_expression = v["messageExpression"]
                    .as_str()
                    .and_then(|m| run_lazily(m, &ctx, &broken).ok())
                    .and_then(|m| match m {
                        Cel::String(s) => Some(s.trim().to_string()),
                        _ => None,
                    })
                    .filter(|m| !m.is_empty() && m.len() <= MAX_MESSAGE_BYTES && !m.contains('\n'));
                let message = from_expression
                    .or_else(|| {
                        v["message"]
                            .as_str()
                            .map(|m| m.trim().to_string())
                            .filter(|m| !m.is_empty())
                    })
                    .unwrap_or_else(|| format!("failed expression: {}", expr.trim()));
                denials.push(Denial {
                    message,
                    reason: v["reason"].as_str().unwrap_or("Invalid").to_string(),
                    error: false,
                });
            }
            Err(e) => denials.extend(on_error(e)),
        }
    }
    Some(denials)
}

/// Every expression of a policy that does not compile, as (field, error).
pub fn compile_problems(policy: &Value) -> Vec<(String, String)> {
    let spec = &policy["spec"];
    let mut problems = Vec::new();
    let mut check = |field: String, expr: Option<&str>| {
        if let Some(expr) = expr
            && let Err(e) = Program::compile(expr)
        {
            problems.push((field, format!("compilation failed: {e}")));
        }
    };
    for (list, fields) in [
        ("matchConditions", &["expression"][..]),
        ("variables", &["expression"][..]),
        ("validations", &["expression", "messageExpression"][..]),
    ] {
        for (i, item) in spec[list].as_array().into_iter().flatten().enumerate() {
            for f in fields {
                check(format!("spec.{list}[{i}].{f}"), item[*f].as_str());
            }
        }
    }
    problems
}

/// Admission of one write against every bound policy in the store:
/// `Err` is the API server's answer refusing it, `Ok` the warnings to add.
pub(super) fn admit(
    store: &Store,
    info: &KindInfo,
    attrs: &Attributes<'_>,
) -> Result<Vec<String>, Box<super::Response<FakeBody>>> {
    // A policy being created or changed: every expression must compile.
    if info.kind == "ValidatingAdmissionPolicy" {
        let problems = compile_problems(attrs.object);
        if !problems.is_empty() {
            let causes: Vec<Value> = problems
                .iter()
                .map(|(field, message)| json!({"reason": "FieldValueInvalid", "message": message, "field": field}))
                .collect();
            let parts: Vec<String> = problems
                .iter()
                .map(|(field, message)| format!("{field}: Invalid value: {message}"))
                .collect();
            let message = format!(
                "ValidatingAdmissionPolicy.admissionregistration.k8s.io \"{}\" is invalid: [{}]",
                attrs.name,
                parts.join(", ")
            );
            return Err(Box::new(respond(
                StatusCode::UNPROCESSABLE_ENTITY,
                &status_body(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "Invalid",
                    message,
                    json!({"name": attrs.name, "group": "admissionregistration.k8s.io", "kind": "ValidatingAdmissionPolicy", "causes": causes}),
                ),
            )));
        }
    }
    let of = |(prefix, plural): (&str, &str)| -> Vec<&Value> {
        store
            .objects
            .iter()
            .filter(|((k, _, _), _)| k.0 == prefix && k.1 == plural)
            .map(|(_, v)| v)
            .collect()
    };
    let policies = of(POLICIES);
    let mut warnings = Vec::new();
    for binding in of(BINDINGS) {
        let spec = &binding["spec"];
        let Some(policy) = policies
            .iter()
            .find(|p| p["metadata"]["name"] == spec["policyName"])
        else {
            continue;
        };
        if !spec["matchResources"].is_null()
            && !matches_resources(&spec["matchResources"], attrs, false)
        {
            continue;
        }
        let policy_name = policy["metadata"]["name"].as_str().unwrap_or_default();
        let binding_name = binding["metadata"]["name"].as_str().unwrap_or_default();
        let denials = if spec.get("paramRef").is_some_and(|p| !p.is_null()) {
            if policy["spec"]["failurePolicy"].as_str() == Some("Ignore") {
                continue;
            }
            if !matches_resources(&policy["spec"]["matchConstraints"], attrs, true) {
                continue;
            }
            vec![Denial {
                message: "params (paramRef) are not modelled by this fake API server".into(),
                reason: "Invalid".into(),
                error: true,
            }]
        } else {
            match evaluate(policy, attrs) {
                Some(d) => d,
                None => continue,
            }
        };
        let Some(first) = denials.first() else {
            continue;
        };
        let actions: Vec<&str> = spec["validationActions"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        if actions.contains(&"Warn") {
            for d in &denials {
                warnings.push(format!(
                    "Validation failed for ValidatingAdmissionPolicy '{policy_name}' with binding '{binding_name}': {}",
                    d.message
                ));
            }
        }
        if actions.contains(&"Deny") {
            let message = format!(
                "ValidatingAdmissionPolicy '{policy_name}' with binding '{binding_name}' denied request: {}",
                first.message
            );
            let code = match first.reason.as_str() {
                "Forbidden" => StatusCode::FORBIDDEN,
                "Unauthorized" => StatusCode::UNAUTHORIZED,
                "RequestEntityTooLarge" => StatusCode::PAYLOAD_TOO_LARGE,
                _ => StatusCode::UNPROCESSABLE_ENTITY,
            };
            let resource = if info.group.is_empty() {
                info.plural.to_string()
            } else {
                format!("{}.{}", info.plural, info.group)
            };
            return Err(Box::new(respond(
                code,
                &status_body(
                    code,
                    &first.reason,
                    format!("{resource} \"{}\" is forbidden: {message}", attrs.name),
                    json!({"name": attrs.name, "group": info.group, "kind": info.plural, "causes": [{"message": message}]}),
                ),
            )));
        }
    }
    Ok(warnings)
}

// === matching ===

/// Whether `rules` (a policy's `matchConstraints` or a binding's
/// `matchResources`) select the write. A policy's must name resources; a
/// binding's may leave them out (then the policy's decide).
fn matches_resources(rules: &Value, attrs: &Attributes<'_>, need_rules: bool) -> bool {
    if !rules.is_object() {
        return !need_rules;
    }
    let listed = |v: &Value, want: &str| -> bool {
        v.as_array()
            .is_some_and(|a| a.iter().any(|x| x == "*" || x == want))
    };
    let resource_matches = |rule: &Value| -> bool {
        let op_ok = rule["operations"]
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x == "*" || x == attrs.operation));
        let full = if attrs.subresource.is_empty() {
            attrs.resource.to_string()
        } else {
            format!("{}/{}", attrs.resource, attrs.subresource)
        };
        let res_ok = rule["resources"].as_array().is_some_and(|a| {
            a.iter().filter_map(Value::as_str).any(|r| {
                r == "*" && attrs.subresource.is_empty()
                    || r == full
                    || r == "*/*"
                    || (attrs.subresource.is_empty() && r == attrs.resource)
                    || r.strip_prefix("*/") == Some(attrs.subresource)
                        && !attrs.subresource.is_empty()
                    || r.strip_suffix("/*") == Some(attrs.resource) && !attrs.subresource.is_empty()
            })
        });
        let scope_ok = match rule["scope"].as_str().unwrap_or("*") {
            "Cluster" => attrs.namespace.is_empty(),
            "Namespaced" => !attrs.namespace.is_empty(),
            _ => true,
        };
        op_ok
            && res_ok
            && scope_ok
            && listed(&rule["apiGroups"], attrs.group)
            && listed(&rule["apiVersions"], attrs.version)
    };
    let included = match rules["resourceRules"].as_array() {
        Some(list) => list.iter().any(resource_matches),
        None => !need_rules,
    };
    if !included {
        return false;
    }
    if rules["excludeResourceRules"]
        .as_array()
        .is_some_and(|list| list.iter().any(resource_matches))
    {
        return false;
    }
    let labels_of = |o: Option<&Value>| -> BTreeMap<String, String> {
        o.and_then(|o| o["metadata"]["labels"].as_object())
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                    .collect()
            })
            .unwrap_or_default()
    };
    if !rules["namespaceSelector"].is_null() && !attrs.namespace.is_empty() {
        let labels = labels_of(attrs.namespace_object);
        if !selects(&rules["namespaceSelector"], &labels) {
            return false;
        }
    }
    if !rules["objectSelector"].is_null() {
        let new = selects(&rules["objectSelector"], &labels_of(Some(attrs.object)));
        let old = attrs
            .old_object
            .is_some_and(|o| selects(&rules["objectSelector"], &labels_of(Some(o))));
        if !new && !old {
            return false;
        }
    }
    true
}

/// A `LabelSelector` (an empty one selects everything).
fn selects(selector: &Value, labels: &BTreeMap<String, String>) -> bool {
    let by_label = selector["matchLabels"]
        .as_object()
        .into_iter()
        .flatten()
        .all(|(k, v)| labels.get(k).map(String::as_str) == v.as_str());
    let by_expression = selector["matchExpressions"]
        .as_array()
        .into_iter()
        .flatten()
        .all(|e| {
            let key = e["key"].as_str().unwrap_or_default();
            let values: Vec<&str> = e["values"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            let value = labels.get(key).map(String::as_str);
            match e["operator"].as_str().unwrap_or_default() {
                "In" => value.is_some_and(|v| values.contains(&v)),
                "NotIn" => value.is_none_or(|v| !values.contains(&v)),
                "Exists" => value.is_some(),
                "DoesNotExist" => value.is_none(),
                _ => false,
            }
        });
    by_label && by_expression
}

// === CEL ===

fn base_context(attrs: &Attributes<'_>) -> Context<'static> {
    let mut ctx = kubernetes_context();
    let user = attrs
        .user
        .map(|u| json!({"username": u.name, "groups": u.groups}));
    let request = json!({
        "operation": attrs.operation,
        "name": attrs.name,
        "namespace": attrs.namespace,
        "kind": {"group": attrs.group, "version": attrs.version, "kind": attrs.kind},
        "resource": {"group": attrs.group, "version": attrs.version, "resource": attrs.resource},
        "requestKind": {"group": attrs.group, "version": attrs.version, "kind": attrs.kind},
        "requestResource": {"group": attrs.group, "version": attrs.version, "resource": attrs.resource},
        "subResource": attrs.subresource,
        "userInfo": user.unwrap_or(json!({})),
        "dryRun": attrs.dry_run,
    });
    ctx.add_variable_from_value("object", to_cel(attrs.object));
    ctx.add_variable_from_value(
        "oldObject",
        attrs.old_object.map(to_cel).unwrap_or(Cel::Null),
    );
    ctx.add_variable_from_value("request", to_cel(&request));
    ctx.add_variable_from_value(
        "namespaceObject",
        attrs.namespace_object.map(to_cel).unwrap_or(Cel::Null),
    );
    ctx.add_variable_from_value("params", Cel::Null);
    ctx
}

pub(super) fn run(expr: &str, ctx: &Context<'_>) -> Result<Cel, String> {
    // Compiled once per thread: a policy's expressions run on every write.
    thread_local! {
        static PROGRAMS: std::cell::RefCell<std::collections::HashMap<String, Arc<Program>>> =
            Default::default();
    }
    let program = PROGRAMS.with(|cache| -> Result<Arc<Program>, String> {
        if let Some(p) = cache.borrow().get(expr) {
            return Ok(p.clone());
        }
        let p = Arc::new(Program::compile(expr).map_err(|e| format!("compilation failed: {e}"))?);
        cache.borrow_mut().insert(expr.to_string(), p.clone());
        Ok(p)
    })?;
    program.execute(ctx).map_err(|e| e.to_string())
}

/// A read of a variable whose expression erred, as the expressions are
/// run: a call of this function, which errs naming the variable.
const BROKEN_READ: &str = "__fake_kube_broken_variable";

/// Runs `expr` where the variables in `broken` erred: each read of one
/// (`variables.NAME`) becomes a call that errs, so evaluation errs only
/// if it reaches the read. The error is then the variable's own.
fn run_lazily(
    expr: &str,
    ctx: &Context<'_>,
    broken: &BTreeMap<String, String>,
) -> Result<Cel, String> {
    let rewritten = broken.keys().fold(expr.to_string(), |text, name| {
        let needle = format!("variables.{name}");
        let mut out = String::with_capacity(text.len());
        let mut rest = text.as_str();
        while let Some(i) = rest.find(&needle) {
            let after = &rest[i + needle.len()..];
            let whole = !after.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_');
            let before_ok = !rest[..i].ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_');
            out.push_str(&rest[..i]);
            if whole && before_ok {
                out.push_str(&format!("{BROKEN_READ}('{name}')"));
            } else {
                out.push_str(&needle);
            }
            rest = after;
        }
        out.push_str(rest);
        out
    });
    run(&rewritten, ctx).map_err(|e| {
        broken
            .iter()
            .find(|(name, _)| e.contains(&broken_read_error(name)))
            .map(|(_, message)| message.clone())
            .unwrap_or_else(|| format!("expression '{expr}' resulted in error: {e}"))
    })
}

fn broken_read_error(name: &str) -> String {
    format!("reads the erring variable '{name}'")
}

fn broken_read(ftx: &FunctionContext<'_>, name: Arc<String>) -> CelResult {
    Err(ftx.error(broken_read_error(&name)))
}

fn variables_value(vars: &BTreeMap<String, Cel>) -> Cel {
    let map: std::collections::HashMap<String, Cel> =
        vars.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    Cel::from(map)
}

fn type_name(v: &Cel) -> &'static str {
    match v {
        Cel::List(_) => "list",
        Cel::Map(_) => "map",
        Cel::Int(_) => "int",
        Cel::UInt(_) => "uint",
        Cel::Float(_) => "double",
        Cel::String(_) => "string",
        Cel::Bytes(_) => "bytes",
        Cel::Bool(_) => "bool",
        Cel::Null => "null",
        _ => "value",
    }
}

/// JSON to CEL as the API server presents an object: integers are `int`,
/// other numbers `double`.
pub fn to_cel(v: &Value) -> Cel {
    match v {
        Value::Null => Cel::Null,
        Value::Bool(b) => Cel::Bool(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => Cel::Int(i),
            None => Cel::Float(n.as_f64().unwrap_or_default()),
        },
        Value::String(s) => Cel::String(Arc::new(s.clone())),
        Value::Array(a) => Cel::List(Arc::new(a.iter().map(to_cel).collect())),
        Value::Object(m) => {
            let map: std::collections::HashMap<String, Cel> =
                m.iter().map(|(k, v)| (k.clone(), to_cel(v))).collect();
            Cel::from(map)
        }
    }
}

/// The interpreter's standard functions plus the Kubernetes libraries
/// the module doc lists.
pub(super) fn kubernetes_context() -> Context<'static> {
    let mut ctx = Context::default();
    ctx.add_function("size", size);
    ctx.add_function(BROKEN_READ, broken_read);
    ctx.add_function("double", double);
    ctx.add_function("trim", trim);
    ctx.add_function("lowerAscii", lower_ascii);
    ctx.add_function("upperAscii", upper_ascii);
    ctx.add_function("substring", substring);
    ctx.add_function("indexOf", index_of);
    ctx.add_function("lastIndexOf", last_index_of);
    ctx.add_function("split", split);
    ctx.add_function("join", join);
    ctx.add_function("replace", replace);
    ctx.add_function("matches", matches);
    ctx.add_function("find", find);
    ctx.add_function("findAll", find_all);
    ctx.add_function("sum", sum);
    ctx.add_function("isSorted", is_sorted);
    ctx.add_function("min", list_min);
    ctx.add_function("max", list_max);
    ctx
}

type CelResult = Result<Cel, ExecutionError>;

/// `double(x)` as cel-go converts: a string out of a double's range
/// (`1e400`) is an error, not infinity.
fn double(ftx: &FunctionContext<'_>, This(this): This<Cel>) -> CelResult {
    match this {
        Cel::String(s) => {
            let v: f64 = s
                .parse()
                .map_err(|_| ftx.error(format!("string '{s}' is not a double")))?;
            let spelled_infinite = s
                .trim_start_matches(['+', '-'])
                .to_ascii_lowercase()
                .starts_with("inf");
            if v.is_infinite() && !spelled_infinite {
                return Err(ftx.error(format!("string '{s}' is out of a double's range")));
            }
            Ok(Cel::Float(v))
        }
        Cel::Float(v) => Ok(Cel::Float(v)),
        Cel::Int(v) => Ok(Cel::Float(v as f64)),
        Cel::UInt(v) => Ok(Cel::Float(v as f64)),
        other => Err(ftx.error(format!("no such overload: double({other:?})"))),
    }
}

fn trim(This(s): This<Arc<String>>) -> CelResult {
    Ok(Cel::String(Arc::new(s.trim().to_string())))
}

fn lower_ascii(This(s): This<Arc<String>>) -> CelResult {
    Ok(Cel::String(Arc::new(s.to_ascii_lowercase())))
}

fn upper_ascii(This(s): This<Arc<String>>) -> CelResult {
    Ok(Cel::String(Arc::new(s.to_ascii_uppercase())))
}

fn chars(s: &str) -> Vec<char> {
    s.chars().collect()
}

fn size(ftx: &FunctionContext<'_>, Arguments(args): Arguments) -> CelResult {
    let value = match (&ftx.this, args.first()) {
        (Some(v), None) => v.clone(),
        (None, Some(v)) => v.clone(),
        _ => return Err(ftx.error("size takes one value")),
    };
    Ok(Cel::Int(match value {
        Cel::String(s) => s.chars().count() as i64,
        Cel::Bytes(b) => b.len() as i64,
        Cel::List(l) => l.len() as i64,
        Cel::Map(m) => m.map.len() as i64,
        other => return Err(ftx.error(format!("no such overload: size({other:?})"))),
    }))
}

fn substring(
    ftx: &FunctionContext<'_>,
    This(s): This<Arc<String>>,
    Arguments(args): Arguments,
) -> CelResult {
    let c = chars(&s);
    let index = |i: usize| -> Result<usize, ExecutionError> {
        match args.get(i) {
            Some(Cel::Int(n)) if *n >= 0 && (*n as usize) <= c.len() => Ok(*n as usize),
            Some(Cel::Int(n)) => Err(ftx.error(format!("index out of range: {n}"))),
            _ => Err(ftx.error("substring takes int indexes")),
        }
    };
    let start = index(0)?;
    let end = if args.len() > 1 { index(1)? } else { c.len() };
    if end < start {
        return Err(ftx.error(format!(
            "invalid substring range. start: {start}, end: {end}"
        )));
    }
    Ok(Cel::String(Arc::new(c[start..end].iter().collect())))
}

fn index_of(
    ftx: &FunctionContext<'_>,
    This(this): This<Cel>,
    Arguments(args): Arguments,
) -> CelResult {
    match (this, args.first()) {
        (Cel::String(s), Some(Cel::String(needle))) => {
            let c = chars(&s);
            let n = chars(needle);
            let found = (0..=c.len().saturating_sub(n.len()))
                .find(|i| c.len() >= n.len() && c[*i..*i + n.len()] == n[..]);
            Ok(Cel::Int(found.map(|i| i as i64).unwrap_or(-1)))
        }
        (Cel::List(l), Some(v)) => Ok(Cel::Int(
            l.iter()
                .position(|x| x == v)
                .map(|i| i as i64)
                .unwrap_or(-1),
        )),
        _ => Err(ftx.error("no such overload: indexOf")),
    }
}

fn last_index_of(
    ftx: &FunctionContext<'_>,
    This(this): This<Cel>,
    Arguments(args): Arguments,
) -> CelResult {
    match (this, args.first()) {
        (Cel::String(s), Some(Cel::String(needle))) => {
            let c = chars(&s);
            let n = chars(needle);
            let found = (0..=c.len().saturating_sub(n.len()))
                .rev()
                .find(|i| c.len() >= n.len() && c[*i..*i + n.len()] == n[..]);
            Ok(Cel::Int(found.map(|i| i as i64).unwrap_or(-1)))
        }
        (Cel::List(l), Some(v)) => Ok(Cel::Int(
            l.iter()
                .rposition(|x| x == v)
                .map(|i| i as i64)
                .unwrap_or(-1),
        )),
        _ => Err(ftx.error("no such overload: lastIndexOf")),
    }
}

fn split(This(s): This<Arc<String>>, separator: Arc<String>) -> CelResult {
    let parts: Vec<Cel> = if separator.is_empty() {
        s.chars()
            .map(|c| Cel::String(Arc::new(c.to_string())))
            .collect()
    } else {
        s.split(separator.as_str())
            .map(|p| Cel::String(Arc::new(p.to_string())))
            .collect()
    };
    Ok(Cel::List(Arc::new(parts)))
}

fn join(
    ftx: &FunctionContext<'_>,
    This(list): This<Arc<Vec<Cel>>>,
    Arguments(args): Arguments,
) -> CelResult {
    let separator = match args.first() {
        Some(Cel::String(s)) => s.to_string(),
        None => String::new(),
        _ => return Err(ftx.error("join takes a string separator")),
    };
    let mut parts = Vec::new();
    for item in list.iter() {
        match item {
            Cel::String(s) => parts.push(s.to_string()),
            other => return Err(ftx.error(format!("join: {other:?} is not a string"))),
        }
    }
    Ok(Cel::String(Arc::new(parts.join(&separator))))
}

fn replace(This(s): This<Arc<String>>, from: Arc<String>, to: Arc<String>) -> CelResult {
    Ok(Cel::String(Arc::new(s.replace(from.as_str(), to.as_str()))))
}

/// RE2 syntax where it differs from the `regex` crate's defaults: `\s`,
/// `\d` and `\w` are ASCII only.
fn re2(ftx: &FunctionContext<'_>, pattern: &str) -> Result<regex::Regex, ExecutionError> {
    let ascii = pattern
        .replace("\\s", "[\\t\\n\\f\\r ]")
        .replace("\\d", "[0-9]")
        .replace("\\w", "[0-9A-Za-z_]");
    regex::Regex::new(&ascii)
        .map_err(|e| ftx.error(format!("'{pattern}' is not a valid regex: {e}")))
}

fn matches(
    ftx: &FunctionContext<'_>,
    This(s): This<Arc<String>>,
    pattern: Arc<String>,
) -> CelResult {
    Ok(Cel::Bool(re2(ftx, &pattern)?.is_match(&s)))
}

fn find(ftx: &FunctionContext<'_>, This(s): This<Arc<String>>, pattern: Arc<String>) -> CelResult {
    let found = re2(ftx, &pattern)?
        .find(&s)
        .map(|m| m.as_str().to_string())
        .unwrap_or_default();
    Ok(Cel::String(Arc::new(found)))
}

fn find_all(
    ftx: &FunctionContext<'_>,
    This(s): This<Arc<String>>,
    Arguments(args): Arguments,
) -> CelResult {
    let Some(Cel::String(pattern)) = args.first() else {
        return Err(ftx.error("findAll takes a pattern"));
    };
    let limit = match args.get(1) {
        Some(Cel::Int(n)) if *n >= 0 => *n as usize,
        Some(Cel::Int(_)) | None => usize::MAX,
        _ => return Err(ftx.error("findAll's limit is an int")),
    };
    let all: Vec<Cel> = re2(ftx, pattern)?
        .find_iter(&s)
        .take(limit)
        .map(|m| Cel::String(Arc::new(m.as_str().to_string())))
        .collect();
    Ok(Cel::List(Arc::new(all)))
}

fn sum(ftx: &FunctionContext<'_>, This(list): This<Arc<Vec<Cel>>>) -> CelResult {
    let mut total = match list.first() {
        Some(Cel::Float(_)) => Cel::Float(0.0),
        Some(Cel::UInt(_)) => Cel::UInt(0),
        _ => Cel::Int(0),
    };
    for item in list.iter() {
        total = match (total, item) {
            (Cel::Float(a), Cel::Float(b)) => Cel::Float(a + *b),
            (Cel::Int(a), Cel::Int(b)) => Cel::Int(
                a.checked_add(*b)
                    .ok_or_else(|| ftx.error("integer overflow"))?,
            ),
            (Cel::UInt(a), Cel::UInt(b)) => Cel::UInt(
                a.checked_add(*b)
                    .ok_or_else(|| ftx.error("integer overflow"))?,
            ),
            (_, other) => return Err(ftx.error(format!("sum: mixed or non-numeric {other:?}"))),
        };
    }
    Ok(total)
}

fn is_sorted(ftx: &FunctionContext<'_>, This(list): This<Arc<Vec<Cel>>>) -> CelResult {
    for pair in list.windows(2) {
        match pair[0].partial_cmp(&pair[1]) {
            Some(std::cmp::Ordering::Greater) => return Ok(Cel::Bool(false)),
            Some(_) => {}
            None => return Err(ftx.error("isSorted: values are not comparable")),
        }
    }
    Ok(Cel::Bool(true))
}

/// `list.min()` / `list.max()` (Kubernetes), and the interpreter's own
/// `min(a, b, ...)` / `max(a, b, ...)` when called without a target.
fn extreme(ftx: &FunctionContext<'_>, args: &[Cel], want: std::cmp::Ordering) -> CelResult {
    let values: Vec<Cel> = match (&ftx.this, args) {
        (Some(Cel::List(l)), []) => l.to_vec(),
        (None, [Cel::List(l)]) => l.to_vec(),
        (None, values) => values.to_vec(),
        _ => return Err(ftx.error("min/max take a list")),
    };
    let mut best: Option<Cel> = None;
    for v in values {
        best = match best {
            None => Some(v),
            Some(b) => match v.partial_cmp(&b) {
                Some(o) if o == want => Some(v),
                Some(_) => Some(b),
                None => return Err(ftx.error("min/max: values are not comparable")),
            },
        };
    }
    best.ok_or_else(|| ftx.error("min/max of an empty list"))
}

fn list_min(ftx: &FunctionContext<'_>, Arguments(args): Arguments) -> CelResult {
    extreme(ftx, &args, std::cmp::Ordering::Less)
}

fn list_max(ftx: &FunctionContext<'_>, Arguments(args): Arguments) -> CelResult {
    extreme(ftx, &args, std::cmp::Ordering::Greater)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eval(expr: &str) -> Result<Cel, String> {
        run(expr, &kubernetes_context())
    }

    #[test]
    fn kubernetes_library_functions_follow_kubernetes_semantics() {
        for (expr, want) in [
            ("'  a b \\t'.trim() == 'a b'", true),
            ("'héllo'.size() == 5 && size('héllo') == 5", true),
            ("'héllo'.substring(1, 3) == 'él'", true),
            ("'a,b,,c'.split(',') == ['a', 'b', '', 'c']", true),
            ("['a', 'b'].join(', ') == 'a, b'", true),
            ("'1h30m'.findAll('[0-9]+[a-z]+') == ['1h', '30m']", true),
            (
                "'abc123'.find('[0-9]+') == '123' && 'abc'.find('[0-9]+') == ''",
                true,
            ),
            ("[1.5, 2.0].sum() == 3.5 && [1, 2, 3].sum() == 6", true),
            ("[1, 2, 2].isSorted() && ![2, 1].isSorted()", true),
            ("'a<=b'.indexOf('<=') == 1 && 'x'.indexOf('y') == -1", true),
            (
                "'get'.upperAscii() == 'GET' && 'Aé'.lowerAscii() == 'aé'",
                true,
            ),
            ("'a\u{a0}b'.matches('a\\\\sb')", false),
            ("'10' <= '65535' && '9' > '65535'", true),
        ] {
            assert_eq!(eval(expr), Ok(Cel::Bool(want)), "{expr}");
        }
        assert!(eval("'ab'.substring(3)").is_err());
    }

    #[test]
    fn an_erring_variable_errs_only_the_expressions_that_reach_it() {
        let policy = json!({"spec": {
            "matchConstraints": {"resourceRules": [{
                "apiGroups": ["apps"], "apiVersions": ["v1"],
                "operations": ["CREATE"], "resources": ["deployments"]}]},
            "variables": [
                {"name": "on", "expression": "false"},
                {"name": "big", "expression": "double('1e400')"},
                {"name": "bigger", "expression": "variables.big * 2.0"},
                {"name": "big2", "expression": "1.0"}
            ],
            "validations": [
                {"expression": "!variables.on || variables.big > 1.0", "message": "never"},
                {"expression": "variables.on ? variables.bigger > 1.0 : true", "message": "never"},
                {"expression": "variables.big2 == 1.0", "message": "a name that starts like big"},
                {"expression": "variables.bigger > 1.0", "message": "reached"}
            ]
        }});
        let object = json!({"metadata": {"name": "web"}});
        let denials = evaluate(&policy, &Attributes::deployment_created("web", &object))
            .expect("the policy matches");
        assert_eq!(denials.len(), 1, "{denials:?}");
        // The read reached errs with the error of the variable that first
        // erred, through the variable that read it.
        assert!(denials[0].error, "{denials:?}");
        assert!(
            denials[0].message.contains("double('1e400')")
                && denials[0].message.contains("out of a double's range"),
            "{denials:?}"
        );
    }
}
