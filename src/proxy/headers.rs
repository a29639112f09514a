//! Header rules for forwarding: hop-by-hop headers are dropped both ways,
//! `x-forwarded-*` and `x-request-id` are set on the way up, and
//! `x-switchyard-pool` on the way down.

use http::header::{self, Entry, HeaderMap, HeaderName, HeaderValue};

pub static X_SWITCHYARD_POOL: HeaderName = HeaderName::from_static("x-switchyard-pool");
pub static X_SWITCHYARD_FAILOVER: HeaderName = HeaderName::from_static("x-switchyard-failover");
/// On a response from a pool picked for preview (the preview listener, or
/// `x-switchyard-pool` on a request where the model allows it).
pub static X_SWITCHYARD_PREVIEW: HeaderName = HeaderName::from_static("x-switchyard-preview");
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");

/// Per connection: what the forwarded headers say about the client.
pub struct ClientInfo {
    /// The client's IP, as it goes into `x-forwarded-for`.
    pub ip: HeaderValue,
    /// `http` (or `https` once TLS terminates here).
    pub proto: HeaderValue,
    /// Came in on the preview listener: requests go to the standby pool.
    pub preview: bool,
}

/// Removes hop-by-hop headers (RFC 9110 7.6.1): `Connection` and every header
/// it names, `Keep-Alive`, `Proxy-*`, `Transfer-Encoding`, `Upgrade`, and
/// `TE` unless it asks for trailers (gRPC needs `te: trailers` end to end).
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Almost every request and response has none: one pass over the names
    // (a few enum compares each) instead of a hash lookup per rule.
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    if headers.contains_key(header::CONNECTION) {
        // Rare on the request path (HTTP/1.1 keep-alive is the default), so
        // the allocation of the named list does not matter.
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
        headers.remove(header::CONNECTION);
    }
    headers.remove(&KEEP_ALIVE);
    headers.remove(header::TRANSFER_ENCODING);
    headers.remove(header::UPGRADE);
    headers.remove(header::PROXY_AUTHENTICATE);
    headers.remove(header::PROXY_AUTHORIZATION);
    if headers.keys().any(|k| k.as_str().starts_with("proxy-")) {
        let proxy: Vec<HeaderName> = headers
            .keys()
            .filter(|k| k.as_str().starts_with("proxy-"))
            .cloned()
            .collect();
        for name in proxy {
            headers.remove(name);
        }
    }
    if let Some(te) = headers.get(header::TE) {
        let trailers = te
            .to_str()
            .map(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
            })
            .unwrap_or(false);
        if trailers {
            headers.insert(header::TE, HeaderValue::from_static("trailers"));
        } else {
            headers.remove(header::TE);
        }
    }
}

/// Whether `name` is hop-by-hop itself, or (`Connection`) names others.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    name == header::CONNECTION
        || name == header::TE
        || name == header::TRANSFER_ENCODING
        || name == header::UPGRADE
        || name == header::PROXY_AUTHENTICATE
        || name == header::PROXY_AUTHORIZATION
        || name == KEEP_ALIVE
        || name.as_str().starts_with("proxy-")
}

/// Prepares a client's request headers for the upstream. `host` is the
/// host the client addressed (its `Host` header or HTTP/2 authority).
pub fn prepare_request(headers: &mut HeaderMap, client: &ClientInfo, host: Option<HeaderValue>) {
    strip_hop_by_hop(headers);

    // Append to a chain the client brought, as every proxy in the path does.
    // (Entries: one hash lookup for the check and the write.)
    match headers.entry(X_FORWARDED_FOR.clone()) {
        Entry::Occupied(mut prior) => {
            // Several headers are one list (RFC 9110 5.3), joined in order.
            let mut v = Vec::new();
            for value in prior.iter() {
                v.extend_from_slice(value.as_bytes());
                v.extend_from_slice(b", ");
            }
            v.extend_from_slice(client.ip.as_bytes());
            prior.insert(HeaderValue::from_bytes(&v).unwrap_or_else(|_| client.ip.clone()));
        }
        Entry::Vacant(none) => {
            none.insert(client.ip.clone());
        }
    }
    // Overwritten, not appended: only this hop knows how the client connected.
    headers.insert(X_FORWARDED_PROTO.clone(), client.proto.clone());
    if let Some(host) = host {
        // HTTP/2 clients send :authority instead of Host; HTTP/1.1
        // upstreams get the same host the client addressed.
        headers.entry(header::HOST).or_insert_with(|| host.clone());
        headers.insert(X_FORWARDED_HOST.clone(), host);
    }
    headers
        .entry(X_REQUEST_ID.clone())
        .or_insert_with(new_request_id);
}

