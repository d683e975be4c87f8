//! Session affinity: a client that was given a backend keeps it while the
//! weight moves.
//!
//! - **Cookie.** A request without a valid affinity cookie is decided by the
//!   exact weighted split (`decision="weight"`), and its response sets the
//!   cookie to the backend chosen. A request whose cookie names a backend
//!   that is still in the route goes there (`decision="affinity"`) and does
//!   not count toward the weight, so the split stays exact for new clients.
//!   The cookie's value names the backend's role and a hash of its address
//!   (`canary.1f2e3d4c`). Cookies matter only while a release is under
//!   way: the route has a canary and its weight is above 0 and below 100%.
//!   Then a cookie naming the route's stable or canary address is honoured,
//!   and any other (a different address, garbage) is treated as absent and
//!   overwritten by the response. Outside a release (weight 0 after a
//!   promotion or a rollback, or 100%) no cookie is set, and a request that
//!   carries one gets it deleted (`Max-Age=0`), so the next release starts
//!   from an even split. A client that does not come back between two
//!   releases keeps its old cookie until `max_age`: keep `max_age` shorter
//!   than the time between releases.
//! - **Header.** The value of a header the client already sends (a user id)
//!   is hashed into 10,000 buckets; bucket < weight (in basis points) means
//!   canary. The hash is FNV-1a 64 with a fixed finaliser, so the
//!   assignment is the same in every proxy and across restarts, and raising
//!   the weight only moves users from stable to canary. Requests without the
//!   header take the weighted split.
//! - **With a baseline arm** (a route's `baseline`), the baseline is a third
//!   backend a client can be given. A cookie names it as `baseline.<hash>`
//!   and is honoured while the route still has that baseline address (and
//!   a release is under way, as above); once the baseline is removed, its
//!   cookies are treated as absent and overwritten. A hashed header value
//!   goes to the canary when its bucket is below the weight `w`, to the
//!   baseline when it is in `w..2w` (the baseline's share of the same
//!   size), and to the stable otherwise; so as the weight grows, users move
//!   from stable to baseline and from baseline to canary, never back.

use http::{HeaderName, HeaderValue};

use crate::config::{UpstreamUrl, ValidAffinity, WEIGHT_SCALE_BP};
use crate::fields::Fields;

/// Where an affinity rule sends a request, if anywhere.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Assigned {
    Stable,
    Canary,
    Baseline,
}

/// A route's affinity rule, resolved for its current backends.
#[derive(Debug)]
pub enum Affinity {
    Cookie(Box<CookieAffinity>),
    /// The header hashed, and whether the route has a baseline arm.
    Header {
        name: HeaderName,
        baseline: bool,
    },
}

#[derive(Debug)]
pub struct CookieAffinity {
    name: String,
    stable_token: String,
    canary_token: Option<String>,
    baseline_token: Option<String>,
    /// `Set-Cookie` values: [stable, canary, baseline] × [plain, Secure].
    set: [[HeaderValue; 2]; 3],
    /// `Set-Cookie` deleting the cookie: [plain, Secure].
    clear: [HeaderValue; 2],
}

/// Whether cookies are given and honoured: a release is under way.
fn in_release(has_canary: bool, weight_bp: u32) -> bool {
    has_canary && weight_bp > 0 && weight_bp < WEIGHT_SCALE_BP
}

impl Affinity {
    pub fn new(
        rule: &ValidAffinity,
        path: &str,
        stable: &UpstreamUrl,
        canary: Option<&UpstreamUrl>,
        baseline: Option<&UpstreamUrl>,
    ) -> Self {
        match rule {
            ValidAffinity::Header { name } => Self::Header {
                name: name.clone(),
                baseline: baseline.is_some(),
            },
            ValidAffinity::Cookie { name, max_age } => {
                let stable_token = token("stable", stable);
                let canary_token = canary.map(|c| token("canary", c));
                let baseline_token = baseline.map(|b| token("baseline", b));
                let set_for = |value: &str| {
                    let mut text = format!("{name}={value}; Path={path}");
                    if value.is_empty() {
                        text.push_str("; Max-Age=0");
                    } else if let Some(age) = max_age {
                        text.push_str(&format!("; Max-Age={}", age.as_secs().max(1)));
                    }
                    text.push_str("; HttpOnly; SameSite=Lax");
                    let secure = format!("{text}; Secure");
                    [text, secure]
                        .map(|t| HeaderValue::from_str(&t).expect("a token, a hex hash and a path"))
                };
                let set = [
                    set_for(&stable_token),
                    set_for(canary_token.as_deref().unwrap_or("none")),
                    set_for(baseline_token.as_deref().unwrap_or("none")),
                ];
                Self::Cookie(Box::new(CookieAffinity {
                    name: name.clone(),
                    stable_token,
                    canary_token,
                    baseline_token,
                    set,
                    clear: set_for(""),
                }))
            }
        }
    }

