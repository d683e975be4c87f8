//! The few special functions the gate needs: the regularized incomplete
//! beta function (binomial tails) and exact binomial confidence bounds.

/// `ln Γ(x)` for `x > 0` (Lanczos, g = 7, nine coefficients; about 15
/// significant digits).
pub fn ln_gamma(x: f64) -> f64 {
    const G: f64 = 7.0;
    const C: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        let pi = std::f64::consts::PI;
        return (pi / (pi * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let t = x + G + 0.5;
    let a = C
        .iter()
        .enumerate()
        .skip(1)
        .fold(C[0], |acc, (i, c)| acc + c / (x + i as f64));
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + a.ln()
}

/// The continued fraction of the incomplete beta function (modified
/// Lentz), valid for `x < (a + 1) / (a + b + 2)`.
fn beta_fraction(a: f64, b: f64, x: f64) -> f64 {
    const TINY: f64 = 1e-300;
    let clamp = |v: f64| if v.abs() < TINY { TINY } else { v };
    let (qab, qap, qam) = (a + b, a + 1.0, a - 1.0);
    let mut c = 1.0;
    let mut d = 1.0 / clamp(1.0 - qab * x / qap);
    let mut h = d;
    for m in 1..500 {
        let m = f64::from(m);
        let m2 = 2.0 * m;
        let aa = m * (b - m) * x / ((qam + m2) * (a + m2));
        d = 1.0 / clamp(1.0 + aa * d);
        c = clamp(1.0 + aa / c);
        h *= d * c;
        let aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2));
        d = 1.0 / clamp(1.0 + aa * d);
        c = clamp(1.0 + aa / c);
        let step = d * c;
        h *= step;
        if (step - 1.0).abs() < 1e-14 {
            break;
        }
    }
    h
}

/// The regularized incomplete beta function `I_x(a, b)`, for `a, b > 0`.
/// For whole numbers, `I_p(x, n − x + 1) = P(Binomial(n, p) ≥ x)`.
pub fn regularized_beta(a: f64, b: f64, x: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    if x >= 1.0 {
        return 1.0;
    }
    let front =
        (ln_gamma(a + b) - ln_gamma(a) - ln_gamma(b) + a * x.ln() + b * (1.0 - x).ln()).exp();
    if x < (a + 1.0) / (a + b + 2.0) {
        front * beta_fraction(a, b, x) / a
    } else {
        1.0 - front * beta_fraction(b, a, 1.0 - x) / b
    }
}

/// The exact (Clopper–Pearson) upper confidence bound of a rate: the `p`
/// at which `P(Binomial(n, p) ≤ events) = level`.
pub fn binomial_upper_bound(events: f64, n: f64, level: f64) -> f64 {
    if n <= 0.0 {
        return 1.0;
    }
    if events >= n {
        return 1.0;
    }
    // P(X ≤ e) = 1 − P(X ≥ e + 1) falls as p grows: bisect.
    let at_most = |p: f64| 1.0 - regularized_beta(events + 1.0, n - events, p);
    let (mut lo, mut hi) = (0.0f64, 1.0f64);
    for _ in 0..100 {
        let mid = 0.5 * (lo + hi);
        if at_most(mid) > level {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    hi
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The binomial tail summed term by term, apart from the beta function.
    fn tail_by_sum(n: u64, x: u64, p: f64) -> f64 {
        let mut total = 0.0;
        for k in x..=n {
            let ln_choose = ln_gamma(n as f64 + 1.0)
                - ln_gamma(k as f64 + 1.0)
                - ln_gamma((n - k) as f64 + 1.0);
            total += (ln_choose + k as f64 * p.ln() + (n - k) as f64 * (1.0 - p).ln()).exp();
        }
        total
    }

    #[test]
    fn ln_gamma_matches_factorials() {
        let mut factorial = 1.0f64;
        for n in 1..30u32 {
            factorial *= f64::from(n);
            let got = ln_gamma(f64::from(n) + 1.0);
            assert!((got - factorial.ln()).abs() < 1e-9, "{n}: {got}");
        }
        assert!((ln_gamma(0.5) - std::f64::consts::PI.sqrt().ln()).abs() < 1e-12);
    }

    #[test]
    fn the_beta_function_gives_binomial_tails() {
        for (n, x, p) in [
            (10, 3, 0.2),
            (40, 1, 0.01),
            (200, 30, 0.1),
            (16, 12, 0.6),
            (5, 5, 0.9),
        ] {
            let beta = regularized_beta(x as f64, (n - x) as f64 + 1.0, p);
            let sum = tail_by_sum(n, x, p);
            assert!(
                (beta - sum).abs() < 1e-10,
                "n={n} x={x} p={p}: {beta} vs {sum}"
            );
        }
    }

    #[test]
    fn the_upper_bound_leaves_level_below_it() {
        for (e, n, level) in [(0.0, 100.0, 0.05), (12.0, 1200.0, 0.0025), (3.0, 10.0, 0.1)] {
            let p = binomial_upper_bound(e, n, level);
            let below = 1.0 - tail_by_sum(n as u64, e as u64 + 1, p);
            assert!((below - level).abs() < 1e-6, "e={e} n={n}: P(X<=e)={below}");
        }
        // No events in 100: the 95% bound is about 3/100 (the rule of three).
        assert!((binomial_upper_bound(0.0, 100.0, 0.05) - 0.0295).abs() < 0.001);
    }
}
