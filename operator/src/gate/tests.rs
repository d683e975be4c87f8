use super::*;
use crate::simulate::binomial;
use sluice_loadtest::Rng;

fn settings() -> GateSettings {
    GateSettings {
        latency_bounds: vec![Duration::from_millis(300)],
        ..GateSettings::default()
    }
}

/// One scrape's counts per arm: (n_c, e_c, n_s, e_s).
type Scrape = (f64, f64, f64, f64);

/// The reference: the mixture likelihood ratio recomputed from scratch, as a
/// product of binomial likelihood ratios over the scrapes (binomial
/// coefficients cancel), without logs or the incremental state.
fn direct_mixture(scrapes: &[Scrape], null: f64, alternatives: &[f64]) -> f64 {
    let mut total = 0.0;
    for rho in alternatives {
        let mut product = 1.0;
        for &(n_c, e_c, n_s, e_s) in scrapes {
            if n_c == 0.0 || n_s == 0.0 || e_c + e_s == 0.0 {
                continue;
            }
            let t_alt = rho * n_c / (rho * n_c + n_s);
            let t_null = null * n_c / (null * n_c + n_s);
            let k = e_c + e_s;
            let lik = |t: f64| t.powf(e_c) * (1.0 - t).powf(k - e_c);
            product *= lik(t_alt) / lik(t_null);
        }
        total += product;
    }
    total / alternatives.len() as f64
}

#[test]
fn incremental_evidence_equals_the_direct_mixture() {
    let s = settings();
    let mut rng = Rng::new(11);
    for case in 0..200 {
        let mut e = Evidence::new();
        let mut scrapes = Vec::new();
        for _ in 0..(1 + rng.next_u64() % 12) {
            let n_c = (rng.next_u64() % 60) as f64;
            let n_s = (rng.next_u64() % 300) as f64;
            let e_c = binomial(&mut rng, n_c as u64, 0.05) as f64;
            let e_s = binomial(&mut rng, n_s as u64, 0.03) as f64;
            e.observe(&s, n_c, e_c, n_s, e_s);
            scrapes.push((n_c, e_c, n_s, e_s));
        }
        let fail_alts: Vec<f64> = FAIL_GRID.iter().map(|m| m * s.rho0).collect();
        let pass_alts: Vec<f64> = PASS_GRID.iter().map(|m| m * s.rho_max).collect();
        let fail = direct_mixture(&scrapes, s.rho0, &fail_alts);
        let pass = direct_mixture(&scrapes, s.rho_max, &pass_alts);
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0);
        assert!(
            close(e.fail_statistic().exp(), fail),
            "case {case}: {} vs {fail}",
            e.fail_statistic().exp()
        );
        let ratio_pass = log_mean_exp(&e.pass).exp();
        assert!(
            close(ratio_pass, pass),
            "case {case}: {ratio_pass} vs {pass}"
        );
    }
}

/// Simulated scrapes of two arms failing per request at `p_s` and `p_c`,
/// `rps` requests a second, a scrape a second, at canary weight `weight`.
fn scrapes(rng: &mut Rng, rps: u64, weight: f64, p_s: f64, p_c: f64, count: usize) -> Vec<Scrape> {
    (0..count)
        .map(|_| {
            let n_c = (rps as f64 * weight).round() as u64;
            let n_s = rps - n_c;
            (
                n_c as f64,
                binomial(rng, n_c, p_c) as f64,
                n_s as f64,
                binomial(rng, n_s, p_s) as f64,
            )
        })
        .collect()
}

#[test]
fn an_equal_canary_fails_at_most_alpha_of_the_time_however_long_it_is_watched() {
    let s = settings();
    let mut rng = Rng::new(21);
    let runs = 600;
    let mut false_alarms = 0;
    for _ in 0..runs {
        let mut e = Evidence::new();
        // Ten minutes of scrapes at changing weights, watched after each one.
        'run: for weight in [0.1, 0.25, 0.5] {
            for sc in scrapes(&mut rng, 400, weight, 0.01, 0.01, 200) {
                e.observe(&s, sc.0, sc.1, sc.2, sc.3);
                if e.fail_statistic() >= s.fail_threshold() {
                    false_alarms += 1;
                    break 'run;
                }
            }
        }
    }
    // The bound is alpha / checks per check; allow sampling noise above it.
    let rate = f64::from(false_alarms) / f64::from(runs);
    assert!(
        rate <= s.alpha / 2.0 + 0.01,
        "{false_alarms} of {runs} equal canaries were called worse"
    );
}