/// Prepares an upstream's response headers for the client.
pub fn prepare_response(headers: &mut HeaderMap, pool: &HeaderValue) {
    strip_hop_by_hop(headers);
    headers.insert(X_SWITCHYARD_POOL.clone(), pool.clone());
}

/// 128 random bits as 32 hex digits, formatted on the stack.
pub fn new_request_id() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut buf = [0u8; 32];
    let mut bits = fastrand::u128(..);
    for b in buf.iter_mut() {
        *b = HEX[(bits & 0xf) as usize];
        bits >>= 4;
    }
    HeaderValue::from_bytes(&buf).unwrap_or_else(|_| HeaderValue::from_static("0"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn client() -> ClientInfo {
        ClientInfo {
            ip: HeaderValue::from_static("10.1.2.3"),
            proto: HeaderValue::from_static("http"),
            preview: false,
        }
    }

    #[test]
    fn hop_by_hop_headers_are_dropped() {
        let mut h = map(&[
            ("connection", "close, x-secret"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("proxy-authorization", "Basic x"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("te", "gzip"),
            ("content-type", "application/json"),
        ]);
        strip_hop_by_hop(&mut h);
        let left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["content-type"]);
    }

    #[test]
    fn te_trailers_survives() {
        let mut h = map(&[("te", "trailers, deflate")]);
        strip_hop_by_hop(&mut h);
        assert_eq!(h.get("te").unwrap(), "trailers");
    }

    #[test]
    fn forwarded_headers_are_set() {
        let mut h = map(&[
            ("x-forwarded-for", "1.1.1.1"),
            ("x-forwarded-proto", "https"),
        ]);
        prepare_request(
            &mut h,
            &client(),
            Some(HeaderValue::from_static("iris.example")),
        );
        assert_eq!(h.get("x-forwarded-for").unwrap(), "1.1.1.1, 10.1.2.3");
        assert_eq!(h.get("x-forwarded-proto").unwrap(), "http");
        assert_eq!(h.get("x-forwarded-host").unwrap(), "iris.example");
        assert_eq!(h.get("host").unwrap(), "iris.example");
        assert_eq!(h.get("x-request-id").unwrap().len(), 32);
    }

    #[test]
    fn a_chain_in_several_headers_is_joined_in_order_and_a_host_kept() {
        let mut h = map(&[
            ("x-forwarded-for", "1.1.1.1"),
            ("x-forwarded-for", "2.2.2.2, 3.3.3.3"),
            ("host", "client.example"),
        ]);
        prepare_request(
            &mut h,
            &client(),
            Some(HeaderValue::from_static("iris.example")),
        );
        let chain: Vec<_> = h.get_all("x-forwarded-for").iter().collect();
        assert_eq!(chain, ["1.1.1.1, 2.2.2.2, 3.3.3.3, 10.1.2.3"]);
        assert_eq!(h.get("host").unwrap(), "client.example");
    }

    #[test]
    fn a_client_request_id_is_kept() {
        let mut h = map(&[("x-request-id", "abc")]);
        prepare_request(&mut h, &client(), None);
        assert_eq!(h.get("x-request-id").unwrap(), "abc");
        assert_eq!(h.get("x-forwarded-for").unwrap(), "10.1.2.3");
    }

    #[test]
    fn request_ids_differ_and_are_32_hex_digits() {
        assert_ne!(new_request_id(), new_request_id());
        let id = new_request_id();
        assert_eq!(id.len(), 32);
        assert!(id
            .as_bytes()
            .iter()
            .all(|b| b"0123456789abcdef".contains(b)));
    }
}
