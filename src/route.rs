//! The routing table: which model serves a request, by the longest
//! `path_prefix` that matches on a segment boundary and, where a model names
//! one, its `host`. Knows nothing of pools or health.
//!
//! Ordering rule, decided once when the table is built: longer prefixes
//! first; for equal prefixes, a model that names the request's host comes
//! before one that accepts any host. `resolve` returns the first match, so
//! it borrows, allocates nothing and takes no lock.

/// A routing table from (host, path) to a value (a model in the proxy).
#[derive(Debug)]
pub struct RouteTable<T> {
    routes: Box<[Route<T>]>,
}

#[derive(Debug)]
struct Route<T> {
    /// Normalised by config: starts with `/`, no trailing `/` unless root.
    prefix: Box<str>,
    /// Lowercase, no port.
    host: Option<Box<str>>,
    value: T,
}

// === impl RouteTable ===

impl<T> RouteTable<T> {
    /// Builds the table from `(path_prefix, host, value)` entries.
    pub fn new<I>(entries: I) -> RouteTable<T>
    where
        I: IntoIterator<Item = (String, Option<String>, T)>,
    {
        let mut routes: Vec<Route<T>> = entries
            .into_iter()
            .map(|(prefix, host, value)| Route {
                prefix: prefix.into(),
                host: host.map(Into::into),
                value,
            })
            .collect();
        routes.sort_by(|a, b| {
            b.prefix
                .len()
                .cmp(&a.prefix.len())
                .then_with(|| b.host.is_some().cmp(&a.host.is_some()))
        });
        RouteTable {
            routes: routes.into(),
        }
    }

    /// The value for a request to `host` (as sent, port allowed) and `path`.
    pub fn resolve(&self, host: Option<&str>, path: &str) -> Option<&T> {
        let host = host.map(strip_port);
        self.routes
            .iter()
            .find(|r| {
                prefix_matches(&r.prefix, path)
                    && match (&r.host, host) {
                        (None, _) => true,
                        (Some(want), Some(got)) => want.eq_ignore_ascii_case(got),
                        (Some(_), None) => false,
                    }
            })
            .map(|r| &r.value)
    }

    pub fn len(&self) -> usize {
        self.routes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }
}

/// True when `prefix` covers `path` on a segment boundary: `/v2/iris` covers
/// `/v2/iris` and `/v2/iris/infer`, not `/v2/iris2`.
fn prefix_matches(prefix: &str, path: &str) -> bool {
    if prefix == "/" {
        return true;
    }
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

/// `example.com:8080` -> `example.com`; `[::1]:80` -> `[::1]`.
fn strip_port(host: &str) -> &str {
    match host.rfind(':') {
        Some(i)
            if !host[i..].contains(']') && host[i + 1..].bytes().all(|b| b.is_ascii_digit()) =>
        {
            &host[..i]
        }
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn table(entries: &[(&str, Option<&str>, &'static str)]) -> RouteTable<&'static str> {
        RouteTable::new(
            entries
                .iter()
                .map(|(p, h, v)| (p.to_string(), h.map(str::to_string), *v)),
        )
    }

    #[test]
    fn longest_prefix_wins() {
        let t = table(&[
            ("/", None, "root"),
            ("/v2/models/iris", None, "iris"),
            ("/v2/models", None, "models"),
        ]);
        assert_eq!(t.resolve(None, "/v2/models/iris/infer"), Some(&"iris"));
        assert_eq!(t.resolve(None, "/v2/models/iris"), Some(&"iris"));
        assert_eq!(t.resolve(None, "/v2/models/resnet/infer"), Some(&"models"));
        assert_eq!(t.resolve(None, "/healthz"), Some(&"root"));
    }

    #[test]
    fn prefixes_match_whole_segments() {
        let t = table(&[("/v2/models/iris", None, "iris")]);
        assert_eq!(t.resolve(None, "/v2/models/iris2/infer"), None);
        assert_eq!(t.resolve(None, "/v2/models"), None);
    }

    #[test]
    fn host_specific_routes_come_first_and_ignore_port_and_case() {
        let t = table(&[("/", None, "any"), ("/", Some("iris.example.com"), "iris")]);
        assert_eq!(
            t.resolve(Some("IRIS.example.com:8080"), "/x"),
            Some(&"iris")
        );
        assert_eq!(t.resolve(Some("other.example.com"), "/x"), Some(&"any"));
        assert_eq!(t.resolve(None, "/x"), Some(&"any"));
    }

    #[test]
    fn a_host_route_never_serves_other_hosts() {
        let t = table(&[("/", Some("iris.example.com"), "iris")]);
        assert_eq!(t.resolve(Some("evil.example.com"), "/"), None);
        assert_eq!(t.resolve(None, "/"), None);
    }

    #[test]
    fn ports_are_stripped_from_hosts() {
        assert_eq!(strip_port("a.example:80"), "a.example");
        assert_eq!(strip_port("a.example"), "a.example");
        assert_eq!(strip_port("[::1]:8080"), "[::1]");
        assert_eq!(strip_port("[::1]"), "[::1]");
    }

    proptest! {
        /// The resolved route is a matching route, and no matching route has
        /// a longer prefix.
        #[test]
        fn resolve_returns_the_longest_match(
            prefixes in prop::collection::btree_set("(/[a-c]{1,2}){1,3}", 1..8),
            path in "(/[a-c]{1,2}){0,4}",
        ) {
            let path = if path.is_empty() { "/".to_string() } else { path };
            let t = RouteTable::new(prefixes.iter().map(|p| (p.clone(), None, p.clone())));
            let best = prefixes
                .iter()
                .filter(|p| prefix_matches(p, &path))
                .max_by_key(|p| p.len());
            prop_assert_eq!(t.resolve(None, &path), best);
        }

        /// The same with hosts and the root prefix, against an oracle that
        /// shares no code with the table: segments instead of string
        /// prefixes, hosts compared after lowercasing and cutting the port.
        /// The winner is the route with the most prefix segments among those
        /// that match path and host; for equal prefixes, the one naming the
        /// host. (Config refuses two routes with the same prefix and host.)
        #[test]
        fn resolve_prefers_longest_prefix_then_host(
            routes in prop::collection::btree_set(
                ("/|(/[a-c]{1,2}){1,3}", prop::option::of("[ab]\\.example")),
                1..10,
            ),
            path in "(/[a-c]{1,2}){0,4}/?",
            host in prop::option::of("[aAbBcC]\\.(example|EXAMPLE)(:[0-9]{1,5})?"),
        ) {
            let path = if path.is_empty() { "/".to_string() } else { path };
            let t = RouteTable::new(routes.iter().map(|(p, h)| (p.clone(), h.clone(), (p.clone(), h.clone()))));
            let segments = |s: &str| -> Vec<String> {
                s.split('/').filter(|s| !s.is_empty()).map(str::to_string).collect()
            };
            let want_host = host.as_ref().map(|h| h.split(':').next().unwrap().to_ascii_lowercase());
            let path_segments = segments(&path);
            let best = routes
                .iter()
                .filter(|(p, h)| {
                    path_segments.starts_with(&segments(p))
                        && h.as_ref().is_none_or(|h| want_host.as_ref() == Some(h))
                })
                .max_by_key(|(p, h)| (segments(p).len(), h.is_some()));
            prop_assert_eq!(t.resolve(host.as_deref(), &path), best);
        }
    }
}
