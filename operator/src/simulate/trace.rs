//! Traffic traces for `sluice simulate --trace`: JSON lines, each setting
//! the route's traffic from second `t` until the next line.
//!
//! ```json
//! {"t": 0, "rps": 400,
//!  "primary": {"fail": 0.01, "clump": 1, "median_ms": 20, "sigma": 0.5, "add_ms": 0},
//!  "canary":  {"fail": 0.01, "clump": 1, "median_ms": 20, "sigma": 0.5, "add_ms": 0},
//!  "baseline": {"median_ms": 60}}
//! ```
//!
//! Rules:
//! - `t` is seconds since the canary's first request (the baseline before
//!   it, and any time before the first line, uses the first line's values).
//!   Lines come in strictly increasing `t` (two lines with the same `t`
//!   are refused: one would silently replace the other).
//! - `rps`: the route's requests per second, split between the arms by the
//!   release's weight of the moment, exactly as the proxy splits.
//! - Per arm: `fail`, each request's failure probability (0..=1); `clump`,
//!   failures come in groups of this many requests (a whole number, at
//!   least 1); `median_ms` and `sigma`, a lognormal duration; `add_ms`, a
//!   fixed delay added to each; `dispersion`, the variance of each scrape's
//!   failure count as a multiple of the binomial one (at least 1: the
//!   failure rate varies from scrape to scrape).
//! - `baseline` (optional) is the baseline arm (`--baseline-arm`: a fresh
//!   copy of the primary's version given the canary's share), with the
//!   same fields. Until a line gives it, it follows the primary's values,
//!   line by line (it runs the same version); from the first line that
//!   gives it, it starts from the primary's values of that line with the
//!   given fields changed, and from then on a field left out keeps its
//!   previous value, as for the other arms. Without `--baseline-arm` it is
//!   parsed (and checked) but draws no traffic.
//! - A field left out keeps its previous value (on the first line: the
//!   `sluice simulate` flags' values). Any other field, a value of the
//!   wrong type or out of range, a field given twice in one object, or a
//!   line that is not a JSON object, is an error naming the file, the line
//!   and the field.
//! - Blank lines are skipped.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::{Map, Value};

/// How one arm behaves.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct ArmTraffic {
    pub fail: f64,
    pub clump: u32,
    pub median_ms: f64,
    pub sigma: f64,
    pub add_ms: f64,
    pub dispersion: f64,
}

impl Default for ArmTraffic {
    fn default() -> Self {
        Self {
            fail: 0.01,
            clump: 1,
            median_ms: 20.0,
            sigma: 0.5,
            add_ms: 0.0,
            dispersion: 1.0,
        }
    }
}

/// The traffic from `t` on.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Segment {
    pub t: f64,
    pub rps: f64,
    pub primary: ArmTraffic,
    pub canary: ArmTraffic,
    /// The baseline arm (drawn only with `--baseline-arm`).
    pub baseline: ArmTraffic,
}

/// A whole trace: segments in order of `t`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Trace {
    /// Where it came from (a file name, or "flags").
    pub source: String,
    pub segments: Vec<Segment>,
}

/// A bad trace, named by file, line and field.
#[derive(Clone, Debug, PartialEq)]
pub struct TraceError {
    pub file: String,
    pub line: usize,
    pub field: Option<String>,
    pub message: String,
}

