//! The split: the share of a model's new requests that goes to its standby
//! pool, and how one request is picked for it. [`Routing`] is the value a
//! model's `ArcSwap` holds, so one load gives a request both the active
//! pool and the split.
//!
//! **The pick.** Without a split it is the active pool: one branch more
//! than a plain load. With one, each request takes a bucket in 0..1000
//! and goes to the standby when the bucket is below the split's permille:
//! - *sticky* (the model's `sticky` header or cookie is on the request):
//!   the bucket is FNV-1a 64 of the value, mod 1000. The same user always
//!   lands in the same bucket, on every instance and after every restart,
//!   and a bucket below 100 (10 %) is below 250 (25 %): a user sent to the
//!   new pool stays there as the weight rises (monotone by construction).
//! - *otherwise* the bucket is the next term of a per-thread Weyl sequence
//!   of the golden ratio (`n * 0x9E3779B97F4A7C15`, the top bits): a
//!   counter, not a random draw, so over any run of requests the share
//!   sent to the standby is the weight within a few requests, and any
//!   regular sub-sequence of a thread's requests (every other one, one in
//!   ten) is spread as evenly. No lock, no shared cache line, no allocation.

use std::cell::Cell;
use std::sync::Arc;

use http::header::COOKIE;
use http::HeaderMap;
use serde::{Deserialize, Serialize};

use crate::config::{Percent, Sticky, PERMILLE};
use crate::pool::{Pool, PoolName};

/// A share of new requests sent to a model's standby pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawSplit")]
pub struct Split {
    /// The pool that takes the share: always the standby.
    pub pool: PoolName,
    /// Tenths of a percent of new requests, 1 to 1000.
    pub permille: u16,
}

/// A split as read from a state file or etcd, before its range is checked.
#[derive(Deserialize)]
struct RawSplit {
    pool: PoolName,
    permille: u16,
}

impl TryFrom<RawSplit> for Split {
    type Error = String;

    fn try_from(raw: RawSplit) -> Result<Split, String> {
        if (1..=PERMILLE).contains(&raw.permille) {
            Ok(Split {
                pool: raw.pool,
                permille: raw.permille,
            })
        } else {
            Err(format!(
                "split permille {} is out of range; expected 1 to 1000",
                raw.permille
            ))
        }
    }
}

// === impl Split ===

impl Split {
    /// `permille` of new requests to `pool`; `None` for none at all.
    pub fn new(pool: PoolName, permille: u16) -> Option<Split> {
        (permille > 0).then(|| Split {
            pool,
            permille: permille.min(PERMILLE),
        })
    }

    /// The share in percent, for people and the admin API.
    pub fn percent(self) -> f64 {
        f64::from(self.permille) / 10.0
    }
}

impl std::fmt::Display for Split {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} to {}", Percent(self.permille), self.pool)
    }
}

/// What a request reads of its model's switch state, in one `ArcSwap`
/// load: the active pool and, with a split, the standby and its share.
pub struct Routing {
    active: Arc<Pool>,
    /// The standby and its permille, 1 to 1000.
    split: Option<(Arc<Pool>, u16)>,
}

// === impl Routing ===

impl Routing {
    /// `active` serving, and `split` of new requests to `standby`. A split
    /// naming the active pool (a hand-edited state) is no split.
    pub fn new(active: Arc<Pool>, standby: Arc<Pool>, split: Option<Split>) -> Routing {
        let split = split
            .filter(|s| s.pool == standby.name() && s.pool != active.name())
            .map(|s| (standby, s.permille));
        Routing { active, split }
    }

    pub fn active(&self) -> &Arc<Pool> {
        &self.active
    }

    /// The split as it is served.
    pub fn split(&self) -> Option<Split> {
        self.split
            .as_ref()
            .and_then(|(pool, permille)| Split::new(pool.name(), *permille))
    }

    /// The pool for one request with `headers`: see the module docs.
    #[inline]
    pub fn pick(&self, sticky: Option<&Sticky>, headers: &HeaderMap) -> &Arc<Pool> {
        let Some((standby, permille)) = &self.split else {
            return &self.active;
        };
        let bucket = match sticky.and_then(|s| sticky_key(s, headers)) {
            Some(key) => sticky_bucket(key),
            None => next_bucket(),
        };
        if bucket < *permille {
            standby
        } else {
            &self.active
        }
    }
}

/// The value of the sticky header or cookie on a request, if it has a
/// non-empty one. Cookies are read from every `Cookie` header (HTTP/2
/// may send several), without copying.
pub fn sticky_key<'a>(sticky: &Sticky, headers: &'a HeaderMap) -> Option<&'a [u8]> {
    match sticky {
        Sticky::Header(name) => headers
            .get(name)
            .map(|v| v.as_bytes())
            .filter(|v| !v.is_empty()),
        Sticky::Cookie(name) => headers.get_all(COOKIE).iter().find_map(|value| {
            value.as_bytes().split(|b| *b == b';').find_map(|pair| {
                let pair = pair.trim_ascii();
                let eq = pair.iter().position(|b| *b == b'=')?;
                let (key, value) = (&pair[..eq], &pair[eq + 1..]);
                (key == name.as_bytes() && !value.is_empty()).then_some(value)
            })
        }),
    }
}

/// FNV-1a, 64 bits: small, fixed and documented, so a value's bucket is
/// the same on every instance, every version and after every restart.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes
        .iter()
        .fold(OFFSET, |h, b| (h ^ u64::from(*b)).wrapping_mul(PRIME))
}

