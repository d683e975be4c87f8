//! The release report: one self-contained HTML page drawn from a
//! [`ReleaseRecord`], written by `sluice rollout --report FILE` and
//! `kubectl sluice report NAME`, and the body of the dashboard's release
//! page.
//!
//! - **Self-contained**: inline CSS and inline SVG; no script, font, image
//!   or stylesheet is fetched, so it opens offline and prints (the print
//!   style drops the navigation and the buttons and un-scrolls the tables).
//! - **Plots** (server-side SVG, by hand): the weight over time with its
//!   steps; each arm's failure rate per scrape with its 95% Wilson interval
//!   (as [`crate::report::wilson`]); p50 and p99 of both arms; per check the
//!   evidence against and for the canary with their thresholds (a log
//!   axis: likelihood ratios grow exponentially). Every
//!   decision is a numbered vertical mark on the plots, and the list below
//!   explains each in a sentence naming the check and the evidence that
//!   decided ([`explain`]).
//! - **Accessible**: each plot is a `figure` with a caption, the SVG has
//!   `role="img"` and a title, and a text table with every number drawn
//!   follows it. Each drawn point carries its numbers in data attributes
//!   (`data-series`, `data-t`, `data-value`, and `data-low`/`data-high`,
//!   `data-requests`/`data-failures` where they apply), so a test (or a
//!   user's script) reads exactly what was drawn. Colours keep a contrast
//!   of at least 4.5:1 on white, and the series also differ by dash.

use maud::{DOCTYPE, Markup, PreEscaped, html};

use crate::record::{CheckSample, Decision, ReleaseRecord, Scrape};
use crate::report::wilson;

