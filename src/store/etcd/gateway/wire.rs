//! The JSON etcd's gateway reads and writes (grpc-gateway's mapping of
//! etcd's protobuf messages): 64-bit integers as strings, bytes as base64,
//! fields with a zero value left out. Only the fields switchyard reads.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use serde::{Deserialize, Deserializer};
use serde_json::Value;

use super::{GatewayError, KeyValue};

/// A 64-bit integer as the gateway writes it: a string of digits (or,
/// leniently, a number).
pub(super) fn int<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Int {
        Text(String),
        Number(u64),
    }
    match Int::deserialize(d)? {
        Int::Number(n) => Ok(n),
        Int::Text(s) => s.parse().map_err(serde::de::Error::custom),
    }
}

#[derive(Deserialize, Default)]
pub(super) struct Header {
    #[serde(default, deserialize_with = "int")]
    pub(super) revision: u64,
}

#[derive(Deserialize)]
pub(super) struct RawKv {
    #[serde(default)]
    pub(super) key: String,
    #[serde(default)]
    pub(super) value: String,
    #[serde(default, deserialize_with = "int")]
    pub(super) mod_revision: u64,
}

impl RawKv {
    pub(super) fn decode(self, endpoint: &str) -> Result<KeyValue, GatewayError> {
        let b64 = |what: &str, s: &str| {
            BASE64.decode(s).map_err(|e| GatewayError::Malformed {
                endpoint: endpoint.to_string(),
                detail: format!("{what} is not base64: {e}"),
            })
        };
        Ok(KeyValue {
            key: b64("a key", &self.key)?,
            value: b64("a value", &self.value)?,
            mod_revision: self.mod_revision,
        })
    }
}

#[derive(Deserialize)]
pub(super) struct RangeAnswer {
    #[serde(default)]
    pub(super) header: Header,
    #[serde(default)]
    pub(super) kvs: Vec<RawKv>,
}

#[derive(Deserialize)]
pub(super) struct TxnAnswer {
    #[serde(default)]
    pub(super) header: Header,
    /// Absent when false (the gateway leaves out zero values).
    #[serde(default)]
    pub(super) succeeded: bool,
    #[serde(default)]
    pub(super) responses: Vec<TxnOpAnswer>,
}

#[derive(Deserialize)]
pub(super) struct TxnOpAnswer {
    #[serde(default)]
    pub(super) response_range: Option<RangeAnswer>,
}

#[derive(Deserialize)]
pub(super) struct AuthAnswer {
    pub(super) token: String,
}

#[derive(Deserialize)]
pub(super) struct WatchLine {
    #[serde(default)]
    pub(super) result: Option<WatchResult>,
    #[serde(default)]
    pub(super) error: Option<Value>,
}

#[derive(Deserialize)]
pub(super) struct WatchResult {
    #[serde(default)]
    pub(super) header: Header,
    #[serde(default)]
    pub(super) created: bool,
    #[serde(default)]
    pub(super) canceled: bool,
    #[serde(default)]
    pub(super) cancel_reason: String,
    #[serde(default, deserialize_with = "int")]
    pub(super) compact_revision: u64,
    #[serde(default)]
    pub(super) events: Vec<WatchEvent>,
}

#[derive(Deserialize)]
pub(super) struct WatchEvent {
    /// `PUT` (left out: the zero value) or `DELETE`.
    #[serde(default, rename = "type")]
    pub(super) kind: String,
    pub(super) kv: RawKv,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Whatever a member sends as a watch line: an error or a message,
        /// never a panic.
        #[test]
        fn any_watch_line_reads_or_is_refused(line in prop::collection::vec(any::<u8>(), 0..256)) {
            if let Ok(message) = serde_json::from_slice::<WatchLine>(&line) {
                for event in message.result.map(|r| r.events).unwrap_or_default() {
                    let _ = event.kv.decode("e");
                }
            }
        }

        /// Keys and values of any bytes survive the base64 the gateway uses.
        #[test]
        fn keys_and_values_round_trip(key in prop::collection::vec(any::<u8>(), 0..64), value in prop::collection::vec(any::<u8>(), 0..64)) {
            let json = serde_json::json!({
                "key": BASE64.encode(&key),
                "value": BASE64.encode(&value),
                "mod_revision": "42",
            });
            let kv: RawKv = serde_json::from_value(json).unwrap();
            let kv = kv.decode("e").unwrap();
            prop_assert_eq!((kv.key, kv.value, kv.mod_revision), (key, value, 42));
        }
    }

    #[test]
    fn gateway_json_reads_as_etcd_3_4_writes_it() {
        // As etcd 3.4.23 answered (revisions as strings, zero values left out).
        let txn: TxnAnswer = serde_json::from_str(r#"{"header":{"cluster_id":"324952591200643719","member_id":"3319814642761637952","revision":"3","raft_term":"2"},"responses":[{"response_range":{"header":{"revision":"3"},"kvs":[{"key":"Zm9v","create_revision":"2","mod_revision":"3","version":"2","value":"YmF6"}],"count":"1"}}]}"#).unwrap();
        assert!(!txn.succeeded);
        assert_eq!(txn.header.revision, 3);
        let kv = txn
            .responses
            .into_iter()
            .next()
            .unwrap()
            .response_range
            .unwrap()
            .kvs
            .remove(0);
        let kv = kv.decode("e").unwrap();
        assert_eq!(
            (kv.key.as_slice(), kv.value.as_slice(), kv.mod_revision),
            (&b"foo"[..], &b"baz"[..], 3)
        );

        let line: WatchLine = serde_json::from_str(r#"{"result":{"header":{"revision":"5"},"events":[{"kv":{"key":"c3kvYQ==","create_revision":"5","mod_revision":"5","version":"1","value":"MQ=="}},{"type":"DELETE","kv":{"key":"c3kvYg==","mod_revision":"6"}}]}}"#).unwrap();
        let result = line.result.unwrap();
        assert_eq!(result.header.revision, 5);
        assert_eq!(result.events[1].kind, "DELETE");
        assert!(int(serde_json::Value::from(7)).is_ok());
    }
}