/// A sticky value's bucket, 0 to 999.
pub fn sticky_bucket(key: &[u8]) -> u16 {
    // The remainder is below 1000.
    (fnv1a(key) % u64::from(PERMILLE)) as u16
}

thread_local! {
    // `const` init: no lazy initialisation and no destructor, so each
    // access is a plain thread-local read.
    static DRAWS: Cell<u64> = const { Cell::new(0) };
}

/// The next bucket, 0 to 999, of this thread's Weyl sequence.
fn next_bucket() -> u16 {
    let n = DRAWS.with(|d| {
        let n = d.get();
        d.set(n.wrapping_add(1));
        n
    });
    weyl_bucket(n)
}

/// The `n`th term of the golden ratio's Weyl sequence, `frac(n * phi)`,
/// scaled to 0..1000.
fn weyl_bucket(n: u64) -> u16 {
    // 2^64 / phi: `n * GOLDEN mod 2^64` is `frac(n / phi) * 2^64`, and
    // frac(n / phi) = frac(n * phi) since phi = 1 + 1 / phi.
    const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;
    let x = n.wrapping_mul(GOLDEN);
    // The high 64 bits of x * 1000 are below 1000.
    ((u128::from(x) * u128::from(PERMILLE)) >> 64) as u16
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn share(buckets: impl Iterator<Item = u16>, permille: u16) -> usize {
        buckets.filter(|b| *b < permille).count()
    }

    #[test]
    fn the_weyl_sequence_gives_the_weight_within_a_few_requests() {
        for permille in [1, 50, 100, 250, 500, 999] {
            for start in [0u64, 7, 1 << 40] {
                let n = share((start..start + 2000).map(weyl_bucket), permille);
                let want = 2 * usize::from(permille);
                assert!(
                    n.abs_diff(want) <= 3,
                    "{permille}‰ from {start}: {n} of 2000, want {want}"
                );
            }
        }
        // Every other term, and one in ten: as even.
        let every_other = share((0..4000).step_by(2).map(weyl_bucket), 100);
        assert!(every_other.abs_diff(200) <= 3, "{every_other}");
        let one_in_ten = share((3..20003).step_by(10).map(weyl_bucket), 100);
        assert!(one_in_ten.abs_diff(200) <= 3, "{one_in_ten}");
        assert_eq!(share((0..1000).map(weyl_bucket), 1000), 1000);
        assert_eq!(share((0..1000).map(weyl_bucket), 0), 0);
    }

    #[test]
    fn fnv1a_is_the_published_function() {
        // Test vectors of FNV-1a 64 (Fowler, Noll, Vo).
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(b"foobar"), 0x8594_4171_f739_67e8);
        assert_eq!(
            sticky_bucket(b"foobar"),
            (0x8594_4171_f739_67e8u64 % 1000) as u16
        );
    }

    #[test]
    fn a_user_on_the_new_pool_stays_there_as_the_weight_rises() {
        let users: Vec<String> = (0..1000).map(|i| format!("user-{i}")).collect();
        let on_new = |permille: u16| -> Vec<bool> {
            users
                .iter()
                .map(|u| sticky_bucket(u.as_bytes()) < permille)
                .collect()
        };
        let (ten, quarter, half) = (on_new(100), on_new(250), on_new(500));
        for i in 0..users.len() {
            assert!(!ten[i] || quarter[i], "{} left at 25%", users[i]);
            assert!(!quarter[i] || half[i], "{} left at 50%", users[i]);
        }
        let count = |v: &[bool]| v.iter().filter(|b| **b).count();
        // The share of users follows the weight (hashing, not exact).
        assert!((50..=150).contains(&count(&ten)), "{}", count(&ten));
        assert!((420..=580).contains(&count(&half)), "{}", count(&half));
    }

    #[test]
    fn the_sticky_value_is_read_from_a_header_or_a_cookie() {
        let mut h = HeaderMap::new();
        let header = Sticky::Header(http::HeaderName::from_static("x-user-id"));
        let cookie = Sticky::Cookie("session".to_string());
        assert_eq!(sticky_key(&header, &h), None);
        h.insert("x-user-id", HeaderValue::from_static("u1"));
        assert_eq!(sticky_key(&header, &h), Some(&b"u1"[..]));
        h.insert("x-user-id", HeaderValue::from_static(""));
        assert_eq!(sticky_key(&header, &h), None, "an empty value is none");

        assert_eq!(sticky_key(&cookie, &h), None);
        h.append(COOKIE, HeaderValue::from_static("theme=dark; sessionx=no"));
        assert_eq!(sticky_key(&cookie, &h), None);
        h.append(COOKIE, HeaderValue::from_static("a=1;session=abc ; b=2"));
        assert_eq!(sticky_key(&cookie, &h), Some(&b"abc"[..]));
        let mut one = HeaderMap::new();
        one.insert(COOKIE, HeaderValue::from_static("session=xyz"));
        assert_eq!(sticky_key(&cookie, &one), Some(&b"xyz"[..]));
    }

    #[test]
    fn a_split_out_of_range_does_not_load() {
        let ok: Split = serde_json::from_str(r#"{"pool":"green","permille":1000}"#).unwrap();
        assert_eq!(ok.percent(), 100.0);
        for bad in [0, 1001, 5000] {
            let text = format!(r#"{{"pool":"green","permille":{bad}}}"#);
            assert!(serde_json::from_str::<Split>(&text).is_err(), "{text}");
        }
        assert_eq!(Split::new(PoolName::Green, 0), None);
        assert_eq!(
            Split::new(PoolName::Green, 25).unwrap().to_string(),
            "2.5% to green"
        );
    }
}
