//! One Event store behind two APIs, as the real API server keeps it: an
//! Event is stored once, in its `core/v1` form, and `events.k8s.io/v1`
//! reads and writes convert on the way through, so an Event the operator
//! records through `events.k8s.io/v1` is the one `kubectl get events` and
//! `kubectl describe` (both `core/v1`) show, under the same name, uid and
//! resourceVersion, and a watch on either version sees every change.
//!
//! The field mapping is the documented one (`events.k8s.io/v1` <-> `v1`):
//!
//! | events.k8s.io/v1            | v1                                   |
//! |-----------------------------|--------------------------------------|
//! | `note`                      | `message`                            |
//! | `regarding`                 | `involvedObject`                     |
//! | `related`                   | `related`                            |
//! | `reportingController`       | `reportingComponent`                 |
//! | `reportingInstance`         | `reportingInstance`                  |
//! | `deprecatedSource`          | `source`                             |
//! | `deprecatedFirstTimestamp`  | `firstTimestamp`                     |
//! | `deprecatedLastTimestamp`   | `lastTimestamp`                      |
//! | `deprecatedCount`           | `count`                              |
//! | `eventTime`, `series`, `action`, `type`, `reason` | the same       |
//!
//! One decision where the mapping is silent: an `events.k8s.io/v1` Event
//! written without `deprecatedSource` gets the `v1` `source` its reporter
//! gives (`component` = `reportingController`, `host` =
//! `reportingInstance`), so old clients and `kubectl describe`'s From column
//! name who wrote it; read back through `events.k8s.io/v1`, such a `source`
//! is not shown as `deprecatedSource` (it is the reporter again), so a write
//! reads back as it was written.
//!
//! Field selectors work on the stored `v1` form (`involvedObject.name`,
//! `involvedObject.kind`, `involvedObject.uid`, `involvedObject.namespace`,
//! `reason`, `type`, `source`, `reportingComponent`, `metadata.name`,
//! `metadata.namespace`); through `events.k8s.io/v1` the same fields go by
//! their names there (`regarding.*`, `reportingController`), translated as
//! the server translates field labels.

use serde_json::{Map, Value, json};

pub const CORE_PREFIX: &str = "api/v1";
pub const EVENTS_PREFIX: &str = "apis/events.k8s.io/v1";

/// Whether (prefix, plural) is the `events.k8s.io/v1` view of the store.
pub fn is_events_view(prefix: &str, plural: &str) -> bool {
    prefix == EVENTS_PREFIX && plural == "events"
}

/// Where (prefix, plural) is stored: `events.k8s.io/v1` events are `v1` events.
pub fn storage_prefix<'a>(prefix: &'a str, plural: &str) -> &'a str {
    if is_events_view(prefix, plural) {
        CORE_PREFIX
    } else {
        prefix
    }
}

fn set(out: &mut Map<String, Value>, key: &str, value: &Value) {
    let empty = match value {
        Value::Null => true,
        Value::String(s) => s.is_empty(),
        Value::Object(m) => m.is_empty(),
        _ => false,
    };
    if !empty {
        out.insert(key.to_string(), value.clone());
    }
}

/// The reporter as a `v1` source (empty fields left out).
fn source_of(controller: &Value, instance: &Value) -> Value {
    let mut s = Map::new();
    set(&mut s, "component", controller);
    set(&mut s, "host", instance);
    Value::Object(s)
}

/// An `events.k8s.io/v1` Event as the `v1` Event the store keeps.
pub fn to_core(event: &Value) -> Value {
    let mut out = Map::new();
    out.insert("apiVersion".into(), json!("v1"));
    out.insert("kind".into(), json!("Event"));
    set(&mut out, "metadata", &event["metadata"]);
    for same in [
        "eventTime",
        "series",
        "action",
        "reason",
        "related",
        "type",
        "reportingInstance",
    ] {
        set(&mut out, same, &event[same]);
    }
    set(&mut out, "involvedObject", &event["regarding"]);
    set(&mut out, "message", &event["note"]);
    set(
        &mut out,
        "reportingComponent",
        &event["reportingController"],
    );
    let deprecated = &event["deprecatedSource"];
    if deprecated.as_object().is_some_and(|m| !m.is_empty()) {
        set(&mut out, "source", deprecated);
    } else {
        set(
            &mut out,
            "source",
            &source_of(&event["reportingController"], &event["reportingInstance"]),
        );
    }
    set(
        &mut out,
        "firstTimestamp",
        &event["deprecatedFirstTimestamp"],
    );
    set(&mut out, "lastTimestamp", &event["deprecatedLastTimestamp"]);
    set(&mut out, "count", &event["deprecatedCount"]);
    // involvedObject is required in v1 (an empty reference when missing).
    out.entry("involvedObject").or_insert_with(|| json!({}));
    Value::Object(out)
}

