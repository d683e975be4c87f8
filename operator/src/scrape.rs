//! Reading Prometheus text: samples, and quantiles from histogram buckets
//! computed the way PromQL's `histogram_quantile` does.

use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Parses Prometheus or OpenMetrics text into samples (comments skipped).
pub fn parse_metrics(text: &str) -> Vec<Sample> {
    text.lines().filter_map(parse_sample).collect()
}

/// One sample line: its name, its labels and its value (a timestamp or an
/// OpenMetrics exemplar after the value is skipped); None for a comment, a
/// blank line or a line that is no sample.
fn parse_sample(line: &str) -> Option<Sample> {
    let line = line.trim();
    if line.starts_with('#') || line.is_empty() {
        return None;
    }
    let (name, rest) = line.split_at(line.find(|c: char| c == '{' || c.is_whitespace())?);
    let (labels, rest) = match rest.strip_prefix('{') {
        Some(set) => parse_labels(set)?,
        None => (BTreeMap::new(), rest),
    };
    let value = rest.split_whitespace().next().and_then(parse_value)?;
    Some(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

fn parse_value(text: &str) -> Option<f64> {
    match text {
        "+Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        t => t.parse().ok(),
    }
}

/// A label set after its `{`: the labels, and the text after the `}` that
/// ends it, the first outside a quoted value (a label value may hold a
/// `}`, and an exemplar after the value, `… 5 # {trace_id="…"} 0.5`, has
/// braces of its own). None when it is malformed or never ends.
fn parse_labels(set: &str) -> Option<(BTreeMap<String, String>, &str)> {
    let mut labels = BTreeMap::new();
    let mut rest = set;
    loop {
        rest = rest.trim_start().trim_start_matches(',').trim_start();
        if let Some(after) = rest.strip_prefix('}') {
            return Some((labels, after));
        }
        let eq = rest.find('=')?;
        let key = rest[..eq].trim().to_string();
        let after = rest[eq + 1..].strip_prefix('"')?;
        let mut value = String::new();
        let mut end = None;
        let mut chars = after.char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, n)) = chars.next() {
                        value.push(if n == 'n' { '\n' } else { n });
                    }
                }
                '"' => {
                    end = Some(i + 1);
                    break;
                }
                c => value.push(c),
            }
        }
        labels.insert(key, value);
        rest = &after[end?..];
    }
}

/// Samples with lookups by name and label subset.
#[derive(Debug, Clone, Default)]
pub struct Scrape(pub Vec<Sample>);

impl Scrape {
    pub fn parse(text: &str) -> Self {
        Self(parse_metrics(text))
    }

    pub fn matching<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.0.iter().filter(move |s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
    }

    /// Sum of samples named `name` whose labels include all of `labels`.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.matching(name, labels).map(|s| s.value).sum()
    }

    /// Cumulative bucket counts by upper bound, summed over other labels.
    pub fn buckets(&self, name: &str, labels: &[(&str, &str)]) -> Vec<(f64, f64)> {
        let mut by_le: BTreeMap<u64, (f64, f64)> = BTreeMap::new();
        for s in self.matching(name, labels) {
            if let Some(le) = s.labels.get("le").and_then(|l| parse_value(l)) {
                let entry = by_le.entry(le.to_bits()).or_insert((le, 0.0));
                entry.1 += s.value;
            }
        }
        let mut v: Vec<(f64, f64)> = by_le.into_values().collect();
        v.sort_by(|a, b| a.0.total_cmp(&b.0));
        v
    }
}

