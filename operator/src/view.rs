//! How a release is shown: a live block redrawn in place on a terminal, one
//! plain line per tick otherwise, or one JSON object per tick.

use std::io::Write;

use crate::analysis::Outcome;
use crate::runner::TickReport;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputMode {
    Live,
    Plain,
    Json,
}

pub struct View {
    mode: OutputMode,
    drawn_lines: usize,
}

impl View {
    pub fn new(mode: OutputMode) -> Self {
        Self {
            mode,
            drawn_lines: 0,
        }
    }

    pub fn show(&mut self, tick: &TickReport) {
        let mut out = std::io::stdout().lock();
        match self.mode {
            OutputMode::Json => {
                let _ = writeln!(
                    out,
                    "{}",
                    serde_json::to_string(tick).expect("tick serializes")
                );
            }
            OutputMode::Plain => {
                let _ = writeln!(out, "{}", plain_line(tick));
                if let Some(r) = &tick.report {
                    let _ = write!(out, "{r}");
                }
            }
            OutputMode::Live => {
                if self.drawn_lines > 0 {
                    // Move up over the previous block and clear it.
                    let _ = write!(out, "\x1b[{}A\x1b[J", self.drawn_lines);
                }
                let mut block = live_block(tick);
                if let Some(r) = &tick.report {
                    block.push_str(&r.to_string());
                }
                self.drawn_lines = block.lines().count();
                let _ = write!(out, "{block}");
            }
        }
        let _ = out.flush();
    }
}

/// A likelihood ratio for people: plain below a million, powers of ten above.
pub fn likelihood(v: f64) -> String {
    if !v.is_finite() || v >= 1e6 {
        format!("{v:.1e}")
    } else if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

/// The sequential gate's evidence, one entry per check.
pub fn evidence_text(checks: &[crate::analysis::CheckResult]) -> String {
    let parts: Vec<String> = checks
        .iter()
        .filter_map(|c| {
            let e = c.evidence.as_ref().filter(|e| e.fail_threshold > 0.0)?;
            Some(format!(
                "{} against {}/{:.0} for {}/{:.0}{}",
                c.name,
                likelihood(e.fail),
                e.fail_threshold,
                likelihood(e.pass),
                e.pass_threshold,
                if e.proven { " (shown no worse)" } else { "" }
            ))
        })
        .collect();
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join("; ")
    }
}

pub fn weight_bar(percent: f64, width: usize) -> String {
    let filled = ((percent / 100.0) * width as f64).round() as usize;
    format!(
        "[{}{}]",
        "#".repeat(filled.min(width)),
        ".".repeat(width - filled.min(width))
    )
}

fn fmt_opt(v: Option<f64>, f: impl Fn(f64) -> String) -> String {
    v.map(f).unwrap_or_else(|| "-".into())
}

fn requests_text(t: &TickReport) -> String {
    t.canary_requests
        .map(|n| n.to_string())
        .unwrap_or_else(|| "-".into())
}

fn latency_text(tick: &TickReport) -> String {
    if tick.latency.is_empty() {
        return "-".into();
    }
    tick.latency
        .iter()
        .map(|(k, v)| format!("{k} {:.0}ms", v * 1000.0))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A/B-rule traffic, shown apart from the weighted canary the gate judges.
pub fn ab_text(ab: Option<&crate::analysis::AbTraffic>) -> String {
    match ab {
        None => "-".into(),
        Some(ab) => format!(
            "{} requests, success {}",
            ab.requests,
            fmt_opt(ab.success_rate, |v| format!("{v:.2}%"))
        ),
    }
}

pub fn plain_line(t: &TickReport) -> String {
    format!(
        "{:>6.1}s {} {} {:<16} weight {:>6}% step {}/{} requests {} success {} latency {} a/b {} failed {}/{} | {}",
        t.elapsed_secs,
        t.release,
        t.strategy,
        t.phase.as_str(),
        t.canary_weight,
        t.step,
        t.steps,
        requests_text(t),
        fmt_opt(t.success_rate, |v| format!("{v:.2}%")),
        latency_text(t),
        ab_text(t.ab.as_ref()),
        t.failed_checks,
        t.failure_limit,
        t.message
    )
}

fn live_block(t: &TickReport) -> String {
    let verdict = match t.verdict {
        Some(Outcome::Pass) => "pass",
        Some(Outcome::Fail) => "FAIL",
        Some(Outcome::Inconclusive) => "inconclusive",
        None => "-",
    };
    format!(
        "release {}  revision {}  {:.0}s\n  strategy  {} ({})\n  phase     {}\n  weight    {} {}%  (step {}/{})\n  canary    {} requests, success {}, {}  (weighted: what the gate judges)\n  evidence  {}\n  a/b rule  {}\n  checks    {} (failed {}/{})\n  decision  {}\n",
        t.release,
        t.revision,
        t.elapsed_secs,
        t.strategy,
        t.traffic,
        t.phase.as_str(),
        weight_bar(t.canary_weight, 30),
        t.canary_weight,
        t.step,
        t.steps,
        requests_text(t),
        fmt_opt(t.success_rate, |v| format!("{v:.2}%")),
        latency_text(t),
        evidence_text(&t.checks),
        ab_text(t.ab.as_ref()),
        verdict,
        t.failed_checks,
        t.failure_limit,
        t.message
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weight_bar_fills_in_proportion() {
        assert_eq!(weight_bar(0.0, 10), "[..........]");
        assert_eq!(weight_bar(50.0, 10), "[#####.....]");
        assert_eq!(weight_bar(100.0, 10), "[##########]");
    }
}