/// A stored `v1` Event as `events.k8s.io/v1` shows it.
pub fn to_events(core: &Value) -> Value {
    let mut out = Map::new();
    out.insert("apiVersion".into(), json!("events.k8s.io/v1"));
    out.insert("kind".into(), json!("Event"));
    set(&mut out, "metadata", &core["metadata"]);
    for same in ["eventTime", "series", "action", "reason", "related", "type"] {
        set(&mut out, same, &core[same]);
    }
    set(&mut out, "regarding", &core["involvedObject"]);
    set(&mut out, "note", &core["message"]);
    let controller = match &core["reportingComponent"] {
        Value::String(s) if !s.is_empty() => json!(s),
        _ => core["source"]["component"].clone(),
    };
    let instance = match &core["reportingInstance"] {
        Value::String(s) if !s.is_empty() => json!(s),
        _ => core["source"]["host"].clone(),
    };
    set(&mut out, "reportingController", &controller);
    set(&mut out, "reportingInstance", &instance);
    let source = &core["source"];
    if *source != source_of(&controller, &instance) {
        set(&mut out, "deprecatedSource", source);
    }
    set(
        &mut out,
        "deprecatedFirstTimestamp",
        &core["firstTimestamp"],
    );
    set(&mut out, "deprecatedLastTimestamp", &core["lastTimestamp"]);
    set(&mut out, "deprecatedCount", &core["count"]);
    Value::Object(out)
}

/// An `events.k8s.io/v1` field selector in the stored `v1` names.
pub fn core_field_selector(selector: &str) -> String {
    selector
        .split(',')
        .map(|term| {
            if let Some(rest) = term.strip_prefix("regarding.") {
                format!("involvedObject.{rest}")
            } else if let Some(rest) = term.strip_prefix("reportingController") {
                format!("reportingComponent{rest}")
            } else if let Some(rest) = term.strip_prefix("deprecatedSource") {
                format!("source{rest}")
            } else {
                term.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// The value a `v1` Event field selector compares against: `source` is
/// the component (as the real server's field label), anything else the
/// field at that path.
pub fn field_value<'a>(core: &'a Value, field: &str) -> Option<&'a Value> {
    if field == "source" {
        return core["source"].get("component");
    }
    core.pointer(&format!("/{}", field.replace('.', "/")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_round_trips_through_both_versions() {
        let written = json!({
            "apiVersion": "events.k8s.io/v1", "kind": "Event",
            "metadata": {"name": "web.1", "namespace": "shop"},
            "eventTime": "2026-01-01T00:00:00.000000Z",
            "series": {"count": 3, "lastObservedTime": "2026-01-01T00:01:00.000000Z"},
            "reportingController": "sluice.dev/operator", "reportingInstance": "sluice-0",
            "action": "Promote", "reason": "Promoted", "type": "Normal",
            "note": "promoted", "regarding": {"kind": "Deployment", "name": "web", "namespace": "shop", "uid": "u1"},
            "related": {"kind": "Pod", "name": "web-1"},
        });
        let core = to_core(&written);
        assert_eq!(core["message"], "promoted");
        assert_eq!(core["involvedObject"]["uid"], "u1");
        assert_eq!(core["reportingComponent"], "sluice.dev/operator");
        assert_eq!(
            core["source"],
            json!({"component": "sluice.dev/operator", "host": "sluice-0"})
        );
        assert_eq!(core["series"]["count"], 3);
        assert_eq!(to_events(&core), written);

        let legacy = json!({
            "apiVersion": "v1", "kind": "Event", "metadata": {"name": "x", "namespace": "shop"},
            "involvedObject": {"kind": "Pod", "name": "p"}, "reason": "Pulled", "message": "pulled",
            "source": {"component": "kubelet", "host": "node-1"},
            "firstTimestamp": "2026-01-01T00:00:00Z", "lastTimestamp": "2026-01-01T00:00:09Z", "count": 4,
            "type": "Normal",
        });
        let seen = to_events(&legacy);
        assert_eq!(seen["reportingController"], "kubelet");
        assert_eq!(seen["reportingInstance"], "node-1");
        assert_eq!(seen["deprecatedCount"], 4);
        assert_eq!(seen["deprecatedLastTimestamp"], "2026-01-01T00:00:09Z");
        assert!(seen.get("deprecatedSource").is_none(), "{seen}");
        assert_eq!(to_core(&seen)["source"], legacy["source"]);
        assert_eq!(to_core(&seen)["count"], 4);
    }

    #[test]
    fn field_selectors_translate_to_the_stored_names() {
        assert_eq!(
            core_field_selector("regarding.name=web,reportingController=x,type!=Normal"),
            "involvedObject.name=web,reportingComponent=x,type!=Normal"
        );
    }
}