/// PromQL's `histogram_quantile` over cumulative `(upper_bound, count)`
/// buckets sorted by bound, the last one `+Inf`. NaN when there are no
/// observations; the highest finite bound when the rank lands in `+Inf`.
pub fn histogram_quantile(q: f64, buckets: &[(f64, f64)]) -> f64 {
    if !(0.0..=1.0).contains(&q) || buckets.len() < 2 {
        return f64::NAN;
    }
    let Some(&(last_le, total)) = buckets.last() else {
        return f64::NAN;
    };
    if last_le != f64::INFINITY || total <= 0.0 {
        return f64::NAN;
    }
    let rank = q * total;
    let index = buckets
        .iter()
        .position(|(_, c)| *c >= rank)
        .unwrap_or(buckets.len() - 1);
    if index == buckets.len() - 1 {
        return buckets[buckets.len() - 2].0;
    }
    let (upper, count) = buckets[index];
    let (lower, below) = if index == 0 {
        if upper <= 0.0 {
            return upper;
        }
        (0.0, 0.0)
    } else {
        buckets[index - 1]
    };
    let in_bucket = count - below;
    if in_bucket <= 0.0 {
        return upper;
    }
    lower + (upper - lower) * (rank - below) / in_bucket
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_openmetrics_text() {
        let s = Scrape::parse(
            "# TYPE x counter\nx_total{route=\"a\",code=\"200\"} 3\nx_total{route=\"a\",code=\"500\"} 1\nup 1\nh_bucket{le=\"+Inf\"} 4\n# EOF\n",
        );
        assert_eq!(s.sum("x_total", &[("route", "a")]), 4.0);
        assert_eq!(s.sum("x_total", &[("code", "500")]), 1.0);
        assert_eq!(s.sum("up", &[]), 1.0);
        assert_eq!(s.buckets("h_bucket", &[]), vec![(f64::INFINITY, 4.0)]);
    }

    #[test]
    fn exemplars_timestamps_and_braces_in_values_do_not_move_the_value() {
        let s = Scrape::parse(concat!(
            "x_total{route=\"a\",code=\"200\"} 5 # {trace_id=\"4b}f\"} 0.5 1700000000.1\n",
            "x_total{route=\"b}\\\"c\",code=\"200\"} 7 1700000000\n",
            "y_bucket{le=\"0.1\"} 9 # {span_id=\"1\"} 0.05\n",
            "z 2 1700000000\n",
            "broken{route=\"a\" 3\n",
        ));
        assert_eq!(s.sum("x_total", &[("route", "a")]), 5.0);
        assert_eq!(s.sum("x_total", &[("route", "b}\"c")]), 7.0);
        assert_eq!(s.buckets("y_bucket", &[]), vec![(0.1, 9.0)]);
        assert_eq!(s.sum("z", &[]), 2.0);
        // A label set that never closes is not a sample.
        assert_eq!(s.0.len(), 4);
    }

    /// Text written by a real client library (the `prometheus-client`
    /// crate's OpenMetrics encoder): label values it escapes (quote,
    /// backslash, newline) and with braces, gauges of NaN and ±Inf, a
    /// counter with an exemplar, a histogram with exemplars, `# EOF`.
    #[test]
    fn reads_what_a_prometheus_client_library_writes() {
        use prometheus_client::encoding::text::encode;
        use prometheus_client::metrics::exemplar::{CounterWithExemplar, HistogramWithExemplars};
        use prometheus_client::metrics::family::Family;
        use prometheus_client::metrics::gauge::Gauge;
        use prometheus_client::registry::Registry;
        use std::sync::atomic::AtomicU64;

        let mut registry = Registry::default();
        let requests =
            Family::<Vec<(String, String)>, prometheus_client::metrics::counter::Counter>::default(
            );
        registry.register("requests", "Requests", requests.clone());
        let odd = "a \"quoted\" \\ back\nslash} {x=\"1\"}";
        requests
            .get_or_create(&vec![
                ("route".into(), odd.into()),
                ("code".into(), "500".into()),
            ])
            .inc_by(3);
        requests
            .get_or_create(&vec![
                ("route".into(), "plain".into()),
                ("code".into(), "200".into()),
            ])
            .inc_by(40);
        let mut gauges = Vec::new();
        for (name, value) in [
            ("nan", f64::NAN),
            ("pos", f64::INFINITY),
            ("neg", f64::NEG_INFINITY),
        ] {
            let gauge = Gauge::<f64, AtomicU64>::default();
            gauge.set(value);
            registry.register(format!("level_{name}"), "A level", gauge.clone());
            gauges.push(gauge);
        }
        let traced = CounterWithExemplar::<Vec<(String, String)>>::default();
        registry.register("traced", "Traced", traced.clone());
        traced.inc_by(7, Some(vec![("trace_id".into(), "4b}f 9".into())]), None);
        let latency = HistogramWithExemplars::<Vec<(String, String)>>::new([0.1, 0.5].into_iter());
        registry.register("latency", "Latency", latency.clone());
        latency.observe(0.05, Some(vec![("span".into(), "1".into())]), None);
        latency.observe(0.3, None, None);
        latency.observe(2.0, Some(vec![("span".into(), "2".into())]), None);
        let mut text = String::new();
        encode(&mut text, &registry).unwrap();
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert!(text.contains(" # {"), "the exemplar is written: {text}");

        let s = Scrape::parse(&text);
        assert_eq!(s.sum("requests_total", &[("route", odd)]), 3.0, "{text}");
        assert_eq!(s.sum("requests_total", &[("code", "200")]), 40.0, "{text}");
        assert_eq!(s.sum("requests_total", &[]), 43.0, "{text}");
        assert!(s.sum("level_nan", &[]).is_nan(), "{text}");
        assert_eq!(s.sum("level_pos", &[]), f64::INFINITY, "{text}");
        assert_eq!(s.sum("level_neg", &[]), f64::NEG_INFINITY, "{text}");
        assert_eq!(s.sum("traced_total", &[]), 7.0, "{text}");
        assert_eq!(
            s.buckets("latency_bucket", &[]),
            vec![(0.1, 1.0), (0.5, 2.0), (f64::INFINITY, 3.0)],
            "{text}"
        );
        assert_eq!(s.sum("latency_count", &[]), 3.0, "{text}");
        assert_eq!(s.sum("latency_sum", &[]), 2.35, "{text}");
        drop(gauges);
    }

    #[test]
    fn quantiles_interpolate_like_promql() {
        let b = [
            (0.1, 50.0),
            (0.5, 90.0),
            (1.0, 100.0),
            (f64::INFINITY, 100.0),
        ];
        // rank 50 falls exactly at the top of the first bucket.
        assert!((histogram_quantile(0.5, &b) - 0.1).abs() < 1e-12);
        // rank 70: halfway through (0.1, 0.5].
        assert!((histogram_quantile(0.7, &b) - 0.3).abs() < 1e-12);
        // rank 95: halfway through (0.5, 1.0].
        assert!((histogram_quantile(0.95, &b) - 0.75).abs() < 1e-12);
        // Observations above every finite bound answer the highest finite bound.
        let over = [(0.1, 0.0), (1.0, 0.0), (f64::INFINITY, 10.0)];
        assert_eq!(histogram_quantile(0.5, &over), 1.0);
        assert!(histogram_quantile(0.5, &[(0.1, 0.0), (f64::INFINITY, 0.0)]).is_nan());
    }
}
