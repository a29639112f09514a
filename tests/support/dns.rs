//! A tiny authoritative DNS server on UDP `127.0.0.1:0` for discovery tests:
//! SRV and A records the test sets and changes, answers with TTL 0, and
//! modes that fail the way real servers do (SERVFAIL, or silence).
//! Messages are encoded and decoded by hickory-proto.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::{A, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

/// How the server answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DnsMode {
    /// From its records: NXDOMAIN for a name it has none of.
    Answer,
    /// SERVFAIL to everything.
    ServFail,
    /// A queries get no answer at all (a lost packet, a timeout); the rest
    /// as `Answer`, so AAAA of a name with only A records is NODATA at once.
    DropA,
    /// SERVFAIL to A queries; the rest as `Answer`.
    ServFailA,
}

#[derive(Default)]
struct Zone {
    /// Lower-case names without the final dot.
    srv: HashMap<String, Vec<(u16, String)>>,
    a: HashMap<String, Vec<Ipv4Addr>>,
    mode: Option<DnsMode>,
}

pub struct Dns {
    pub addr: SocketAddr,
    /// A test server: a std mutex, never held across an await.
    zone: Arc<Mutex<Zone>>,
    queries: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Dns {
    pub async fn start() -> Dns {
        let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind dns");
        let addr = socket.local_addr().expect("dns address");
        let zone = Arc::new(Mutex::new(Zone::default()));
        let queries = Arc::new(AtomicUsize::new(0));
        let (z, q) = (Arc::clone(&zone), Arc::clone(&queries));
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            loop {
                let Ok((n, peer)) = socket.recv_from(&mut buf).await else {
                    continue;
                };
                let Ok(query) = Message::from_vec(&buf[..n]) else {
                    continue;
                };
                q.fetch_add(1, Ordering::SeqCst);
                let reply = answer(&z.lock().expect("zone lock"), &query);
                if let Some(Ok(bytes)) = reply.map(|r| r.to_vec()) {
                    let _ = socket.send_to(&bytes, peer).await;
                }
            }
        });
        Dns {
            addr,
            zone,
            queries,
            task,
        }
    }

    /// Sets the SRV records of `name`: (port, target) each.
    pub fn set_srv(&self, name: &str, records: &[(u16, &str)]) {
        let records = records.iter().map(|(p, t)| (*p, t.to_string())).collect();
        self.zone
            .lock()
            .expect("zone lock")
            .srv
            .insert(name.to_lowercase(), records);
    }

    /// Forgets `name`'s SRV records: NXDOMAIN from now on.
    pub fn remove_srv(&self, name: &str) {
        self.zone
            .lock()
            .expect("zone lock")
            .srv
            .remove(&name.to_lowercase());
    }

    pub fn set_a(&self, name: &str, ips: &[Ipv4Addr]) {
        self.zone
            .lock()
            .expect("zone lock")
            .a
            .insert(name.to_lowercase(), ips.to_vec());
    }

    pub fn set_mode(&self, mode: DnsMode) {
        self.zone.lock().expect("zone lock").mode = Some(mode);
    }

    /// Queries received so far.
    pub fn queries(&self) -> usize {
        self.queries.load(Ordering::SeqCst)
    }

    /// Stops answering: the port is closed.
    pub async fn stop(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

/// The reply to `query`, or none (the query is dropped).
fn answer(zone: &Zone, query: &Message) -> Option<Message> {
    let mut reply = Message::new();
    reply
        .set_id(query.id())
        .set_message_type(MessageType::Response)
        .set_op_code(query.op_code())
        .set_authoritative(true)
        .set_recursion_desired(query.recursion_desired())
        .set_recursion_available(true);
    let Some(q) = query.queries().first() else {
        reply.set_response_code(ResponseCode::FormErr);
        return Some(reply);
    };
    reply.add_query(q.clone());
    let is_a = q.query_type() == RecordType::A;
    match zone.mode {
        Some(DnsMode::ServFail) => {
            reply.set_response_code(ResponseCode::ServFail);
            return Some(reply);
        }
        Some(DnsMode::ServFailA) if is_a => {
            reply.set_response_code(ResponseCode::ServFail);
            return Some(reply);
        }
        Some(DnsMode::DropA) if is_a => return None,
        _ => {}
    }
    let name = q.name().to_ascii().trim_end_matches('.').to_lowercase();
    let owner = q.name().clone();
    let known = zone.srv.contains_key(&name) || zone.a.contains_key(&name);
    if !known {
        reply.set_response_code(ResponseCode::NXDomain);
        return Some(reply);
    }
    match q.query_type() {
        RecordType::SRV => {
            for (port, target) in zone.srv.get(&name).into_iter().flatten() {
                let target = Name::from_ascii(format!("{target}.")).expect("a target name");
                reply.add_answer(Record::from_rdata(
                    owner.clone(),
                    0,
                    RData::SRV(SRV::new(0, 0, *port, target)),
                ));
            }
        }
        RecordType::A => {
            for ip in zone.a.get(&name).into_iter().flatten() {
                reply.add_answer(Record::from_rdata(owner.clone(), 0, RData::A(A(*ip))));
            }
        }
        // Known name, no such records (AAAA included): NOERROR, empty.
        _ => {}
    }
    Some(reply)
}
