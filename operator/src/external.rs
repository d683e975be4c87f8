//! Custom checks read outside Prometheus, whatever provider the gate reads
//! its counters from:
//!
//! - **web**: `GET` (or `POST` with `body`) `url`, read the number at
//!   `json_path` (RFC 9535 JSONPath) in the JSON answer. It must match
//!   exactly one value: a number, or a string holding one.
//! - **datadog**: Datadog's metrics query API (`GET {address}/api/v1/query`
//!   with `from`, `to` (Unix seconds) and `query`), over the last analysis
//!   interval; the value is the last non-null point of the first series.
//!   The API and application keys come from the access file, as the
//!   headers Datadog documents (`DD-API-KEY`, `DD-APPLICATION-KEY`) on an
//!   entry for the address.
//!
//! Either's credentials and CA come from the access file (`crate::http`).
//! A value outside its bounds fails the check; a call that fails, an
//! answer that is not JSON or a path that matches nothing makes it
//! Inconclusive with the reason, as a PromQL check's would.
//!
//! Each is asked at most once per analysis interval ([`Readings`]), as
//! Flagger asks its metric providers once an interval, although the
//! sequential gate ticks on every scrape (2 s or 5 s): the last reading
//! stands in between. Otherwise a check would cost Datadog 720 to 1,800
//! queries an hour (and its rate limit's 429s), and a `POST` with side
//! effects would fire every scrape. A weight change or a new release
//! ([`Readings::clear`], called by the provider's reset) asks again, and
//! the intervals count from it, so the tick that ends a step's interval
//! (the one that decides the step) reads afresh.
//!
//! Only a reading that gave a number stands for its interval. A failed
//! one (the endpoint unreachable, a 5xx, an answer without the number) is
//! asked again after a pause of a tick or the request's timeout (10 s),
//! whichever is longer, then after twice, four times… that pause while
//! it keeps failing (never longer than the interval, and a new interval
//! asks anyway), so one transient error does not leave the check
//! Inconclusive for a whole interval, and an endpoint that hangs does not
//! hold up nearly every tick for its timeout (a tick waits for its
//! readings). A 429 with a `Retry-After` (seconds or an HTTP-date; a date
//! already past asks for no wait) is asked again no sooner than it says,
//! within the same bound. The count of failures
//! starts over with a reading that succeeds, a weight change or a new
//! release.

use std::time::{Duration, Instant};

use http::Method;
use serde_json::Value;

use crate::analysis::{Analysis, CheckResult};
use crate::http::HttpClient;
use crate::plan::{Plan, QueryCheck, QueryProvider};

const DATADOG: &str = "https://api.datadoghq.com";
const TIMEOUT: Duration = Duration::from_secs(10);

/// Whether `check` is read here rather than by the Prometheus provider.
pub fn is_external(check: &QueryCheck) -> bool {
    check.provider != QueryProvider::Prometheus
}

/// The last reading of each external check (see the module docs); and
/// when the weight last changed.
#[derive(Debug, Default)]
pub struct Readings {
    taken: Vec<Reading>,
    since: Option<Instant>,
}

#[derive(Debug)]
struct Reading {
    check: QueryCheck,
    at: Instant,
    value: Result<f64, String>,
    /// Failed readings in a row, this one included (0 when it succeeded).
    failures: u32,
    /// How long the endpoint asked to be left alone (a 429's
    /// `Retry-After`); zero when it did not.
    retry_after: Duration,
}

impl Readings {
    /// The last reading of `check` if it still stands at `now`: taken in
    /// the same analysis interval as `now`, the intervals counted from the
    /// last weight change (less half a tick, so that timer jitter never
    /// stretches the pace to two intervals). So the tick that ends a
    /// step's interval, which decides whether the weight goes up, reads
    /// afresh, never on the reading of the step's first seconds. Before
    /// any change, a reading stands less than an interval, less half a
    /// tick. Under the threshold gate, which ticks once an interval, every
    /// tick asks. A failed reading stands only for its backoff: a tick or
    /// the request timeout, whichever is longer, after the first failure
    /// in a row, doubled with each further one, or a 429's `Retry-After`
    /// if longer, at most the interval (less half a tick, as above).
    fn standing(
        &self,
        check: &QueryCheck,
        plan: &Plan,
        now: Instant,
    ) -> Option<Result<f64, String>> {
        let slack = plan.tick_interval() / 2;
        let interval = plan.interval.as_secs_f64().max(1e-3);
        let slot = |t: Instant| {
            self.since.map(|since| {
                ((t.saturating_duration_since(since) + slack).as_secs_f64() / interval).floor()
            })
        };
        let pause = plan.tick_interval().max(TIMEOUT);
        let stands_for = |r: &Reading| match r.failures {
            0 => plan.interval,
            n => pause
                .saturating_mul(1 << (n - 1).min(16))
                .max(r.retry_after)
                .min(plan.interval),
        };
        self.taken
            .iter()
            .find(|r| r.check == *check)
            .filter(|r| now.saturating_duration_since(r.at) + slack < stands_for(r))
            .filter(|r| slot(r.at) == slot(now))
            .map(|r| r.value.clone())
    }

