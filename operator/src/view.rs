//! How a release is shown: a live block redrawn in place on a terminal, one
//! plain line per tick otherwise, or one JSON object per tick.
//!
//! The live block is redrawn by moving the cursor up over the rows it took
//! and clearing below. A line wider than the terminal would wrap onto a
//! second row the move does not count, leaving debris at every redraw, so
//! each line is cut to the terminal's width (asked of the terminal at each
//! redraw, so a resize is followed; `COLUMNS` when stdout is no terminal).
//! The cut counts display columns, not characters (`unicode-width`): a wide
//! CJK character or emoji takes two columns, a combining mark none, so a
//! revision or message in any script still fits one row; a control
//! character is counted as one column and a tab as eight, never fewer than
//! a terminal draws. The plain and JSON outputs keep every character.

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
    /// Terminal rows the last live block took (each line is cut to one).
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
                let mut block = live_block(tick);
                if let Some(r) = &tick.report {
                    block.push_str(&r.to_string());
                }
                let frame = self.frame(&block, terminal_width());
                let _ = write!(out, "{frame}");
            }
        }
        let _ = out.flush();
    }

    /// What redraws the live block as `block`: up over the previous one,
    /// clear, then each line cut to `width` columns (when known), so that
    /// every line takes exactly one row and the next move up is exact.
    fn frame(&mut self, block: &str, width: Option<usize>) -> String {
        let mut out = String::new();
        if self.drawn_lines > 0 {
            // Move up over the previous block and clear it.
            out.push_str(&format!("\x1b[{}A\x1b[J", self.drawn_lines));
        }
        let mut rows = 0;
        for line in block.lines() {
            match width {
                // One column spare: a line filling the last column leaves
                // some terminals wrapping at once.
                Some(w) => out.push_str(cut_to_columns(line, w.saturating_sub(1).max(1))),
                None => out.push_str(line),
            }
            out.push('\n');
            rows += 1;
        }
        self.drawn_lines = rows;
        out
    }
}

/// The longest start of `line` that takes at most `columns` terminal
/// columns.
fn cut_to_columns(line: &str, columns: usize) -> &str {
    use unicode_width::UnicodeWidthChar;
    let mut used = 0;
    for (at, c) in line.char_indices() {
        let width = match c {
            '\t' => 8,
            c => c.width().unwrap_or(1),
        };
        used += width;
        if used > columns {
            return &line[..at];
        }
    }
    line
}

/// The terminal's width in columns: asked of stdout's terminal, else
/// `COLUMNS`, else unknown (lines are not cut).
fn terminal_width() -> Option<usize> {
    rustix::termios::tcgetwinsize(std::io::stdout())
        .ok()
        .map(|w| usize::from(w.ws_col))
        .filter(|w| *w > 0)
        .or_else(|| std::env::var("COLUMNS").ok()?.trim().parse().ok())
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

    /// Every line of a redraw takes one row of a 30-column terminal, so
    /// the next redraw moves up over exactly the rows drawn (a wrapped line
    /// took two and left debris).
    #[test]
    fn a_redraw_moves_up_over_exactly_the_rows_drawn_however_long_the_lines() {
        let mut view = View::new(OutputMode::Live);
        let long = format!("  decision  {}\n", "a long message ".repeat(10));
        let block = format!("release web\n{long}  phase     Progressing\n");
        let first = view.frame(&block, Some(30));
        for line in first.lines() {
            assert!(line.chars().count() < 30, "{line:?} wraps on 30 columns");
        }
        assert_eq!(first.lines().count(), 3);
        let second = view.frame(&block, Some(30));
        assert!(second.starts_with("\x1b[3A\x1b[J"), "{second:?}");
        // Unknown width: nothing is cut.
        let mut plain = View::new(OutputMode::Live);
        assert!(plain.frame(&block, None).contains(&long));
    }

    /// Wide characters (CJK, emoji) take two columns each: a line of them
    /// is cut by the columns it takes, not by its count of characters,
    /// so it still fits one row; combining marks take none.
    #[test]
    fn a_line_of_wide_characters_is_cut_by_the_columns_it_takes() {
        use unicode_width::UnicodeWidthStr;
        let mut view = View::new(OutputMode::Live);
        let block = format!(
            "  revision  {}\n  message   {}\n  name      {}\n",
            "版本".repeat(20),
            "🚀".repeat(20),
            "e\u{301}".repeat(40)
        );
        let frame = view.frame(&block, Some(30));
        assert_eq!(frame.lines().count(), 3);
        for line in frame.lines() {
            assert!(
                line.width() <= 29,
                "{line:?} takes {} columns",
                line.width()
            );
        }
        // As much as fits is kept: 12 columns of label, then 8 wide
        // characters (16 columns) of the 29; 17 e's with their accents.
        let lines: Vec<&str> = frame.lines().collect();
        assert_eq!(lines[0], format!("  revision  {}", "版本".repeat(4)));
        assert_eq!(lines[1], format!("  message   {}", "🚀".repeat(8)));
        assert_eq!(lines[2], format!("  name      {}", "e\u{301}".repeat(17)));
    }

    #[test]
    fn weight_bar_fills_in_proportion() {
        assert_eq!(weight_bar(0.0, 10), "[..........]");
        assert_eq!(weight_bar(50.0, 10), "[#####.....]");
        assert_eq!(weight_bar(100.0, 10), "[##########]");
    }
}