    /// The backend this request is assigned to at `weight_bp`, or None when
    /// the weighted split decides it.
    pub fn assigned(&self, fields: &dyn Fields, weight_bp: u32) -> Option<Assigned> {
        match self {
            Self::Header { name, baseline } => {
                let value = fields.first(name.as_str())?;
                let bucket = bucket(value);
                Some(if bucket < weight_bp {
                    Assigned::Canary
                } else if *baseline && bucket < 2 * weight_bp {
                    Assigned::Baseline
                } else {
                    Assigned::Stable
                })
            }
            Self::Cookie(c) => {
                if !in_release(c.canary_token.is_some(), weight_bp) {
                    return None;
                }
                let mut assigned = None;
                cookies(fields, &c.name, &mut |v| {
                    if v == c.stable_token {
                        assigned = Some(Assigned::Stable);
                    } else if c.canary_token.as_deref() == Some(v) {
                        assigned = Some(Assigned::Canary);
                    } else if c.baseline_token.as_deref() == Some(v) {
                        assigned = Some(Assigned::Baseline);
                    }
                    assigned.is_some()
                });
                assigned
            }
        }
    }

    /// The `Set-Cookie` the response to this request carries, if any: the
    /// backend the weighted split chose (`placed`) during
    /// a release, or the deletion of a cookie sent outside one.
    pub fn response_cookie(
        &self,
        request: &dyn Fields,
        placed: Option<Assigned>,
        weight_bp: u32,
        secure: bool,
    ) -> Option<&HeaderValue> {
        let Self::Cookie(c) = self else {
            return None;
        };
        if in_release(c.canary_token.is_some(), weight_bp) {
            placed.map(|backend| {
                let row = match backend {
                    Assigned::Stable => 0,
                    Assigned::Canary => 1,
                    Assigned::Baseline => 2,
                };
                &c.set[row][usize::from(secure)]
            })
        } else {
            cookies(request, &c.name, &mut |_| true).then(|| &c.clear[usize::from(secure)])
        }
    }
}

/// Calls `each` with the value of every cookie called `name` in the
/// request's `cookie` fields, until it returns true; whether one did.
pub fn cookies<'s>(
    fields: &'s dyn Fields,
    name: &str,
    each: &mut dyn FnMut(&'s str) -> bool,
) -> bool {
    fields.values("cookie", &mut |value| {
        let Ok(text) = std::str::from_utf8(value) else {
            return false;
        };
        text.split(';')
            .filter_map(|pair| pair.trim().split_once('='))
            .filter(|(k, _)| k.trim() == name)
            .any(|(_, v)| each(v.trim().trim_matches('"')))
    })
}

/// `role.<8 hex digits of the backend address's hash>`.
fn token(role: &str, url: &UpstreamUrl) -> String {
    let address = format!("{:?}://{}:{}", url.scheme, url.host, url.port);
    format!("{role}.{:08x}", fnv1a(address.as_bytes()) as u32)
}