    #[cfg(test)]
    fn keep(&mut self, check: &QueryCheck, at: Instant, value: Result<f64, String>) {
        self.keep_paced(check, at, value, None);
    }

    /// Keeps `value`, read at `at`, as `check`'s reading (counting a
    /// failure in a row), with the pause a 429 asked for.
    fn keep_paced(
        &mut self,
        check: &QueryCheck,
        at: Instant,
        value: Result<f64, String>,
        retry_after: Option<Duration>,
    ) {
        let failed_before = self
            .taken
            .iter()
            .find(|r| r.check == *check)
            .map_or(0, |r| r.failures);
        self.taken.retain(|r| r.check != *check);
        let failures = match value {
            Ok(_) => 0,
            Err(_) => failed_before.saturating_add(1),
        };
        self.taken.push(Reading {
            check: check.clone(),
            at,
            value,
            failures,
            retry_after: retry_after.unwrap_or_default(),
        });
    }

    /// Forgets every reading (a weight change, a new release): the next
    /// tick asks every check again, and intervals count from now.
    pub fn clear(&mut self) {
        self.clear_at(Instant::now());
    }

    fn clear_at(&mut self, now: Instant) {
        self.taken.clear();
        self.since = Some(now);
    }
}

/// Reads every external check of `plan` (or takes its standing reading,
/// see [`Readings`]) and puts its result in `analysis` in place of what
/// the provider put there (a check that was not judged because the canary
/// had too little traffic stays not judged). `window`: the span a Datadog
/// query covers.
pub async fn overlay(
    plan: &Plan,
    analysis: &mut Analysis,
    window: Duration,
    http: &HttpClient,
    readings: &mut Readings,
    now: Instant,
) {
    let checks: Vec<&QueryCheck> = plan.queries.iter().filter(|c| is_external(c)).collect();
    if checks.is_empty() {
        return;
    }
    readings.taken.retain(|r| checks.contains(&&r.check));
    for check in checks {
        let threshold = check.threshold();
        let value = match readings.standing(check, plan, now) {
            Some(value) => value,
            None => {
                let mut retry_after = None;
                let value = evaluate(http, check, window, &mut retry_after).await;
                readings.keep_paced(check, now, value.clone(), retry_after);
                value
            }
        };
        let fresh = match value {
            Ok(v) => CheckResult::bounded(&check.name, v, check.min, check.max, ""),
            Err(reason) => CheckResult::inconclusive(&check.name, threshold, reason),
        };
        match analysis.checks.iter_mut().find(|c| c.name == check.name) {
            Some(slot) if slot.reason.starts_with("not judged:") => {
                slot.value = fresh.value;
            }
            Some(slot) => *slot = fresh,
            None => analysis.checks.push(fresh),
        }
    }
}

/// The number `check` reads now; `retry_after`: set to a 429's
/// `Retry-After`, if it gave one.
pub async fn evaluate(
    http: &HttpClient,
    check: &QueryCheck,
    window: Duration,
    retry_after: &mut Option<Duration>,
) -> Result<f64, String> {
    match check.provider {
        QueryProvider::Web => web(http, check, retry_after).await,
        QueryProvider::Datadog => datadog(http, check, window, retry_after).await,
        QueryProvider::Prometheus => {
            Err("a PromQL check is read by the prometheus provider".into())
        }
    }
}