/// The page's style (inline: the report fetches nothing).
pub const CSS: &str = r#"
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;color:#1a1a1a;background:#fff;margin:0 auto;max-width:1000px;padding:1em 1.5em}
h1{font-size:1.5em;margin:.2em 0}h2{font-size:1.2em;margin:1.4em 0 .4em;border-bottom:1px solid #ccc}
a{color:#0645ad}nav a{margin-right:1em}
dl.facts{display:grid;grid-template-columns:max-content 1fr;gap:.1em 1em}dl.facts dt{font-weight:600}
figure{margin:.5em 0 1.2em}figcaption{font-weight:600;margin-bottom:.2em}
svg{max-width:100%;height:auto;background:#fff}
.axis{stroke:#555;stroke-width:1}.grid{stroke:#ddd;stroke-width:1}
.lbl{font-size:11px;fill:#333}
.canary{stroke:#a34700;fill:#a34700}.primary{stroke:#1f5fa8;fill:#1f5fa8}
.weight{stroke:#2d6a2d;fill:#2d6a2d}.against{stroke:#b0002a;fill:#b0002a}.for{stroke:#1d6b50;fill:#1d6b50}
.p99{stroke-dasharray:6 3}.thr{stroke-dasharray:2 3;stroke-width:1.5;fill:none}
polyline{fill:none!important;stroke-width:2}.band{stroke:none;opacity:.18}
.mark{stroke:#6b2fa0;stroke-width:1.5;stroke-dasharray:4 2}.marklbl{fill:#6b2fa0;font-size:11px;font-weight:700}
.scroll{max-height:14em;overflow:auto;border:1px solid #ddd}
table{border-collapse:collapse;font-size:13px}th,td{padding:.15em .6em;text-align:right;border-bottom:1px solid #eee}
th{background:#f4f4f4;position:sticky;top:0}td.l,th.l{text-align:left}
.legend span{margin-right:1.2em}.sw{display:inline-block;width:1.4em;height:.3em;vertical-align:middle;margin-right:.3em}
ol.decisions li{margin:.3em 0}.warning{color:#a30000;font-weight:600}
.outcome-promoted{color:#1d6b50}.outcome-rolled{color:#a30000}
button{font:inherit;padding:.3em .9em;margin-right:.5em}
.notice{background:#eef6ee;border-left:4px solid #2d6a2d;padding:.3em .6em}.stale{color:#a30000;font-weight:600}
.sr{position:absolute;width:1px;height:1px;overflow:hidden;clip:rect(0 0 0 0);white-space:nowrap}
@media print{nav,.actions,.live,.notice{display:none}.scroll{max-height:none;overflow:visible;border:0}body{max-width:none}}
"#;

const W: f64 = 720.0;
const H: f64 = 220.0;
const LEFT: f64 = 58.0;
const RIGHT: f64 = 12.0;
const TOP: f64 = 12.0;
const BOTTOM: f64 = 30.0;
/// The bottom of a log axis: 10^-2.
const LOG_FLOOR: f64 = -2.0;

/// A point drawn, with the numbers behind it.
#[derive(Clone, Debug)]
struct Point {
    t: f64,
    value: f64,
    low: Option<f64>,
    high: Option<f64>,
    requests: Option<u64>,
    failures: Option<u64>,
}

impl Point {
    fn at(t: f64, value: f64) -> Self {
        Self {
            t,
            value,
            low: None,
            high: None,
            requests: None,
            failures: None,
        }
    }
}

struct Series {
    name: String,
    /// CSS classes: colour, and dash.
    class: &'static str,
    points: Vec<Point>,
    /// Draw as steps (the weight holds until the next change).
    steps: bool,
}

/// A horizontal line (a threshold).
struct Threshold {
    label: String,
    value: f64,
    class: &'static str,
}

/// Seconds as people read them: `45s`, `3m05s`, `1h02m`.
pub fn fmt_t(t: f64) -> String {
    let s = t.max(0.0).round() as u64;
    if s < 60 {
        format!("{s}s")
    } else if s < 3600 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    }
}

/// A number as the report prints it: 0, `1234`, `12.34`, `0.1234`.
pub fn fmt_num(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.4}")
    }
}

fn fmt_pct(v: f64) -> String {
    format!("{:.2}%", v * 100.0)
}

fn fmt_ms(v: f64) -> String {
    format!("{:.1} ms", v * 1000.0)
}

/// A rounded-up top for the y axis.
fn nice_top(max: f64) -> f64 {
    if max <= 0.0 || !max.is_finite() {
        return 1.0;
    }
    let mag = 10f64.powf(max.log10().floor());
    for f in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if max <= f * mag {
            return f * mag;
        }
    }
    10.0 * mag
}

#[allow(clippy::too_many_arguments)]
fn chart(
    id: &str,
    title: &str,
    y_label: &str,
    fmt: fn(f64) -> String,
    series: &[Series],
    thresholds: &[Threshold],
    decisions: &[Decision],
    t_max: f64,
    log: bool,
    max_marks: usize,
) -> Markup {
    let t_max = t_max.max(1.0);
    let top = series
        .iter()
        .flat_map(|s| {
            s.points
                .iter()
                .map(|p| p.high.unwrap_or(p.value).max(p.value))
        })
        .chain(thresholds.iter().map(|t| t.value))
        .filter(|v| v.is_finite())
        .fold(0.0, f64::max);
    // A log axis (the evidence, which grows exponentially) runs from
    // 10^LOG_FLOOR to the power of ten above the largest value.
    let (y_lo, y_hi) = if log {
        (LOG_FLOOR, top.max(10.0).log10().ceil())
    } else {
        (0.0, nice_top(top * 1.05))
    };
    let scale = move |v: f64| {
        if log {
            v.max(10f64.powf(LOG_FLOOR)).log10()
        } else {
            v
        }
    };
    let x = |t: f64| LEFT + (t / t_max) * (W - LEFT - RIGHT);
    let y = |v: f64| {
        TOP + (1.0 - ((scale(v) - y_lo) / (y_hi - y_lo)).clamp(0.0, 1.0)) * (H - TOP - BOTTOM)
    };
    let ticks: Vec<f64> = if log {
        let (lo, hi) = (y_lo as i32, y_hi as i32);
        let step = ((hi - lo) / 5).max(1);
        (lo..=hi)
            .step_by(step as usize)
            .map(|e| 10f64.powi(e))
            .collect()
    } else {
        (0..=4).map(|i| y_hi * f64::from(i) / 4.0).collect()
    };
    let base = H - BOTTOM;
    let title_id = format!("{id}-title");
    // Rows of the table: every time any series has a point.
    let mut times: Vec<f64> = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.t))
        .collect();
    times.sort_by(f64::total_cmp);
    times.dedup();
    let has_interval = series
        .iter()
        .any(|s| s.points.iter().any(|p| p.low.is_some()));
    html! {
        figure id=(id) data-plot=(id) {
            figcaption id=(title_id) { (title) }
            div.legend aria-hidden="true" {
                @for s in series {
                    span { svg.sw width="22" height="6" { line class=(s.class) x1="0" y1="3" x2="22" y2="3" stroke-width="3" {} } (s.name) }
                }
                @for t in thresholds {
                    span { svg.sw width="22" height="6" { line class=(format!("{} thr", t.class)) x1="0" y1="3" x2="22" y2="3" {} } (t.label) }
                }
            }
            svg viewBox=(format!("0 0 {W} {H}")) width=(W) height=(H) role="img" aria-labelledby=(title_id) {
                title { (title) ", " (y_label) " over time; the numbers are in the table below" }
                @for v in ticks.iter().copied() {
                    line.grid x1=(LEFT) x2=(W - RIGHT) y1=(y(v)) y2=(y(v)) {}
                    text.lbl x=(LEFT - 4.0) y=(y(v) + 4.0) text-anchor="end" { (fmt(v)) }
                }
                @for i in 0..=5 {
                    @let t = t_max * f64::from(i) / 5.0;
                    text.lbl x=(x(t)) y=(base + 16.0) text-anchor="middle" { (fmt_t(t)) }
                }
                line.axis x1=(LEFT) x2=(LEFT) y1=(TOP) y2=(base) {}
                line.axis x1=(LEFT) x2=(W - RIGHT) y1=(base) y2=(base) {}
                @for th in thresholds {
                    line class=(format!("{} thr", th.class)) x1=(LEFT) x2=(W - RIGHT) y1=(y(th.value)) y2=(y(th.value))
                        data-threshold=(th.label) data-value=(th.value) {}
                }
                @if decisions.len() > max_marks {
                    text.marklbl x=(LEFT + 4.0) y=(base - 4.0) data-marks-capped=(decisions.len()) {
                        "the first " (max_marks) " of " (decisions.len()) " decisions are marked"
                    }
                }
                @for (n, d) in decisions.iter().enumerate().take(max_marks) {
                    line.mark x1=(x(d.t)) x2=(x(d.t)) y1=(TOP) y2=(base) data-decision=(n + 1) data-t=(d.t) {}
                    text.marklbl x=(x(d.t) + 3.0) y=(TOP + 10.0) { (n + 1) }
                }
                @for s in series {
                    @if has_interval && s.points.iter().any(|p| p.low.is_some()) {
                        polygon class=(format!("{} band", s.class)) points=(band(&s.points, &x, &y)) {}
                    }
                    polyline class=(s.class) points=(line_points(&s.points, s.steps, &x, &y, t_max)) {}
                    @for p in &s.points {
                        circle class=(s.class) cx=(x(p.t)) cy=(y(p.value)) r="2.5"
                            data-series=(s.name) data-t=(p.t) data-value=(p.value)
                            data-low=[p.low] data-high=[p.high]
                            data-requests=[p.requests] data-failures=[p.failures] {}
                    }
                }
            }
            div.scroll {
                table data-table=(id) {
                    caption.l { (title) ": values" }
                    thead { tr {
                        th scope="col" { "time" }
                        @for s in series {
                            th scope="col" { (s.name) }
                            @if s.points.iter().any(|p| p.low.is_some()) {
                                th scope="col" { (s.name) " 95% interval" }
                            }
                        }
                    } }
                    tbody {
                        @for t in &times {
                            tr {
                                th.l scope="row" data-t=(t) { (fmt_t(*t)) " (" (t) " s)" }
                                @for s in series {
                                    @let p = s.points.iter().find(|p| p.t == *t);
                                    td data-series=(s.name) data-value=[p.map(|p| p.value)] {
                                        @if let Some(p) = p { (fmt(p.value)) } @else { "–" }
                                    }
                                    @if s.points.iter().any(|p| p.low.is_some()) {
                                        td { @if let Some(Point { low: Some(lo), high: Some(hi), .. }) = p { (fmt(*lo)) " – " (fmt(*hi)) } }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn line_points(
    points: &[Point],
    steps: bool,
    x: &dyn Fn(f64) -> f64,
    y: &dyn Fn(f64) -> f64,
    t_max: f64,
) -> String {
    let mut out = Vec::new();
    for (i, p) in points.iter().enumerate() {
        if steps && i > 0 {
            out.push(format!("{:.1},{:.1}", x(p.t), y(points[i - 1].value)));
        }
        out.push(format!("{:.1},{:.1}", x(p.t), y(p.value)));
    }
    if steps && let Some(last) = points.last() {
        out.push(format!("{:.1},{:.1}", x(t_max), y(last.value)));
    }
    out.join(" ")
}

fn band(points: &[Point], x: &dyn Fn(f64) -> f64, y: &dyn Fn(f64) -> f64) -> String {
    let with: Vec<&Point> = points.iter().filter(|p| p.low.is_some()).collect();
    let upper = with
        .iter()
        .map(|p| format!("{:.1},{:.1}", x(p.t), y(p.high.unwrap_or(p.value))));
    let lower = with
        .iter()
        .rev()
        .map(|p| format!("{:.1},{:.1}", x(p.t), y(p.low.unwrap_or(p.value))));
    upper.chain(lower).collect::<Vec<_>>().join(" ")
}

fn t_max(r: &ReleaseRecord) -> f64 {
    let last = r
        .scrapes
        .last()
        .map(|s| s.t)
        .into_iter()
        .chain(r.decisions.last().map(|d| d.t))
        .chain(r.events.last().map(|e| e.t))
        .fold(0.0, f64::max);
    last.max(1.0)
}

/// Decision marks drawn per chart at most: past it the chart would be a
/// solid block of lines (and a hostile record a huge page); the list below
/// the plots still holds every decision.
const MAX_MARKS: usize = 200;

/// Decision marks drawn on the whole page at most, shared out evenly
/// among its charts (three, plus one per check with evidence).
const MAX_MARKS_TOTAL: usize = 1000;

/// The marks each of `charts` charts may draw.
fn marks_per_chart(charts: usize) -> usize {
    MAX_MARKS.min(MAX_MARKS_TOTAL / charts.max(1))
}

/// The weight over time: each scrape's weight, and each decision's new one.
fn weight_series(r: &ReleaseRecord) -> Series {
    let mut points: Vec<Point> = r
        .scrapes
        .iter()
        .map(|s| Point::at(s.t, s.weight))
        .chain(r.decisions.iter().map(|d| Point::at(d.t, d.weight)))
        .collect();
    points.sort_by(|a, b| a.t.total_cmp(&b.t));
    // At a decision's time, the new weight is the one that holds.
    let mut out: Vec<Point> = Vec::new();
    for p in points {
        match out.last_mut() {
            Some(last) if last.t == p.t => *last = p,
            _ => out.push(p),
        }
    }
    Series {
        name: "weight".into(),
        class: "weight",
        points: out,
        steps: true,
    }
}

fn rate_series(scrapes: &[Scrape], canary: bool) -> Series {
    let points = scrapes
        .iter()
        .filter_map(|s| {
            let arm = if canary { &s.canary } else { &s.primary };
            if arm.requests == 0 {
                return None;
            }
            let n = arm.requests as f64;
            let f = arm.failures as f64;
            let (lo, hi) = wilson(f, n)?;
            Some(Point {
                t: s.t,
                value: f / n,
                low: Some(lo),
                high: Some(hi),
                requests: Some(arm.requests),
                failures: Some(arm.failures),
            })
        })
        .collect();
    Series {
        name: if canary { "canary" } else { "primary" }.into(),
        class: if canary { "canary" } else { "primary" },
        points,
        steps: false,
    }
}

fn latency_series(scrapes: &[Scrape]) -> Vec<Series> {
    let mut out = Vec::new();
    for (name, class, canary, p99) in [
        ("canary p50", "canary", true, false),
        ("canary p99", "canary p99", true, true),
        ("primary p50", "primary", false, false),
        ("primary p99", "primary p99", false, true),
    ] {
        let points = scrapes
            .iter()
            .filter_map(|s| {
                let arm = if canary { &s.canary } else { &s.primary };
                let v = if p99 { arm.p99 } else { arm.p50 }?;
                Some(Point {
                    requests: Some(arm.requests),
                    ..Point::at(s.t, v)
                })
            })
            .collect();
        out.push(Series {
            name: name.into(),
            class,
            points,
            steps: false,
        });
    }
    out
}

/// The names of the checks with evidence, in the order first seen.
fn evidence_checks(r: &ReleaseRecord) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    let mut names: Vec<String> = Vec::new();
    for s in &r.scrapes {
        for c in &s.checks {
            if c.against.is_some() && seen.insert(c.check.as_str()) {
                names.push(c.check.clone());
            }
        }
    }
    names
}

fn evidence_chart(r: &ReleaseRecord, check: &str, n: usize, max_marks: usize) -> Markup {
    let samples: Vec<(f64, &CheckSample)> = r
        .scrapes
        .iter()
        .filter_map(|s| s.checks.iter().find(|c| c.check == check).map(|c| (s.t, c)))
        .collect();
    let against = samples
        .iter()
        .filter_map(|(t, c)| c.against.map(|v| Point::at(*t, v)))
        .collect();
    let for_canary = samples
        .iter()
        .filter_map(|(t, c)| c.for_canary.map(|v| Point::at(*t, v)))
        .collect();
    let last = samples.last().map(|(_, c)| *c);
    let mut thresholds = Vec::new();
    if let Some(v) = last.and_then(|c| c.against_threshold) {
        thresholds.push(Threshold {
            label: "threshold against (rolls back)".into(),
            value: v,
            class: "against",
        });
    }
    if let Some(v) = last.and_then(|c| c.for_threshold) {
        thresholds.push(Threshold {
            label: "threshold for (shown no worse)".into(),
            value: v,
            class: "for",
        });
    }
    chart(
        &format!("evidence-{n}"),
        &format!("Evidence on check {check}"),
        "likelihood ratio (log scale)",
        fmt_num,
        &[
            Series {
                name: "against the canary".into(),
                class: "against",
                points: against,
                steps: false,
            },
            Series {
                name: "for the canary".into(),
                class: "for",
                points: for_canary,
                steps: false,
            },
        ],
        &thresholds,
        &r.decisions,
        t_max(r),
        true,
        max_marks,
    )
}

fn verb(kind: &str) -> &'static str {
    match kind {
        "start" => "Started",
        "advance" => "Advanced",
        "promote" => "Promotion began",
        "finish" => "Promoted",
        "rollback" => "Rolled back",
        "conclude" => "Concluded",
        "pause" => "Paused for approval",
        _ => "Changed",
    }
}

/// The decision in one sentence: what was decided, when, at which weight,
/// and (when the evidence decided) which check and what evidence, against
/// which threshold; then the machine's own reason.
pub fn explain(d: &Decision) -> String {
    let mut s = format!(
        "{} at {} (weight {}%, phase {})",
        verb(&d.kind),
        fmt_t(d.t),
        fmt_num(d.weight),
        d.to.as_str()
    );
    let check = d
        .check
        .as_ref()
        .and_then(|name| d.evidence.iter().find(|c| &c.check == name));
    match check {
        Some(c) if d.kind == "rollback" => {
            s.push_str(&format!(": check {} decided", c.check));
            if let (Some(v), Some(th)) = (c.against, c.against_threshold) {
                s.push_str(&format!(
                    ", its evidence against the canary {} {} its threshold {}",
                    fmt_num(v),
                    if v >= th { "past" } else { "under" },
                    fmt_num(th)
                ));
            } else if let Some(v) = c.value {
                s.push_str(&format!(
                    ", its value {} outside {}",
                    fmt_num(v),
                    c.threshold
                ));
            }
            rates(&mut s, c);
        }
        Some(c) => {
            s.push_str(&format!(": check {} decided", c.check));
            if let (Some(v), Some(th)) = (c.for_canary, c.for_threshold) {
                if v >= th {
                    s.push_str(&format!(
                        ", its evidence for the canary {} past its threshold {} (shown no worse)",
                        fmt_num(v),
                        fmt_num(th)
                    ));
                } else {
                    s.push_str(&format!(
                        ", its evidence for the canary {} under its threshold {} (passing, not yet shown no worse",
                        fmt_num(v),
                        fmt_num(th)
                    ));
                    if let (Some(a), Some(at)) = (c.against, c.against_threshold) {
                        s.push_str(&format!(
                            "; evidence against {} of the {} that rolls back",
                            fmt_num(a),
                            fmt_num(at)
                        ));
                    }
                    s.push(')');
                }
            } else if let Some(v) = c.value {
                s.push_str(&format!(
                    ", its value {} within {}",
                    fmt_num(v),
                    c.threshold
                ));
            }
            rates(&mut s, c);
        }
        None => {}
    }
    s.push('.');
    if !d.reason.is_empty() {
        s.push_str(&format!(" Sluice said: {}", d.reason.trim_end_matches('.')));
        s.push('.');
    }
    s
}

fn rates(s: &mut String, c: &CheckSample) {
    if let (Some(cr), Some(pr)) = (c.canary_rate, c.primary_rate) {
        s.push_str(&format!(
            " (canary {} of requests, primary {})",
            fmt_pct(cr),
            fmt_pct(pr)
        ));
    }
}

fn outcome_class(r: &ReleaseRecord) -> &'static str {
    match r.outcome.as_deref() {
        Some("promoted") => "outcome-promoted",
        Some("rolled back") => "outcome-rolled",
        _ => "",
    }
}

/// Where the release is: `shop/checkout` or `web`.
pub fn release_name(r: &ReleaseRecord) -> String {
    match &r.namespace {
        Some(ns) => format!("{ns}/{}", r.app),
        None => r.app.clone(),
    }
}

/// Wall-clock seconds as UTC text.
pub fn fmt_wall(secs: f64) -> String {
    k8s_openapi::jiff::Timestamp::from_second(secs as i64)
        .map(|t| t.strftime("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_default()
}

/// The strategy with the release's route settings beside it, as
/// `kubectl sluice describe` prints it: `canary (baseline arm)`.
pub fn strategy_text(r: &ReleaseRecord) -> String {
    match r.traffic.as_str() {
        "" | "-" => r.strategy.clone(),
        traffic => format!("{} ({traffic})", r.strategy),
    }
}

/// The body of a release: facts, plots with their tables, the decisions
/// explained, the events and an experiment's report.
pub fn release_body(r: &ReleaseRecord) -> Markup {
    let tm = t_max(r);
    let checks = evidence_checks(r);
    let marks = marks_per_chart(3 + checks.len());
    html! {
        dl.facts {
            dt { "Release" } dd data-field="release" { (release_name(r)) }
            dt { "Revision" } dd data-field="revision" { code { (r.revision) } }
            dt { "Strategy" } dd data-field="strategy" { (strategy_text(r)) }
            dt { "Steps" } dd { (r.steps.iter().map(|s| format!("{}%", fmt_num(*s))).collect::<Vec<_>>().join(", ")) }
            dt { "Started" } dd { (fmt_wall(r.started_at)) }
            dt { "Phase" } dd data-field="phase" { (r.phase.as_str()) }
            dt { "Weight" } dd data-field="weight" { (fmt_num(r.weight)) "%" }
            dt { "Outcome" } dd data-field="outcome" class=(outcome_class(r)) { (r.outcome.as_deref().unwrap_or("running")) }
            dt { "Last message" } dd { (r.message) }
            dt { "Scrapes" } dd data-field="scrapes" { (r.scrapes.len()) }
        }
        h2 { "Decisions" }
        @if r.decisions.is_empty() { p { "No decision yet." } }
        ol.decisions {
            @for (n, d) in r.decisions.iter().enumerate() {
                li data-decision=(n + 1) data-kind=(d.kind) data-check=[d.check.as_deref()] data-t=(d.t) { (explain(d)) }
            }
        }
        h2 { "Traffic" }
        (chart("weight", "Canary weight (%)", "percent of requests", |v| format!("{}%", fmt_num(v)),
            &[weight_series(r)], &[], &r.decisions, tm, false, marks))
        (chart("failure-rate", "Failure rate per scrape, with 95% Wilson intervals", "failures per request", fmt_pct,
            &[rate_series(&r.scrapes, true), rate_series(&r.scrapes, false)], &[], &r.decisions, tm, false, marks))
        (chart("latency", "Latency per scrape: p50 and p99 (bucket upper bounds)", "seconds", fmt_ms,
            &latency_series(&r.scrapes), &[], &r.decisions, tm, false, marks))
        h2 { "Evidence" }
        @if checks.is_empty() {
            p { "This release was judged without the sequential gate: no evidence curves." }
        }
        p { "The evidence is the likelihood ratio the sequential gate keeps per check (drawn on a log scale): it rolls the canary back when the evidence against it reaches its threshold, and counts the check as shown no worse when the evidence for it reaches its own." }
        @for (n, c) in checks.iter().enumerate() {
            (evidence_chart(r, c, n, marks))
        }
        h2 { "Events" }
        @if r.events.is_empty() { p { "No events." } }
        div.scroll { table data-table="events" {
            thead { tr { th.l scope="col" { "time" } th.l scope="col" { "level" } th.l scope="col" { "event" } } }
            tbody { @for e in &r.events {
                tr data-t=(e.t) { td.l { (fmt_t(e.t)) } td.l class=[e.warning.then_some("warning")] { @if e.warning { "Warning" } @else { "Normal" } } td.l { (e.text) } }
            } }
        } }
        @if let Some(rep) = &r.report {
            h2 { "Experiment report" }
            table data-table="experiment" {
                thead { tr { th.l scope="col" { "arm" } th scope="col" { "requests" } th scope="col" { "failures" } th scope="col" { "failure rate (95% interval)" }
                    @for q in &rep.canary.latency { th scope="col" { "p" (format!("{:.0}", q.q * 100.0)) } } } }
                tbody {
                    @for (name, arm) in [("canary", &rep.canary), ("primary", &rep.stable)] {
                        tr data-arm=(name) data-requests=(arm.requests) data-failures=(arm.failures) {
                            th.l scope="row" { (name) }
                            td { (arm.requests) } td { (arm.failures) }
                            td { @if let Some(e) = arm.error_rate { (fmt_pct(e)) " (" (fmt_pct(arm.error_rate_low.unwrap_or(0.0))) " – " (fmt_pct(arm.error_rate_high.unwrap_or(0.0))) ")" } @else { "–" } }
                            @for q in &arm.latency { td { @if let Some(v) = q.value { (fmt_ms(v)) } @else { "–" } } }
                        }
                    }
                }
            }
            ul {
                @for c in &rep.comparisons {
                    li data-comparison=(c.check) { "Check " (c.check) ": the canary is " (c.verdict)
                        @if let Some(ratio) = c.ratio { " (its rate " (fmt_num(ratio)) " times the primary's)" }
                        "; evidence against " (fmt_num(c.evidence_against)) ", for " (fmt_num(c.evidence_for)) "." }
                }
            }
        }
    }
}

/// A whole page around `body`.
pub fn page(title: &str, nav: Markup, body: Markup, script: Option<&str>) -> String {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) }
                style { (PreEscaped(CSS)) }
            }
            body {
                (nav)
                main id="main" { h1 { (title) } (body) }
                @if let Some(js) = script { script { (PreEscaped(js)) } }
            }
        }
    }
    .into_string()
}

/// Refuses a report path whose directory does not exist or is a
/// directory itself, before a release runs for minutes only to fail there.
pub fn check_writable(file: &std::path::Path) -> Result<(), String> {
    if file.is_dir() {
        return Err(format!("{} is a directory, not a file", file.display()));
    }
    let dir = match file.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => std::path::Path::new("."),
    };
    if !dir.is_dir() {
        return Err(format!(
            "{}: the directory {} does not exist",
            file.display(),
            dir.display()
        ));
    }
    Ok(())
}

/// The release report: a self-contained HTML document.
pub fn report(r: &ReleaseRecord) -> String {
    page(
        &format!("Release of {} ({})", release_name(r), r.revision),
        html! { p.l { "Sluice release report, written " (fmt_wall(r.updated_at)) "." } },
        release_body(r),
        None,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::Outcome;
    use crate::machine::Phase;
    use crate::record::ArmSample;

    fn record() -> ReleaseRecord {
        let plan = crate::demo::demo_plan();
        let mut r = ReleaseRecord::new(None, "web <b>", "v2", &plan, 0.0);
        for i in 1..=4u64 {
            r.scrapes.push(Scrape {
                t: i as f64 * 5.0,
                weight: 10.0,
                phase: Phase::Progressing,
                canary: ArmSample {
                    requests: 100,
                    failures: i,
                    slow: vec![],
                    p50: Some(0.01),
                    p99: Some(0.1),
                },
                primary: ArmSample {
                    requests: 900,
                    failures: 1,
                    slow: vec![],
                    p50: Some(0.01),
                    p99: Some(0.05),
                },
                checks: vec![CheckSample {
                    check: "errors".into(),
                    outcome: Outcome::Inconclusive,
                    against: Some(i as f64),
                    against_threshold: Some(4.09),
                    for_canary: Some(0.1),
                    for_threshold: Some(3.0),
                    value: None,
                    threshold: String::new(),
                    canary_rate: None,
                    primary_rate: None,
                }],
            });
        }
        let mut c = r.scrapes[3].checks[0].clone();
        c.outcome = Outcome::Fail;
        c.canary_rate = Some(0.025);
        c.primary_rate = Some(0.001);
        r.decisions.push(Decision {
            t: 20.0,
            from: Some(Phase::Progressing),
            to: Phase::Failed,
            weight: 0.0,
            kind: "rollback".into(),
            reason: "errors: the canary fails more".into(),
            check: Some("errors".into()),
            evidence: vec![c],
        });
        r
    }

    #[test]
    fn the_strategy_names_the_releases_baseline_arm_and_old_records_read_as_before() {
        let mut plan = crate::demo::demo_plan();
        if let crate::plan::Gate::Sequential(g) = &mut plan.gate {
            g.baseline_arm = true;
        }
        let r = ReleaseRecord::new(None, "web", "v2", &plan, 0.0);
        assert_eq!(r.traffic, "baseline arm");
        let html = report(&r);
        assert!(
            html.contains(r#"data-field="strategy">canary (baseline arm)</dd>"#),
            "{html}"
        );
        // A record written before the field was kept reads as it did.
        let mut old: serde_json::Value = serde_json::from_str(&record().to_json()).unwrap();
        assert_eq!(old["traffic"], "-", "the demo's plan sets no route option");
        old.as_object_mut().unwrap().remove("traffic");
        let old = ReleaseRecord::from_json(&old.to_string()).unwrap();
        assert_eq!(old.traffic, "");
        assert!(report(&old).contains(r#"data-field="strategy">canary</dd>"#));
    }

    #[test]
    fn the_rollback_is_explained_naming_the_check_and_its_evidence() {
        let text = explain(&record().decisions[0]);
        assert!(text.starts_with("Rolled back at 20s"), "{text}");
        assert!(text.contains("check errors decided"), "{text}");
        assert!(
            text.contains("against the canary 4.00 under its threshold 4.09"),
            "{text}"
        );
        assert!(
            text.contains("canary 2.50% of requests, primary 0.10%"),
            "{text}"
        );
    }

    #[test]
    fn an_advance_says_whether_the_deciding_check_was_shown_no_worse() {
        let mut d = record().decisions[0].clone();
        d.kind = "advance".into();
        d.to = Phase::Progressing;
        d.evidence[0].outcome = Outcome::Pass;
        d.evidence[0].for_canary = Some(0.98);
        let text = explain(&d);
        assert!(text.starts_with("Advanced at 20s"), "{text}");
        assert!(
            text.contains("check errors decided, its evidence for the canary 0.9800 under its threshold 3.00 (passing, not yet shown no worse; evidence against 4.00 of the 4.09 that rolls back)"),
            "{text}"
        );
        d.evidence[0].for_canary = Some(25.0);
        let text = explain(&d);
        assert!(
            text.contains(
                "its evidence for the canary 25.00 past its threshold 3.00 (shown no worse)"
            ),
            "{text}"
        );
    }

    #[test]
    fn a_chart_marks_at_most_max_marks_decisions_and_the_list_keeps_all() {
        let mut r = record();
        let d = r.decisions[0].clone();
        r.decisions = vec![d; MAX_MARKS + 50];
        let html = report(&r);
        let marks = html.matches("<line class=\"mark\"").count();
        let charts = html.matches("data-marks-capped=").count();
        assert_eq!(charts, 4, "four charts with decision marks");
        assert_eq!(marks, charts * MAX_MARKS, "each chart capped");
        assert!(html.contains(&format!(
            "the first {MAX_MARKS} of {} decisions are marked",
            MAX_MARKS + 50
        )));
        assert_eq!(html.matches("<li data-decision=").count(), MAX_MARKS + 50);
    }

    #[test]
    fn the_marks_on_a_whole_page_are_capped_however_many_checks_have_evidence() {
        let mut r = record();
        let scrape = r.scrapes[0].clone();
        r.scrapes = (0..64)
            .map(|n| {
                let mut s = scrape.clone();
                s.t = f64::from(n);
                s.checks[0].check = format!("check-{n}");
                s
            })
            .collect();
        let d = r.decisions[0].clone();
        r.decisions = vec![d; 300];
        let html = report(&r);
        assert_eq!(html.matches("data-plot=\"evidence-").count(), 64);
        let marks = html.matches("<line class=\"mark\"").count();
        assert!(marks <= MAX_MARKS_TOTAL, "{marks} marks");
        assert_eq!(marks, 67 * (MAX_MARKS_TOTAL / 67), "shared out evenly");
        assert_eq!(html.matches("<li data-decision=").count(), 300);
    }

    #[test]
    fn the_report_draws_each_scrapes_rate_with_its_interval_and_fetches_nothing() {
        let html = report(&record());
        assert!(!html.contains("<script"), "the report needs no script");
        assert!(!html.contains("src=") && !html.contains("href=\"http"));
        assert!(html.contains("web &lt;b&gt;"), "names are escaped");
        let (lo, hi) = wilson(3.0, 100.0).unwrap();
        let needle = format!(
            "data-series=\"canary\" data-t=\"15\" data-value=\"0.03\" data-low=\"{lo}\" data-high=\"{hi}\" data-requests=\"100\" data-failures=\"3\""
        );
        assert!(html.contains(&needle), "{needle}");
        assert!(
            html.contains("data-threshold=\"threshold against (rolls back)\" data-value=\"4.09\"")
        );
    }
}