#[test]
fn a_canary_rho_max_times_worse_is_shown_no_worse_at_most_beta_of_the_time() {
    let s = settings();
    let mut rng = Rng::new(31);
    let runs = 300;
    let mut proven = 0;
    for _ in 0..runs {
        let mut e = Evidence::new();
        for sc in scrapes(&mut rng, 400, 0.5, 0.01, 0.015, 600) {
            e.observe(&s, sc.0, sc.1, sc.2, sc.3);
            if e.pass_statistic() >= s.pass_threshold() {
                proven += 1;
                break;
            }
        }
    }
    let rate = f64::from(proven) / f64::from(runs);
    assert!(
        rate <= s.beta + 0.03,
        "{proven} of {runs} canaries 1.5x worse were shown no worse"
    );
}

#[test]
fn a_much_worse_canary_fails_within_a_few_scrapes() {
    let s = settings();
    let mut rng = Rng::new(41);
    let mut worst = 0;
    for _ in 0..200 {
        let mut e = Evidence::new();
        let mut taken = 0;
        for sc in scrapes(&mut rng, 400, 0.1, 0.01, 0.08, 60) {
            taken += 1;
            e.observe(&s, sc.0, sc.1, sc.2, sc.3);
            if e.fail_statistic() >= s.fail_threshold() {
                break;
            }
        }
        worst = worst.max(taken);
    }
    assert!(worst <= 15, "an 8x canary took {worst} one-second scrapes");
}

#[test]
fn a_healthy_canary_is_shown_no_worse_and_without_failures_only_by_the_floor() {
    let s = settings();
    let mut rng = Rng::new(51);
    let mut e = Evidence::new();
    let mut scrapes_needed = None;
    for (i, sc) in scrapes(&mut rng, 400, 0.5, 0.01, 0.01, 900)
        .into_iter()
        .enumerate()
    {
        e.observe(&s, sc.0, sc.1, sc.2, sc.3);
        if e.pass_statistic() >= s.pass_threshold() {
            scrapes_needed = Some(i + 1);
            break;
        }
    }
    assert!(
        scrapes_needed.is_some_and(|n| n <= 600),
        "a healthy canary was not shown no worse in 600 s: {scrapes_needed:?}"
    );
    // Neither arm fails: no ratio information; the floor decides, and only
    // once the canary has had enough requests to bound its rate under 0.1%.
    let mut e = Evidence::new();
    e.observe(&s, 1000.0, 0.0, 9000.0, 0.0);
    assert!(
        e.pass_statistic() < s.pass_threshold(),
        "1,000 requests are too few"
    );
    for _ in 0..9 {
        e.observe(&s, 1000.0, 0.0, 9000.0, 0.0);
    }
    assert!(
        e.pass_statistic() >= s.pass_threshold(),
        "10,000 clean requests are enough"
    );
    assert_eq!(e.fail_statistic(), 0.0);
}

#[test]
fn a_slowdown_of_both_arms_is_not_held_against_the_canary() {
    let s = settings();
    let mut state = GateState::new(&s);
    let arm = |n: f64, slow: f64| Arm {
        requests: n,
        failures: 0.0,
        buckets: vec![(0.3, n - slow), (f64::INFINITY, n)],
    };
    // Every request of both arms is over the bound, for two minutes.
    for _ in 0..120 {
        let window = Window {
            stable: arm(360.0, 360.0),
            canary: arm(40.0, 40.0),
            canary_match: Arm::default(),
            canary_mirror: Arm::default(),
        };
        state.observe(&s, &window, 1000);
    }
    let a = state.analysis(&s, 20);
    let latency = a.checks.iter().find(|c| c.name == "latency>300ms").unwrap();
    assert_eq!(latency.outcome, Outcome::Pass, "{}", latency.reason);
    assert!(latency.evidence.as_ref().unwrap().proven);
    // The canary alone being slow fails at once.
    let mut state = GateState::new(&s);
    let window = Window {
        stable: arm(360.0, 4.0),
        canary: arm(40.0, 40.0),
        canary_match: Arm::default(),
        canary_mirror: Arm::default(),
    };
    state.observe(&s, &window, 1000);
    let a = state.analysis(&s, 20);
    let latency = a.checks.iter().find(|c| c.name == "latency>300ms").unwrap();
    assert_eq!(latency.outcome, Outcome::Fail);
    assert!(latency.decisive && a.decisive_failure());
}