async fn web(
    http: &HttpClient,
    check: &QueryCheck,
    retry_after: &mut Option<Duration>,
) -> Result<f64, String> {
    let url = check.url.as_deref().unwrap_or_default();
    let path = check.json_path.as_deref().unwrap_or("$");
    let answer = match check.method.as_deref() {
        Some("POST") => {
            let body: Value = match &check.body {
                Some(text) => {
                    serde_json::from_str(text).map_err(|e| format!("body: not JSON: {e}"))?
                }
                None => Value::Object(Default::default()),
            };
            http.send_json(Method::POST, url, &body, None, TIMEOUT)
                .await
        }
        _ => http.get(url, TIMEOUT).await,
    }
    .map_err(|e| e.to_string())?;
    *retry_after = told_to_wait(&answer);
    if !answer.status.is_success() {
        return Err(format!(
            "{} answered {}",
            crate::http::shown_url(url),
            answer.status
        ));
    }
    let json: Value = serde_json::from_slice(&answer.body).map_err(|e| {
        format!(
            "{}: the answer is not JSON: {e}",
            crate::http::shown_url(url)
        )
    })?;
    number_at(&json, path)
}

/// The one number at `path` in `json`.
pub fn number_at(json: &Value, path: &str) -> Result<f64, String> {
    let parsed = serde_json_path::JsonPath::parse(path)
        .map_err(|e| format!("json_path `{path}` is not a JSONPath: {e}"))?;
    let found = parsed.query(json).all();
    match found.as_slice() {
        [] => Err(format!("json_path `{path}` matched nothing")),
        [one] => {
            // Never the value itself: the answer may be anything the
            // endpoint returns.
            as_number(one).ok_or_else(|| {
                format!(
                    "json_path `{path}` matched {}, not a number",
                    json_kind(one)
                )
            })
        }
        many => Err(format!(
            "json_path `{path}` matched {} values; it must match one",
            many.len()
        )),
    }
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn as_number(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok().filter(|f: &f64| f.is_finite()),
        _ => None,
    }
}

/// A 429's `Retry-After`.
fn told_to_wait(answer: &crate::http::Answer) -> Option<Duration> {
    answer
        .retry_after
        .filter(|_| answer.status == http::StatusCode::TOO_MANY_REQUESTS)
}

