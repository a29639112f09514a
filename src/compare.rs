//! Comparing two model answers: JSON values equal up to a relative numeric
//! tolerance, with some fields ignored. Shared by validation ("same as the
//! active pool") and shadow traffic (live answer against the standby's).
//!
//! Sans-io and allocation-light: it walks both values side by side and stops
//! at the first difference, which it names by its JSON pointer.

use serde_json::Value;

/// How two answers are compared.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Tolerance {
    /// Two numbers agree when `|a - b| <= relative * max(|a|, |b|)`; 0 means
    /// exactly equal. Integers and floats compare by value (`1` == `1.0`).
    pub relative: f64,
    /// JSON pointers (RFC 6901) whose values are not compared, such as
    /// `/id` or `/model_version`; the whole subtree under each is skipped.
    pub ignore: Vec<String>,
}

/// Where two answers first differ, and how.
#[derive(Debug, Clone, PartialEq)]
pub struct Difference {
    /// JSON pointer to the differing value; `""` is the whole document.
    pub pointer: String,
    pub what: String,
}

impl std::fmt::Display for Difference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let at = if self.pointer.is_empty() {
            "the document"
        } else {
            &self.pointer
        };
        write!(f, "at {at}: {}", self.what)
    }
}

// === impl Tolerance ===

impl Tolerance {
    /// `Ok(())` when `left` and `right` agree, else the first difference.
    pub fn compare(&self, left: &Value, right: &Value) -> Result<(), Difference> {
        let mut pointer = String::new();
        self.walk(left, right, &mut pointer)
            .map_err(|what| Difference { pointer, what })
    }

    /// Whether two numbers agree within the relative tolerance.
    pub fn numbers_agree(&self, a: f64, b: f64) -> bool {
        if a == b {
            return true;
        }
        let scale = a.abs().max(b.abs());
        (a - b).abs() <= self.relative * scale
    }

    /// On a difference, `pointer` is left naming it.
    fn walk(&self, left: &Value, right: &Value, pointer: &mut String) -> Result<(), String> {
        if self.ignore.iter().any(|p| p == pointer) {
            return Ok(());
        }
        match (left, right) {
            (Value::Number(a), Value::Number(b)) => {
                // Two integers are compared exactly when no tolerance is
                // set: beyond 2^53 they lose precision as f64.
                let integers = (a.is_i64() || a.is_u64()) && (b.is_i64() || b.is_u64());
                let agree = if a == b {
                    true
                } else if integers && self.relative == 0.0 {
                    false
                } else {
                    match (a.as_f64(), b.as_f64()) {
                        (Some(x), Some(y)) => self.numbers_agree(x, y),
                        _ => false,
                    }
                };
                if agree {
                    Ok(())
                } else {
                    Err(format!("{a} against {b}"))
                }
            }
            (Value::Object(a), Value::Object(b)) => {
                for (key, av) in a {
                    let len = pointer.len();
                    push_token(pointer, key);
                    match b.get(key) {
                        Some(bv) => self.walk(av, bv, pointer)?,
                        None if self.ignore.iter().any(|p| p == pointer) => {}
                        None => return Err("only on the left".to_string()),
                    }
                    pointer.truncate(len);
                }
                for key in b.keys().filter(|k| !a.contains_key(*k)) {
                    let len = pointer.len();
                    push_token(pointer, key);
                    if !self.ignore.iter().any(|p| p == pointer) {
                        return Err("only on the right".to_string());
                    }
                    pointer.truncate(len);
                }
                Ok(())
            }
            (Value::Array(a), Value::Array(b)) => {
                if a.len() != b.len() {
                    return Err(format!("{} items against {}", a.len(), b.len()));
                }
                for (i, (av, bv)) in a.iter().zip(b).enumerate() {
                    let len = pointer.len();
                    pointer.push('/');
                    pointer.push_str(&i.to_string());
                    self.walk(av, bv, pointer)?;
                    pointer.truncate(len);
                }
                Ok(())
            }
            (a, b) if a == b => Ok(()),
            (a, b) => Err(format!("{} against {}", brief(a), brief(b))),
        }
    }
}

/// Appends `/key` to a JSON pointer, escaping `~` and `/` as RFC 6901 says.
fn push_token(pointer: &mut String, key: &str) {
    pointer.push('/');
    for c in key.chars() {
        match c {
            '~' => pointer.push_str("~0"),
            '/' => pointer.push_str("~1"),
            c => pointer.push(c),
        }
    }
}

/// A value as shown in a difference: scalars whole, containers by kind.
fn brief(v: &Value) -> String {
    match v {
        Value::Object(_) => "an object".to_string(),
        Value::Array(_) => "an array".to_string(),
        Value::String(s) if s.len() > 64 => {
            let cut = (0..=64).rev().find(|i| s.is_char_boundary(*i)).unwrap_or(0);
            format!("{:?}...", &s[..cut])
        }
        v => v.to_string(),
    }
}