#[test]
fn the_automatic_bound_is_the_bucket_bound_above_the_primarys_p99() {
    let s = GateSettings::default();
    let mut state = GateState::new(&s);
    // 1% of the primary's requests take 40-45 ms, the rest 10 ms.
    let stable = Arm {
        requests: 250.0,
        failures: 0.0,
        buckets: vec![(0.01, 247.0), (0.045, 250.0), (f64::INFINITY, 250.0)],
    };
    let window = Window {
        stable: stable.clone(),
        canary: Arm::default(),
        canary_match: Arm::default(),
        canary_mirror: Arm::default(),
    };
    state.observe(&s, &window, 1000);
    assert!(
        state.latency.is_empty(),
        "250 requests are too few to learn from"
    );
    state.observe(&s, &window, 1000);
    assert_eq!(state.latency.len(), 1);
    assert_eq!(state.latency[0].bound, 0.045);
    assert!(state.latency[0].learnt);
    // A primary answering in under a millisecond gets the 10 ms floor.
    let mut state = GateState::new(&s);
    let fast = Arm {
        requests: 600.0,
        failures: 0.0,
        buckets: vec![(0.001, 600.0), (f64::INFINITY, 600.0)],
    };
    let window = Window {
        stable: fast,
        canary: Arm::default(),
        canary_match: Arm::default(),
        canary_mirror: Arm::default(),
    };
    state.observe(&s, &window, 1000);
    assert_eq!(state.latency[0].bound, MIN_LEARNT_BOUND);
}

#[test]
fn the_evidence_survives_a_restart_through_its_json() {
    let s = settings();
    let mut rng = Rng::new(61);
    let mut state = GateState::new(&s);
    for sc in scrapes(&mut rng, 400, 0.25, 0.01, 0.02, 30) {
        let arm = |n: f64, e: f64| Arm {
            requests: n,
            failures: e,
            buckets: vec![(0.3, n), (f64::INFINITY, n)],
        };
        let window = Window {
            stable: arm(sc.2, sc.3),
            canary: arm(sc.0, sc.1),
            canary_match: Arm::default(),
            canary_mirror: Arm::default(),
        };
        state.observe(&s, &window, 2500);
    }
    let text = serde_json::to_string(&state).unwrap();
    let back: GateState = serde_json::from_str(&text).unwrap();
    assert_eq!(back, state);
    assert_eq!(back.analysis(&s, 20), state.analysis(&s, 20));
}

#[test]
fn settings_are_checked_and_errors_name_the_setting() {
    let name = |f: &str| format!("--{}", f.replace('_', "-"));
    let bad = [
        GateSettings {
            alpha: 0.0,
            ..GateSettings::default()
        },
        GateSettings {
            beta: 0.7,
            ..GateSettings::default()
        },
        GateSettings {
            rho_max: 0.9,
            ..GateSettings::default()
        },
        GateSettings {
            failure_floor: 1.5,
            ..GateSettings::default()
        },
        GateSettings {
            latency_bounds: vec![Duration::from_millis(270)],
            ..GateSettings::default()
        },
    ];
    let flags = [
        "--alpha",
        "--beta",
        "--rho-max",
        "--failure-floor",
        "--latency-bounds",
    ];
    for (s, flag) in bad.iter().zip(flags) {
        let e = s.validate(name).unwrap_err();
        assert!(e.starts_with(flag), "{e}");
    }
    assert!(GateSettings::default().validate(name).is_ok());
}

/// How many of `n` requests fall under probability `p`, drawn from `rng`
/// (xorshift64): repeatable runs without a dependency.
fn xorshift_count(rng: &mut u64, n: usize, p: f64) -> f64 {
    (0..n)
        .filter(|_| {
            *rng ^= *rng << 13;
            *rng ^= *rng >> 7;
            *rng ^= *rng << 17;
            (*rng % 1_000_000) as f64 / 1e6 < p
        })
        .count() as f64
}