async fn datadog(
    http: &HttpClient,
    check: &QueryCheck,
    window: Duration,
    retry_after: &mut Option<Duration>,
) -> Result<f64, String> {
    let base = check
        .address
        .as_deref()
        .unwrap_or(DATADOG)
        .trim_end_matches('/');
    let to = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let from = to.saturating_sub(window.as_secs().max(60));
    let url = format!(
        "{base}/api/v1/query?from={from}&to={to}&query={}",
        crate::http::encode_query_value(&check.query)
    );
    let answer = http.get(&url, TIMEOUT).await.map_err(|e| e.to_string())?;
    *retry_after = told_to_wait(&answer);
    let json: Value = serde_json::from_slice(&answer.body).unwrap_or(Value::Null);
    if !answer.status.is_success() {
        let why = json["errors"]
            .as_array()
            .map(|e| {
                e.iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join("; ")
            })
            .unwrap_or_default();
        return Err(format!("Datadog answered {}: {why}", answer.status));
    }
    if json["status"] == "error" {
        return Err(format!(
            "Datadog: {}",
            json["error"].as_str().unwrap_or("the query failed")
        ));
    }
    let Some(series) = json["series"].as_array().and_then(|s| s.first()) else {
        return Err("Datadog returned no series for the query (no data in the window)".into());
    };
    series["pointlist"]
        .as_array()
        .and_then(|points| {
            points
                .iter()
                .rev()
                .find_map(|p| p.as_array().and_then(|p| p.get(1)).and_then(Value::as_f64))
        })
        .ok_or_else(|| "Datadog's series has no point with a value in the window".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A web check, as a plan reads one.
    fn web_check() -> QueryCheck {
        crate::plan::parse_checks(
            "- {name: conv, provider: web, url: 'http://h/x', json_path: '$.v', min: 1}\n",
            "test",
        )
        .unwrap()
        .remove(0)
    }

    /// Under the sequential gate (a tick every 2 s, an interval of 60 s) a
    /// reading stands until an interval less half a tick has passed; under
    /// the threshold gate (a tick an interval) never past the tick.
    #[test]
    fn a_reading_stands_for_one_interval() {
        let check = web_check();
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut readings = Readings::default();
        readings.keep(&check, t0, Ok(2.0));
        let sequential = Plan::default();
        assert!(sequential.is_sequential());
        assert_eq!(sequential.interval, Duration::from_secs(60));
        assert_eq!(sequential.tick_interval(), Duration::from_secs(2));
        for s in [0, 2, 30, 58] {
            assert_eq!(
                readings.standing(&check, &sequential, at(s)),
                Some(Ok(2.0)),
                "{s}"
            );
        }
        assert_eq!(readings.standing(&check, &sequential, at(59)), None);
        assert_eq!(readings.standing(&check, &sequential, at(60)), None);
        let threshold = Plan {
            gate: crate::plan::Gate::Threshold,
            ..Plan::default()
        };
        assert_eq!(readings.standing(&check, &threshold, at(30)), None);
        // Another check, or the same name changed, is asked anew.
        let mut changed = check.clone();
        changed.url = Some("http://h/y".into());
        assert_eq!(readings.standing(&changed, &sequential, at(2)), None);
        readings.clear();
        assert_eq!(readings.standing(&check, &sequential, at(2)), None);
    }

    /// After a weight change (at 0) the first reading comes a tick later
    /// (at 2 s); the tick that ends the step's interval (at 60 s) reads
    /// afresh rather than judge the step on its first seconds.
    #[test]
    fn the_tick_that_ends_a_steps_interval_reads_afresh() {
        let check = web_check();
        let t0 = Instant::now();
        let at = |s: f64| t0 + Duration::from_secs_f64(s);
        let plan = Plan::default();
        let mut readings = Readings::default();
        readings.clear_at(at(0.0));
        readings.keep(&check, at(2.0), Ok(2.0));
        for s in [2.0, 30.0, 56.0] {
            assert_eq!(
                readings.standing(&check, &plan, at(s)),
                Some(Ok(2.0)),
                "{s}"
            );
        }
        // Half a tick early (a late-applied weight change) is a new
        // interval too.
        assert_eq!(readings.standing(&check, &plan, at(59.5)), None);
        assert_eq!(readings.standing(&check, &plan, at(60.0)), None);
        // Read again at 60 s, it stands through the next interval.
        readings.keep(&check, at(60.0), Ok(3.0));
        assert_eq!(readings.standing(&check, &plan, at(100.0)), Some(Ok(3.0)));
        assert_eq!(readings.standing(&check, &plan, at(119.0)), None);
    }

    /// A failed reading is asked again after the request timeout (10 s,
    /// longer than the 2 s tick: an endpoint that hangs must not hold up
    /// nearly every tick), then after 20, 40… s while it keeps failing,
    /// never past the interval; a reading that succeeds stands for the
    /// interval again.
    #[test]
    fn a_failed_reading_waits_the_longer_of_a_tick_and_the_timeout_then_backs_off() {
        let check = web_check();
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let plan = Plan::default();
        let mut readings = Readings::default();
        readings.clear_at(at(0));
        let down = || Err::<f64, String>("answered 503".into());
        // Each failure, and the ticks it stands for before the next ask.
        let mut asked = Vec::new();
        for s in (2..60).step_by(2) {
            if readings.standing(&check, &plan, at(s)).is_none() {
                asked.push(s);
                readings.keep(&check, at(s), down());
            }
        }
        assert_eq!(asked, [2, 12, 32]);
        // The new interval asks at once; a success then stands for it.
        assert_eq!(readings.standing(&check, &plan, at(60)), None);
        readings.keep(&check, at(60), Ok(2.0));
        assert_eq!(readings.standing(&check, &plan, at(100)), Some(Ok(2.0)));
        // A failure after a success is asked again a timeout later.
        readings.keep(&check, at(120), down());
        assert_eq!(readings.standing(&check, &plan, at(128)), Some(down()));
        assert_eq!(readings.standing(&check, &plan, at(130)), None);
        // A tick longer than the timeout: the next tick asks again.
        let slow_ticks = Plan {
            gate: crate::plan::Gate::Threshold,
            interval: Duration::from_secs(30),
            ..Plan::default()
        };
        assert_eq!(slow_ticks.tick_interval(), Duration::from_secs(30));
        readings.clear_at(at(200));
        readings.keep(&check, at(200), down());
        assert_eq!(readings.standing(&check, &slow_ticks, at(230)), None);
    }

    /// A web check's outcome at each of `ticks` (seconds after its
    /// readings began), its endpoint answering `first()` to the first call
    /// and `{"v": 2}` (a pass) to every other; and how many calls it got.
    async fn outcomes_at(
        first: impl Fn() -> Vec<u8> + Send + 'static,
        ticks: &[u64],
    ) -> (Vec<crate::analysis::Outcome>, usize) {
        let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = calls.clone();
        let (url, _) = crate::http::test_server(10, move |_| {
            match counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst) {
                0 => first(),
                _ => b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\nConnection: close\r\n\r\n{\"v\": 2}"
                    .to_vec(),
            }
        })
        .await;
        let mut check = web_check();
        check.url = Some(format!("{url}/x"));
        let plan = Plan {
            queries: vec![check],
            ..Plan::default()
        };
        let t0 = Instant::now();
        let mut readings = Readings::default();
        readings.clear_at(t0);
        let mut outcomes = Vec::new();
        for &s in ticks {
            let mut analysis = Analysis::default();
            let http = HttpClient::plain();
            let now = t0 + Duration::from_secs(s);
            overlay(
                &plan,
                &mut analysis,
                plan.interval,
                &http,
                &mut readings,
                now,
            )
            .await;
            outcomes.push(analysis.checks[0].outcome);
        }
        (outcomes, calls.load(std::sync::atomic::Ordering::SeqCst))
    }

    /// A web check whose endpoint fails once: it is read again once the
    /// request timeout (10 s) has passed, not at the very next tick (2 s),
    /// and the check passes, rather than stay Inconclusive for the
    /// interval; after that the passing reading stands (no third call).
    #[tokio::test]
    async fn one_failed_call_does_not_leave_a_check_inconclusive_for_an_interval() {
        let (outcomes, calls) = outcomes_at(
            || b"HTTP/1.1 503 X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec(),
            &[2, 4, 12, 14],
        )
        .await;
        use crate::analysis::Outcome;
        assert_eq!(
            outcomes,
            [
                Outcome::Inconclusive,
                Outcome::Inconclusive,
                Outcome::Pass,
                Outcome::Pass
            ]
        );
        assert_eq!(calls, 2);
    }

    /// A 429 with `Retry-After: 30` is not asked again before 30 s have
    /// passed, though the timeout's pause (10 s) has.
    #[tokio::test]
    async fn a_429s_retry_after_is_honoured() {
        let (outcomes, calls) = outcomes_at(
            || b"HTTP/1.1 429 X\r\nRetry-After: 30\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec(),
            &[2, 12, 32],
        )
        .await;
        use crate::analysis::Outcome;
        assert_eq!(
            outcomes,
            [Outcome::Inconclusive, Outcome::Inconclusive, Outcome::Pass]
        );
        assert_eq!(calls, 2);
    }

    /// A 429 whose `Retry-After` is an HTTP-date 31 s ahead is not asked
    /// again before that date, though the timeout's pause (10 s) has
    /// passed.
    #[tokio::test]
    async fn a_429s_retry_after_date_is_honoured() {
        let (outcomes, calls) = outcomes_at(
            || {
                let date =
                    httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(31));
                format!("HTTP/1.1 429 X\r\nRetry-After: {date}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    .into_bytes()
            },
            &[2, 12, 34],
        )
        .await;
        use crate::analysis::Outcome;
        assert_eq!(
            outcomes,
            [Outcome::Inconclusive, Outcome::Inconclusive, Outcome::Pass]
        );
        assert_eq!(calls, 2);
    }

    #[test]
    fn a_json_path_must_match_one_number() {
        let doc = json!({"data": {"rate": 0.02, "text": "1.5", "list": [1, 2], "name": "x"}});
        assert_eq!(number_at(&doc, "$.data.rate"), Ok(0.02));
        assert_eq!(number_at(&doc, "$.data.text"), Ok(1.5));
        assert!(
            number_at(&doc, "$.data.nope")
                .unwrap_err()
                .contains("matched nothing")
        );
        assert!(
            number_at(&doc, "$.data.list[*]")
                .unwrap_err()
                .contains("matched 2 values")
        );
        assert!(
            number_at(&doc, "$.data.name")
                .unwrap_err()
                .contains("not a number")
        );
        assert!(
            number_at(&doc, "data.rate")
                .unwrap_err()
                .contains("not a JSONPath")
        );
    }
}