/// Checks a JSON pointer as written in a config: empty, or `/`-separated
/// tokens where `~` is only followed by `0` or `1`.
pub fn check_pointer(pointer: &str) -> Result<(), String> {
    if !pointer.is_empty() && !pointer.starts_with('/') {
        return Err(format!(
            "{pointer:?} is not a JSON pointer; it must start with \"/\", such as \"/id\""
        ));
    }
    let mut chars = pointer.chars();
    while let Some(c) = chars.next() {
        if c == '~' && !matches!(chars.next(), Some('0' | '1')) {
            return Err(format!(
                "{pointer:?} is not a JSON pointer: \"~\" must be followed by 0 or 1"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn tol(relative: f64, ignore: &[&str]) -> Tolerance {
        Tolerance {
            relative,
            ignore: ignore.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn equal_documents_agree() {
        let v = json!({"outputs": [{"name": "p", "data": [0.1, 2, "x", null, true]}]});
        assert_eq!(tol(0.0, &[]).compare(&v, &v.clone()), Ok(()));
    }

    #[test]
    fn numbers_agree_within_the_relative_tolerance() {
        let t = tol(0.01, &[]);
        assert!(t.compare(&json!([100.0]), &json!([100.9])).is_ok());
        let d = t.compare(&json!([100.0]), &json!([102])).unwrap_err();
        assert_eq!(d.pointer, "/0");
        assert!(t.compare(&json!(1), &json!(1.0)).is_ok());
        // Zero tolerance: exactly equal only.
        assert!(tol(0.0, &[])
            .compare(&json!(0.5), &json!(0.5000001))
            .is_err());
        // Big integers are compared exactly, not through f64.
        let big = 9_007_199_254_740_993_i64;
        assert!(tol(0.0, &[]).compare(&json!(big), &json!(big - 1)).is_err());
    }

    #[test]
    fn the_first_difference_is_named_by_its_pointer() {
        let t = tol(0.0, &[]);
        let a = json!({"outputs": [{"data": [1, 2]}], "a/b": {"c~d": 1}});
        let b = json!({"outputs": [{"data": [1, 3]}], "a/b": {"c~d": 1}});
        assert_eq!(t.compare(&a, &b).unwrap_err().pointer, "/outputs/0/data/1");
        let b = json!({"outputs": [{"data": [1, 2]}], "a/b": {"c~d": 2}});
        assert_eq!(t.compare(&a, &b).unwrap_err().pointer, "/a~1b/c~0d");
        let d = t
            .compare(&json!({"x": 1}), &json!({"x": 1, "y": 2}))
            .unwrap_err();
        assert_eq!(
            (d.pointer.as_str(), d.what.as_str()),
            ("/y", "only on the right")
        );
        let d = t.compare(&json!([1]), &json!([1, 2])).unwrap_err();
        assert_eq!(d.pointer, "");
        assert!(d.to_string().contains("1 items against 2"), "{d}");
        let d = t.compare(&json!("a"), &json!(1)).unwrap_err();
        assert_eq!(d.what, "\"a\" against 1");
    }

    #[test]
    fn ignored_fields_are_skipped_present_or_not() {
        let t = tol(0.0, &["/id", "/model_version", "/outputs/0/meta"]);
        let a = json!({"id": "a1", "model_version": "1", "outputs": [{"meta": {"t": 1}, "v": 1}]});
        let b = json!({"id": "b2", "outputs": [{"meta": 5, "v": 1}]});
        assert_eq!(t.compare(&a, &b), Ok(()));
        assert_eq!(t.compare(&b, &a), Ok(()));
        let c = json!({"id": "b2", "outputs": [{"meta": 5, "v": 2}]});
        assert_eq!(t.compare(&a, &c).unwrap_err().pointer, "/outputs/0/v");
    }

    #[test]
    fn pointers_in_config_are_checked() {
        assert!(check_pointer("/id").is_ok());
        assert!(check_pointer("").is_ok());
        assert!(check_pointer("/a~0b~1c").is_ok());
        assert!(check_pointer("id").is_err());
        assert!(check_pointer("/a~2").is_err());
        assert!(check_pointer("/a~").is_err());
    }

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            (-1e6f64..1e6).prop_map(|f| json!(f)),
            "[a-z~/]{0,4}".prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map("[a-z~/]{1,3}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        /// Agreement is symmetric, every value agrees with itself, and a
        /// reported pointer resolves in at least one of the two documents.
        #[test]
        fn comparison_is_symmetric_and_pointers_resolve(a in json_value(), b in json_value()) {
            let t = tol(0.0, &[]);
            prop_assert_eq!(t.compare(&a, &a), Ok(()));
            let ab = t.compare(&a, &b);
            prop_assert_eq!(ab.is_ok(), t.compare(&b, &a).is_ok());
            prop_assert_eq!(ab.is_ok(), a == b);
            if let Err(d) = ab {
                prop_assert!(a.pointer(&d.pointer).is_some() || b.pointer(&d.pointer).is_some(), "{}", d);
            }
        }
    }
}