/// A blue/green soak on a latency bound learnt from the primary, which
/// answered 0.03% of its requests over 10 ms: the new version, at
/// `slow_after` over it, 200 requests a scrape. The tick of the first
/// decisive failure, if any, and the state.
fn soaked_on_a_learnt_bound(
    slow_after: f64,
    seed: u64,
    ticks: usize,
) -> (GateState, Option<usize>) {
    let s = GateSettings::default();
    let mut state = GateState::new(&s);
    let mut rng = seed;
    let arm = |n: f64, slow: f64| Arm {
        requests: n,
        failures: 0.0,
        buckets: vec![
            (0.005, n - slow),
            (0.01, n - slow),
            (0.3, n),
            (f64::INFINITY, n),
        ],
    };
    for _ in 0..300 {
        let window = Window {
            stable: arm(200.0, xorshift_count(&mut rng, 200, 0.0003)),
            ..Window::default()
        };
        state.observe(&s, &window, 0);
    }
    let mut failed_at = None;
    for tick in 0..ticks {
        let window = Window {
            canary: arm(200.0, xorshift_count(&mut rng, 200, slow_after)),
            ..Window::default()
        };
        state.observe_soak(&s, &window, 10_000);
        if failed_at.is_none() && state.soak_analysis(&s, 20).decisive_failure() {
            failed_at = Some(tick);
        }
    }
    (state, failed_at)
}

#[test]
fn a_soak_on_a_learnt_bound_holds_the_new_version_to_the_primarys_p99() {
    // The bound learnt is 10 ms, and the reference is its 1%, not the
    // primary's 0.03%.
    let (state, _) = soaked_on_a_learnt_bound(0.0003, 1, 1);
    let latency = &state.soak.as_ref().unwrap().latency;
    assert_eq!(latency.len(), 1);
    assert_eq!((latency[0].0, latency[0].1), (0.01, LEARNT_BOUND_SHARE));
    assert!(state.latency[0].learnt);
    // Half a percent over the primary's p99 (a noisy node, 17 times the
    // primary's share): 10 soaks of 150 scrapes, none rolls back.
    let false_alarms = (0..10)
        .filter(|seed| soaked_on_a_learnt_bound(0.005, 200 + seed, 150).1.is_some())
        .count();
    assert_eq!(false_alarms, 0);
    // 5% over it, a p99 well past the primary's: caught within a few scrapes.
    let (_, failed_at) = soaked_on_a_learnt_bound(0.05, 9, 60);
    assert!(failed_at.is_some_and(|t| t <= 10), "{failed_at:?}");
}

/// A blue/green soak: all traffic on the new version, judged against the
/// primary's rates from before the switch.
fn soaked(failure_rate_after: f64, seed: u64, ticks: usize) -> (GateState, Option<usize>) {
    let s = GateSettings {
        latency_bounds: vec![Duration::from_millis(300)],
        ..GateSettings::default()
    };
    let mut state = GateState::new(&s);
    let mut rng = seed;
    let mut draw = |n: usize, p: f64| xorshift_count(&mut rng, n, p);
    let arm = |n: f64, failures: f64| Arm {
        requests: n,
        failures,
        buckets: vec![(0.3, n), (f64::INFINITY, n)],
    };
    // Before the switch: 10 minutes of the primary at 1% failures, 100/s.
    for _ in 0..300 {
        let window = Window {
            stable: arm(200.0, draw(200, 0.01)),
            ..Window::default()
        };
        state.observe(&s, &window, 0);
    }
    let mut failed_at = None;
    for tick in 0..ticks {
        let window = Window {
            canary: arm(200.0, draw(200, failure_rate_after)),
            ..Window::default()
        };
        state.observe_soak(&s, &window, 10_000);
        let a = state.soak_analysis(&s, 20);
        if a.decisive_failure() && failed_at.is_none() {
            failed_at = Some(tick);
        }
    }
    (state, failed_at)
}

#[test]
fn a_soak_fails_a_worse_version_within_ticks_and_rarely_an_equal_one() {
    // Ten times the primary's failure rate: caught within a few scrapes.
    let (_, failed_at) = soaked(0.10, 7, 30);
    assert!(failed_at.is_some_and(|t| t <= 3), "{failed_at:?}");
    // The same rate as the primary: 20 soaks of 5 minutes, none fails
    // (α = 1% per check).
    let false_alarms = (0..20)
        .filter(|seed| soaked(0.01, 100 + seed, 150).1.is_some())
        .count();
    assert_eq!(false_alarms, 0);
    // And the reference is the primary's measured rate.
    let (state, _) = soaked(0.01, 3, 1);
    let reference = state.soak.unwrap().reference_failure_rate;
    assert!((reference - 0.01).abs() < 0.002, "{reference}");
}