impl fmt::Display for TraceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Line 0: the whole file (an empty one), no line of it.
        if self.line == 0 {
            write!(f, "{}", self.file)?;
        } else {
            write!(f, "{}:{}", self.file, self.line)?;
        }
        if let Some(field) = &self.field {
            write!(f, ": `{field}`")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for TraceError {}

impl Trace {
    /// A trace of one segment from `t = 0`.
    pub fn constant(first: Segment) -> Self {
        Self {
            source: "flags".into(),
            segments: vec![Segment { t: 0.0, ..first }],
        }
    }

    /// The flags' traffic with a cold start (`--cold-start 10s:3`): for
    /// its first `seconds` the canary's durations are `factor` times
    /// longer (median and fixed delay), then as the flags say. A fresh pod
    /// of either version starts cold, so the baseline arm, a copy of the
    /// primary started with the canary, is exactly as cold; the primary,
    /// long running, is not.
    pub fn cold_start(first: Segment, seconds: f64, factor: f64) -> Self {
        let cold = |a: ArmTraffic| ArmTraffic {
            median_ms: a.median_ms * factor,
            add_ms: a.add_ms * factor,
            ..a
        };
        let start = Segment {
            t: 0.0,
            canary: cold(first.canary),
            baseline: cold(first.baseline),
            ..first
        };
        Self {
            source: "flags".into(),
            segments: vec![
                start,
                Segment {
                    t: seconds,
                    ..first
                },
            ],
        }
    }

    /// The traffic at `t` (seconds since the canary's first request).
    pub fn at(&self, t: f64) -> &Segment {
        let i = self.segments.partition_point(|s| s.t <= t + 1e-9);
        &self.segments[i.saturating_sub(1)]
    }

    /// The next time after `t` the traffic changes.
    pub fn next_change(&self, t: f64) -> Option<f64> {
        let i = self.segments.partition_point(|s| s.t <= t + 1e-9);
        self.segments.get(i).map(|s| s.t)
    }

    /// Parses `text` (the contents of `file`), with `first` giving the
    /// values of fields the first line leaves out.
    pub fn parse(text: &str, file: &str, first: Segment) -> Result<Self, TraceError> {
        let mut current = Segment { t: 0.0, ..first };
        // Whether a line gave the baseline arm yet (before: it follows the
        // primary).
        let mut baseline_given = false;
        let mut segments = Vec::new();
        let mut last_t = f64::NEG_INFINITY;
        for (index, raw) in text.lines().enumerate() {
            let line = index + 1;
            let err = |field: Option<&str>, message: String| TraceError {
                file: file.to_string(),
                line,
                field: field.map(str::to_string),
                message,
            };
            if raw.trim().is_empty() {
                continue;
            }
            let value: Value = serde_json::from_str(raw).map_err(|e| {
                // serde's own "at line 1 column N" is of this one line: the
                // column is said once, and the line is the file's.
                let said = e.to_string();
                let what = said
                    .strip_suffix(&format!(" at line {} column {}", e.line(), e.column()))
                    .unwrap_or(&said);
                let hint = if e.is_eof() {
                    "; the line ends before its object does (a missing `}` or `]`?): each line holds one whole JSON object (JSON Lines), so an object written across lines is not read either"
                } else {
                    ""
                };
                err(None, format!("not JSON (column {}): {what}{hint}", e.column()))
            })?;
            if let Some(twice) = repeated_key(raw) {
                return Err(err(
                    Some(&twice),
                    "given twice in one object (the later would silently win)".into(),
                ));
            }
            let Value::Object(object) = value else {
                return Err(err(None, "a line must be a JSON object".into()));
            };
            let mut next = current;
            let mut baseline = None;
            for (key, v) in &object {
                match key.as_str() {
                    "t" => {
                        // Up to about 30,000 years, in seconds.
                        next.t = number(v, 0.0, 1e12).map_err(|m| err(Some("t"), m))?;
                    }
                    "rps" => {
                        next.rps = number(v, 0.0, 1e7).map_err(|m| err(Some("rps"), m))?;
                    }
                    "primary" | "canary" => {
                        let arm = if key == "primary" {
                            &mut next.primary
                        } else {
                            &mut next.canary
                        };
                        parse_arm(v, arm, key).map_err(|(field, m)| err(Some(&field), m))?;
                    }
                    // After the primary's fields of this line (keys come in
                    // name order), since it starts from them.
                    "baseline" => baseline = Some(v),
                    other => {
                        return Err(err(
                            Some(other),
                            "not a trace field; use t, rps, primary, canary, baseline".into(),
                        ));
                    }
                }
            }
            match baseline {
                Some(v) => {
                    if !baseline_given {
                        next.baseline = next.primary;
                        baseline_given = true;
                    }
                    parse_arm(v, &mut next.baseline, "baseline")
                        .map_err(|(field, m)| err(Some(&field), m))?;
                }
                None if !baseline_given => next.baseline = next.primary,
                None => {}
            }
            if !object.contains_key("t") {
                return Err(err(Some("t"), "every line needs its time `t`".into()));
            }
            // Equal times too: the later line would silently replace the
            // earlier one.
            if next.t <= last_t {
                return Err(err(
                    Some("t"),
                    format!("{} is not after the previous line's {last_t}", next.t),
                ));
            }
            last_t = next.t;
            segments.push(next);
            current = next;
        }
        if segments.is_empty() {
            return Err(TraceError {
                file: file.to_string(),
                line: 0,
                field: None,
                message: "the trace has no lines".into(),
            });
        }
        Ok(Self {
            source: file.to_string(),
            segments,
        })
    }

    /// The traces at `path`: a file, or a directory whose `*.jsonl` files
    /// (sorted by name) are the traces of runs 0, 1, 2, … (cycling).
    pub fn load(path: &Path, first: Segment) -> Result<Vec<Self>, String> {
        let files: Vec<PathBuf> = if path.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(path)
                .map_err(|e| format!("{}: cannot read the directory: {e}", path.display()))?
                .filter_map(|entry| entry.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
                .collect();
            files.sort();
            if files.is_empty() {
                return Err(format!(
                    "{}: the directory has no *.jsonl files",
                    path.display()
                ));
            }
            files
        } else {
            vec![path.to_path_buf()]
        };
        files
            .iter()
            .map(|file| {
                let text = crate::input::read_text(file, crate::input::MAX_TRACE_BYTES)?;
                Trace::parse(&text, &file.display().to_string(), first).map_err(|e| e.to_string())
            })
            .collect()
    }
}

/// A finite number in `lo..=hi`.
fn number(v: &Value, lo: f64, hi: f64) -> Result<f64, String> {
    let n = v.as_f64().ok_or_else(|| format!("{v} is not a number"))?;
    if !n.is_finite() || n < lo || n > hi {
        return Err(format!("{n} is not in {lo}..={hi}"));
    }
    Ok(n)
}

/// The first key that an object of this JSON text (already parsed, so
/// well formed) gives twice, as `outer.inner` for a nested one.
fn repeated_key(text: &str) -> Option<String> {
    use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
    /// Walks a value; `path` names where it is.
    struct Walk<'p>(&'p str);
    impl<'de> DeserializeSeed<'de> for Walk<'_> {
        type Value = Option<String>;
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_any(self)
        }
    }
    impl<'de> Visitor<'de> for Walk<'_> {
        type Value = Option<String>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("any JSON value")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut seen = std::collections::HashSet::new();
            let mut found = None;
            while let Some(key) = map.next_key::<String>()? {
                let path = if self.0.is_empty() {
                    key.clone()
                } else {
                    format!("{}.{key}", self.0)
                };
                let inner = map.next_value_seed(Walk(&path))?;
                if found.is_none() {
                    found = if seen.insert(key) { inner } else { Some(path) };
                }
            }
            Ok(found)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut found = None;
            while let Some(inner) = seq.next_element_seed(Walk(self.0))? {
                found = found.or(inner);
            }
            Ok(found)
        }
        fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
    }
    let mut d = serde_json::Deserializer::from_str(text);
    Walk("").deserialize(&mut d).ok().flatten()
}