/// FNV-1a, 64 bits.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The bucket (0..10,000) of a header value: FNV-1a, then a 64-bit mixing
/// finaliser so that similar ids spread evenly.
pub fn bucket(value: &[u8]) -> u32 {
    let mut h = fnv1a(value);
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    (h % u64::from(WEIGHT_SCALE_BP)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderMap;

    #[test]
    fn buckets_are_fixed_values_of_the_published_hash() {
        // FNV-1a 64 of the empty string and of "a" (the published test
        // vectors), so the assignment can never change between versions.
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert!(bucket(b"user-1") < WEIGHT_SCALE_BP);
    }

    #[test]
    fn buckets_spread_evenly_over_user_ids() {
        let mut per_tenth = [0u32; 10];
        for i in 0..100_000 {
            per_tenth[(bucket(format!("user-{i}").as_bytes()) / 1000) as usize] += 1;
        }
        for (tenth, n) in per_tenth.iter().enumerate() {
            assert!(
                (9_500..=10_500).contains(n),
                "tenth {tenth} has {n} of 100000"
            );
        }
    }

    fn url(port: u16) -> UpstreamUrl {
        UpstreamUrl::parse(&format!("http://127.0.0.1:{port}")).unwrap()
    }

    fn with_cookie(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            http::header::COOKIE,
            HeaderValue::from_str(&format!("other=1; app={value}")).unwrap(),
        );
        h
    }

    #[test]
    fn cookies_are_honoured_only_while_their_backend_is_in_the_route() {
        let rule = ValidAffinity::Cookie {
            name: "app".into(),
            max_age: Some(std::time::Duration::from_secs(3600)),
        };
        let a = Affinity::new(&rule, "/", &url(1), Some(&url(2)), None);
        let none = HeaderMap::new();
        let canary = a
            .response_cookie(&none, Some(Assigned::Canary), 1000, false)
            .unwrap();
        let canary = canary.to_str().unwrap();
        assert!(canary.starts_with("app=canary."), "{canary}");
        assert!(canary.contains("; Max-Age=3600; HttpOnly"), "{canary}");
        let secure = a
            .response_cookie(&none, Some(Assigned::Stable), 1000, true)
            .unwrap();
        assert!(secure.to_str().unwrap().ends_with("; Secure"));
        let canary_value = canary
            .split(';')
            .next()
            .unwrap()
            .strip_prefix("app=")
            .unwrap();
        let stable_value = a
            .response_cookie(&none, Some(Assigned::Stable), 1000, false)
            .unwrap();
        let stable_value = stable_value.to_str().unwrap();
        let stable_value = stable_value
            .split(';')
            .next()
            .unwrap()
            .strip_prefix("app=")
            .unwrap();
        assert_eq!(
            a.assigned(&with_cookie(canary_value), 1000),
            Some(Assigned::Canary)
        );
        assert_eq!(
            a.assigned(&with_cookie(stable_value), 1000),
            Some(Assigned::Stable)
        );
        // Weight 0 (rollback, end of a release): canary cookies lapse.
        assert_eq!(a.assigned(&with_cookie(canary_value), 0), None);
        // Weight 100%: the stable has left the route.
        assert_eq!(a.assigned(&with_cookie(stable_value), 10_000), None);
        // A cookie made for another canary address, or garbage.
        let other = Affinity::new(&rule, "/", &url(1), Some(&url(3)), None);
        assert_eq!(other.assigned(&with_cookie(canary_value), 1000), None);
        assert_eq!(a.assigned(&with_cookie("canary"), 1000), None);
        assert_eq!(a.assigned(&HeaderMap::new(), 1000), None);
        // Outside a release: nothing set, and a cookie sent is deleted.
        assert_eq!(
            a.response_cookie(&none, Some(Assigned::Stable), 0, false),
            None
        );
        let cleared =
            a.response_cookie(&with_cookie(canary_value), Some(Assigned::Stable), 0, false);
        assert_eq!(
            cleared.unwrap().to_str().unwrap(),
            "app=; Path=/; Max-Age=0; HttpOnly; SameSite=Lax"
        );
        // A client placed by an A/B rule gets no cookie.
        assert_eq!(a.response_cookie(&none, None, 1000, false), None);
    }

    #[test]
    fn a_baseline_arm_is_a_third_backend_for_cookies_and_hashed_headers() {
        let rule = ValidAffinity::Cookie {
            name: "app".into(),
            max_age: None,
        };
        let a = Affinity::new(&rule, "/", &url(1), Some(&url(2)), Some(&url(3)));
        let none = HeaderMap::new();
        let set = a
            .response_cookie(&none, Some(Assigned::Baseline), 1000, false)
            .unwrap();
        let value = set.to_str().unwrap().split(';').next().unwrap();
        let value = value.strip_prefix("app=").unwrap();
        assert!(value.starts_with("baseline."), "{value}");
        assert_eq!(
            a.assigned(&with_cookie(value), 1000),
            Some(Assigned::Baseline)
        );
        // The route's baseline removed (or moved): its cookies lapse.
        let without = Affinity::new(&rule, "/", &url(1), Some(&url(2)), None);
        assert_eq!(without.assigned(&with_cookie(value), 1000), None);
        let moved = Affinity::new(&rule, "/", &url(1), Some(&url(2)), Some(&url(4)));
        assert_eq!(moved.assigned(&with_cookie(value), 1000), None);

        let header = Affinity::Header {
            name: HeaderName::from_static("x-user"),
            baseline: true,
        };
        let mut counts = [0u32; 3];
        for i in 0..10_000 {
            let mut h = HeaderMap::new();
            h.insert("x-user", HeaderValue::from_str(&format!("u{i}")).unwrap());
            let id = format!("u{i}");
            let b = bucket(id.as_bytes());
            let got = header.assigned(&h, 2000).unwrap();
            let want = if b < 2000 {
                Assigned::Canary
            } else if b < 4000 {
                Assigned::Baseline
            } else {
                Assigned::Stable
            };
            assert_eq!(got, want, "bucket {b}");
            counts[got as usize] += 1;
        }
        for (arm, n) in [
            ("stable", counts[0]),
            ("canary", counts[1]),
            ("baseline", counts[2]),
        ] {
            let share = f64::from(n) / 10_000.0;
            let want = if arm == "stable" { 0.6 } else { 0.2 };
            assert!((share - want).abs() < 0.03, "{arm}: {share}");
        }
    }

    #[test]
    fn a_growing_weight_only_moves_hashed_users_towards_the_canary() {
        let a = Affinity::Header {
            name: HeaderName::from_static("x-user"),
            baseline: false,
        };
        let mut before: Vec<bool> = Vec::new();
        for w in [0u32, 500, 1000, 2500, 5000, 9000, 10_000] {
            let now: Vec<bool> = (0..2000)
                .map(|i| {
                    let mut h = HeaderMap::new();
                    h.insert("x-user", HeaderValue::from_str(&format!("u{i}")).unwrap());
                    a.assigned(&h, w) == Some(Assigned::Canary)
                })
                .collect();
            for (i, (was, is)) in before.iter().zip(&now).enumerate() {
                assert!(!*was || *is, "user u{i} moved back to stable at weight {w}");
            }
            let share = now.iter().filter(|c| **c).count() as f64 / 2000.0;
            assert!(
                (share - f64::from(w) / 10_000.0).abs() < 0.04,
                "w={w} share={share}"
            );
            before = now;
        }
    }
}