fn parse_arm(v: &Value, arm: &mut ArmTraffic, name: &str) -> Result<(), (String, String)> {
    let Value::Object(fields) = v else {
        return Err((
            name.to_string(),
            format!("{v} is not an object of arm fields"),
        ));
    };
    let fields: &Map<String, Value> = fields;
    for (key, value) in fields {
        let field = format!("{name}.{key}");
        let bad = |m: String| (field.clone(), m);
        match key.as_str() {
            "fail" => arm.fail = number(value, 0.0, 1.0).map_err(bad)?,
            "clump" => {
                let c = number(value, 1.0, 1e6).map_err(bad)?;
                if c.fract() != 0.0 {
                    return Err(bad(format!("{c} is not a whole number of requests")));
                }
                arm.clump = c as u32;
            }
            "median_ms" => {
                arm.median_ms = number(value, 1e-3, 3.6e6).map_err(bad)?;
            }
            "sigma" => arm.sigma = number(value, 0.0, 5.0).map_err(bad)?,
            "add_ms" => arm.add_ms = number(value, 0.0, 3.6e6).map_err(bad)?,
            "dispersion" => arm.dispersion = number(value, 1.0, 1e4).map_err(bad)?,
            _ => {
                return Err(bad(
                    "not an arm field; use fail, clump, median_ms, sigma, add_ms, dispersion"
                        .into(),
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn first() -> Segment {
        Segment {
            t: 0.0,
            rps: 400.0,
            primary: ArmTraffic::default(),
            canary: ArmTraffic::default(),
            baseline: ArmTraffic::default(),
        }
    }

    #[test]
    fn fields_left_out_keep_their_values() {
        let text = r#"{"t": 0, "rps": 100, "canary": {"fail": 0.05}}

{"t": 10, "canary": {"median_ms": 60}}
{"t": 20.5, "rps": 50, "primary": {"clump": 3, "dispersion": 2.5}}"#;
        let trace = Trace::parse(text, "a.jsonl", first()).unwrap();
        assert_eq!(trace.segments.len(), 3);
        let last = trace.segments[2];
        assert_eq!(last.rps, 50.0);
        assert_eq!(last.canary.fail, 0.05);
        assert_eq!(last.canary.median_ms, 60.0);
        assert_eq!(last.primary.clump, 3);
        assert_eq!(last.primary.dispersion, 2.5);
        assert_eq!(trace.at(-30.0).rps, 100.0);
        assert_eq!(trace.at(9.99).canary.median_ms, 20.0);
        assert_eq!(trace.at(10.0).canary.median_ms, 60.0);
        assert_eq!(trace.next_change(10.0), Some(20.5));
        assert_eq!(trace.next_change(20.5), None);
    }

    #[test]
    fn the_baseline_arm_follows_the_primary_until_a_line_gives_it() {
        let text = r#"{"t": 0, "primary": {"fail": 0.02}}
{"t": 5, "primary": {"median_ms": 30}}
{"t": 10, "primary": {"sigma": 0.7}, "baseline": {"median_ms": 60}}
{"t": 20, "primary": {"fail": 0.04}}
{"t": 30, "baseline": {"fail": 0.03}}"#;
        let trace = Trace::parse(text, "b.jsonl", first()).unwrap();
        let b: Vec<ArmTraffic> = trace.segments.iter().map(|s| s.baseline).collect();
        // Before any line gives it: the primary's values, line by line.
        assert_eq!(b[0], trace.segments[0].primary);
        assert_eq!(b[1], trace.segments[1].primary);
        assert_eq!(b[1].median_ms, 30.0);
        // The first line that gives it starts from that line's primary.
        assert_eq!(b[2].fail, 0.02);
        assert_eq!(b[2].sigma, 0.7);
        assert_eq!(b[2].median_ms, 60.0);
        // Then a field left out keeps its value; the primary no longer leads.
        assert_eq!(b[3], b[2]);
        assert_eq!(trace.segments[3].primary.fail, 0.04);
        assert_eq!(b[4].fail, 0.03);
        assert_eq!(b[4].median_ms, 60.0);
        // The canary is untouched by both.
        assert_eq!(trace.segments[4].canary, ArmTraffic::default());
    }

    #[test]
    fn a_cold_start_slows_both_new_arms_and_not_the_primary() {
        let flags = Segment {
            canary: ArmTraffic {
                add_ms: 5.0,
                ..ArmTraffic::default()
            },
            ..first()
        };
        let trace = Trace::cold_start(flags, 10.0, 3.0);
        let cold = trace.at(9.9);
        assert_eq!((cold.canary.median_ms, cold.canary.add_ms), (60.0, 15.0));
        assert_eq!(cold.baseline.median_ms, 60.0);
        assert_eq!(cold.primary, flags.primary);
        let warm = trace.at(10.0);
        assert_eq!(*warm, Segment { t: 10.0, ..flags });
        assert_eq!(trace.next_change(0.0), Some(10.0));
    }

    #[test]
    fn every_bad_input_names_its_file_line_and_field() {
        let cases: &[(&str, usize, Option<&str>, &str)] = &[
            (
                r#"{"t": 0, "rsp": 10}"#,
                1,
                Some("rsp"),
                "not a trace field",
            ),
            (
                "{\"t\": 0}\n{\"t\": 5, \"canary\": {\"fial\": 0.1}}",
                2,
                Some("canary.fial"),
                "not an arm field",
            ),
            (
                r#"{"t": 0, "primary": {"fail": 1.5}}"#,
                1,
                Some("primary.fail"),
                "not in 0..=1",
            ),
            (
                r#"{"t": 0, "canary": {"clump": 2.5}}"#,
                1,
                Some("canary.clump"),
                "whole number",
            ),
            (
                r#"{"t": 0, "canary": {"clump": 0}}"#,
                1,
                Some("canary.clump"),
                "not in 1",
            ),
            (r#"{"t": 0, "rps": -1}"#, 1, Some("rps"), "not in 0"),
            (r#"{"t": 0, "rps": "many"}"#, 1, Some("rps"), "not a number"),
            (
                r#"{"t": 0, "canary": {"sigma": 9}}"#,
                1,
                Some("canary.sigma"),
                "not in 0",
            ),
            (
                r#"{"t": 0, "canary": {"median_ms": 0}}"#,
                1,
                Some("canary.median_ms"),
                "not in",
            ),
            (
                r#"{"t": 0, "canary": {"dispersion": 0.5}}"#,
                1,
                Some("canary.dispersion"),
                "not in 1",
            ),
            (
                r#"{"t": 0, "canary": 3}"#,
                1,
                Some("canary"),
                "not an object",
            ),
            (
                "{\"t\": 0}\n{\"t\": 3, \"baseline\": {\"fail\": 2}}",
                2,
                Some("baseline.fail"),
                "not in 0..=1",
            ),
            (
                r#"{"t": 0, "baseline": {"warm": 1}}"#,
                1,
                Some("baseline.warm"),
                "not an arm field",
            ),
            (
                "{\"t\": 0}\n{\"t\": 5, \"t\": 100}",
                2,
                Some("t"),
                "given twice",
            ),
            (
                r#"{"t": 0, "canary": {"fail": 0.08}, "canary": {"median_ms": 60}}"#,
                1,
                Some("canary"),
                "given twice",
            ),
            (
                r#"{"t": 0, "primary": {"fail": 0.01, "clump": 2, "fail": 0.02}}"#,
                1,
                Some("primary.fail"),
                "given twice",
            ),
            (
                r#"{"t": 0, "baseline": {"median_ms": -4}}"#,
                1,
                Some("baseline.median_ms"),
                "not in",
            ),
            (
                r#"{"t": 0, "baseline": {"clump": 1.5}}"#,
                1,
                Some("baseline.clump"),
                "whole number",
            ),
            (
                r#"{"t": 0, "baseline": {"sigma": "wide"}}"#,
                1,
                Some("baseline.sigma"),
                "not a number",
            ),
            (
                r#"{"t": 0, "baseline": {"add_ms": -1}}"#,
                1,
                Some("baseline.add_ms"),
                "not in 0",
            ),
            (
                r#"{"t": 0, "baseline": {"dispersion": 0}}"#,
                1,
                Some("baseline.dispersion"),
                "not in 1",
            ),
            (
                r#"{"t": 0, "baseline": [0.01]}"#,
                1,
                Some("baseline"),
                "not an object",
            ),
            ("{\"t\": 5}\n{\"t\": 2}", 2, Some("t"), "not after"),
            (
                "{\"t\": 60, \"canary\": {\"fail\": 0.08}}\n{\"t\": 60}",
                2,
                Some("t"),
                "60 is not after the previous line's 60",
            ),
            (
                r#"{"t": -1}"#,
                1,
                Some("t"),
                "-1 is not in 0..=1000000000000",
            ),
            (r#"{"rps": 5}"#, 1, Some("t"), "needs its time"),
            ("{\"t\": 0}\n[1, 2]", 2, None, "must be a JSON object"),
            ("{\"t\": 0}\n\n{\"t\": 1,", 3, None, "not JSON"),
        ];
        for (text, line, field, message) in cases {
            let e = Trace::parse(text, "trace.jsonl", first()).unwrap_err();
            assert_eq!(e.file, "trace.jsonl", "{text}");
            assert_eq!(e.line, *line, "{text}: {e}");
            assert_eq!(e.field.as_deref(), *field, "{text}: {e}");
            assert!(e.message.contains(message), "{text}: {e}");
            assert!(
                e.to_string().starts_with(&format!("trace.jsonl:{line}")),
                "{e}"
            );
        }
        let e = Trace::parse("\n\n", "empty.jsonl", first()).unwrap_err();
        assert_eq!(e.to_string(), "empty.jsonl: the trace has no lines");
        // serde's position is of the one line it read: only the file's
        // line is said, and an object spread over lines gets a hint.
        let e = Trace::parse("{\"t\": 0}\n{\"t\": 1,}", "trace.jsonl", first()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "trace.jsonl:2: not JSON (column 9): trailing comma"
        );
        let e = Trace::parse("{\"t\": 0,\n \"rps\": 1}", "trace.jsonl", first()).unwrap_err();
        assert_eq!(e.line, 1, "{e}");
        assert!(!e.message.contains("at line"), "{e}");
        assert!(e.message.contains("one whole JSON object"), "{e}");
        // A line cut short gets the same hint, its likelier cause first.
        let e = Trace::parse(
            "{\"t\": 0}\n{\"t\": 5, \"canary\": {\"fail\": 0.1}\n",
            "trace.jsonl",
            first(),
        )
        .unwrap_err();
        assert_eq!(e.line, 2, "{e}");
        assert!(e.message.contains("a missing `}`"), "{e}");
    }

    #[test]
    fn a_directory_gives_its_jsonl_files_in_name_order() {
        let dir = std::env::temp_dir().join(format!("sluice-trace-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("b.jsonl"), "{\"t\": 0, \"rps\": 2}\n").unwrap();
        std::fs::write(dir.join("a.jsonl"), "{\"t\": 0, \"rps\": 1}\n").unwrap();
        std::fs::write(dir.join("notes.txt"), "ignored").unwrap();
        let traces = Trace::load(&dir, first()).unwrap();
        assert_eq!(
            traces.iter().map(|t| t.segments[0].rps).collect::<Vec<_>>(),
            vec![1.0, 2.0]
        );
        std::fs::write(dir.join("c.jsonl"), "{\"t\": 0, \"bad\": 1}\n").unwrap();
        let e = Trace::load(&dir, first()).unwrap_err();
        assert!(e.contains("c.jsonl:1: `bad`"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
        let e = Trace::load(&dir, first()).unwrap_err();
        assert!(e.contains("cannot read"), "{e}");
    }
}
