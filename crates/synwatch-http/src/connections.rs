//! The table of open connections, and the admission rule that keeps one client from locking
//! everybody else out.
//!
//! Every accepted connection is entered here with its client (an IPv4 address, or an IPv6
//! /64, which is what one host or one customer usually holds) and its phase: waiting for its
//! first request head (a TLS handshake counts as waiting), inside a request, or idle between
//! keep-alive requests. Admission of a new connection, as production servers do it:
//!
//! * a client at its cap (`max_connections_per_client`) gets room by shedding its **own**
//!   oldest connection that is not inside a request; a client whose every connection is busy
//!   inside a request is refused;
//! * a full server (`max_connections`) sheds the oldest connection of anybody's that has not
//!   finished a request head, then the longest-idle keep-alive one; only when every open
//!   connection is inside a request is the newcomer refused.
//!
//! So a flood of half-sent request heads from one address holds at most that client's cap of
//! slots, a flood spread over many addresses only ever displaces other unfinished heads, and a
//! scrape that has sent its head is never cut off for a newcomer. The table does no I/O: a
//! shed connection's task is told through its [`Notify`] and closes its socket itself.
//!
//! Hand-written rather than taken from a crate: tower's limit layers and hyper-util count
//! connections but cannot pick a victim by phase and client, which is the whole point here.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;
use tokio::sync::Notify;

/// The unit a per-client cap counts: an IPv4 address or an IPv6 /64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClientKey {
    /// One IPv4 address.
    V4(u32),
    /// The upper 64 bits of an IPv6 address.
    V6(u64),
}

impl ClientKey {
    /// The key of a peer address (IPv4-mapped IPv6 addresses count as their IPv4 address).
    pub fn of(peer: IpAddr) -> ClientKey {
        match peer.to_canonical() {
            IpAddr::V4(v4) => ClientKey::V4(u32::from(v4)),
            IpAddr::V6(v6) => ClientKey::V6((u128::from(v6) >> 64) as u64),
        }
    }
}

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Accepted, no complete request head yet (or still in its TLS handshake).
    AwaitingHead,
    /// This many requests are being answered.
    InRequest(u32),
    /// Between keep-alive requests.
    Idle,
}

#[derive(Debug)]
struct Entry {
    client: ClientKey,
    phase: Phase,
    /// When the connection entered its current phase.
    since: Instant,
    shed: Arc<Notify>,
}

/// Why a connection was shed or refused (the label of the drop counter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// An older connection of the same client was closed to make room.
    ShedForClient,
    /// An older connection of another client was closed because the server was full.
    ShedForServer,
    /// The new connection was refused: its client's connections are all inside requests.
    RefusedClientLimit,
    /// The new connection was refused: every connection is inside a request.
    RefusedServerFull,
    /// A request head was larger than the limit (answered 431).
    HeadTooLarge,
}

impl DropReason {
    /// Every reason, in label order.
    pub const ALL: [DropReason; 5] = [
        DropReason::ShedForClient,
        DropReason::ShedForServer,
        DropReason::RefusedClientLimit,
        DropReason::RefusedServerFull,
        DropReason::HeadTooLarge,
    ];

    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            DropReason::ShedForClient => "shed_client_limit",
            DropReason::ShedForServer => "shed_server_full",
            DropReason::RefusedClientLimit => "refused_client_limit",
            DropReason::RefusedServerFull => "refused_server_full",
            DropReason::HeadTooLarge => "head_too_large",
        }
    }
}

/// The outcome of [`ConnectionTable::admit`].
#[derive(Debug)]
pub enum Admission {
    /// Admitted; the connections shed to make room (already removed from the table and told).
    Admitted { id: u64, shed: Arc<Notify>, displaced: Vec<DropReason> },
    /// Refused, for this reason.
    Refused(DropReason),
}

#[derive(Debug, Default)]
struct Inner {
    next_id: u64,
    entries: HashMap<u64, Entry>,
    per_client: HashMap<ClientKey, usize>,
}

impl Inner {
    fn remove(&mut self, id: u64) -> Option<Entry> {
        let entry = self.entries.remove(&id)?;
        if let Some(count) = self.per_client.get_mut(&entry.client) {
            *count -= 1;
            if *count == 0 {
                self.per_client.remove(&entry.client);
            }
        }
        Some(entry)
    }

    /// The connection to shed first among those `eligible`: never one inside a request;
    /// unfinished heads before idle keep-alives, oldest first within each.
    fn victim(&self, eligible: impl Fn(&Entry) -> bool) -> Option<u64> {
        self.entries
            .iter()
            .filter(|(_, entry)| eligible(entry))
            .filter_map(|(id, entry)| match entry.phase {
                Phase::AwaitingHead => Some(((0u8, entry.since), *id)),
                Phase::Idle => Some(((1u8, entry.since), *id)),
                Phase::InRequest(_) => None,
            })
            .min()
            .map(|(_, id)| id)
    }

    fn shed(&mut self, id: u64) {
        if let Some(entry) = self.remove(id) {
            entry.shed.notify_one();
        }
    }
}

/// The open connections (see the module documentation).
#[derive(Debug)]
pub struct ConnectionTable {
    max_connections: usize,
    max_per_client: usize,
    inner: Mutex<Inner>,
}

impl ConnectionTable {
    /// A table admitting at most `max_connections` at once, `max_per_client` of one client.
    pub fn new(max_connections: usize, max_per_client: usize) -> ConnectionTable {
        ConnectionTable {
            max_connections: max_connections.max(1),
            max_per_client: max_per_client.max(1),
            inner: Mutex::new(Inner::default()),
        }
    }

    /// Admits a connection from `peer` at `now`, shedding others as the rule says.
    pub fn admit(&self, peer: IpAddr, now: Instant) -> Admission {
        let client = ClientKey::of(peer);
        let mut inner = self.inner.lock();
        let mut displaced = Vec::new();
        if inner.per_client.get(&client).copied().unwrap_or(0) >= self.max_per_client {
            match inner.victim(|entry| entry.client == client) {
                Some(id) => {
                    inner.shed(id);
                    displaced.push(DropReason::ShedForClient);
                }
                None => return Admission::Refused(DropReason::RefusedClientLimit),
            }
        }
        if inner.entries.len() >= self.max_connections {
            match inner.victim(|_| true) {
                Some(id) => {
                    inner.shed(id);
                    displaced.push(DropReason::ShedForServer);
                }
                None => return Admission::Refused(DropReason::RefusedServerFull),
            }
        }
        let id = inner.next_id;
        inner.next_id += 1;
        let shed = Arc::new(Notify::new());
        inner.entries.insert(id, Entry { client, phase: Phase::AwaitingHead, since: now, shed: Arc::clone(&shed) });
        *inner.per_client.entry(client).or_insert(0) += 1;
        Admission::Admitted { id, shed, displaced }
    }

    /// A request head of connection `id` was read: it is inside a request and safe from shedding.
    pub fn request_started(&self, id: u64) {
        if let Some(entry) = self.inner.lock().entries.get_mut(&id) {
            entry.phase = match entry.phase {
                Phase::InRequest(count) => Phase::InRequest(count + 1),
                Phase::AwaitingHead | Phase::Idle => Phase::InRequest(1),
            };
        }
    }

    /// A request of connection `id` was answered at `now`.
    pub fn request_finished(&self, id: u64, now: Instant) {
        if let Some(entry) = self.inner.lock().entries.get_mut(&id) {
            entry.phase = match entry.phase {
                Phase::InRequest(count) if count > 1 => Phase::InRequest(count - 1),
                _ => {
                    entry.since = now;
                    Phase::Idle
                }
            };
        }
    }

    /// Connection `id` closed (idempotent: a shed connection is already gone).
    pub fn closed(&self, id: u64) {
        self.inner.lock().remove(id);
    }

    /// Open connections (all clients).
    pub fn len(&self) -> usize {
        self.inner.lock().entries.len()
    }

    /// Whether no connection is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Open connections of the client of `peer`.
    pub fn of_client(&self, peer: IpAddr) -> usize {
        self.inner.lock().per_client.get(&ClientKey::of(peer)).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn admitted(admission: Admission) -> (u64, Vec<DropReason>) {
        match admission {
            Admission::Admitted { id, displaced, .. } => (id, displaced),
            Admission::Refused(reason) => panic!("refused: {reason:?}"),
        }
    }

    #[test]
    fn client_keys_group_ipv6_by_64_and_map_ipv4_mapped_addresses() {
        assert_eq!(ClientKey::of(ip("2001:db8:1:2::1")), ClientKey::of(ip("2001:db8:1:2:ffff::9")));
        assert_ne!(ClientKey::of(ip("2001:db8:1:2::1")), ClientKey::of(ip("2001:db8:1:3::1")));
        assert_eq!(ClientKey::of(ip("::ffff:192.0.2.1")), ClientKey::of(ip("192.0.2.1")));
        assert_ne!(ClientKey::of(ip("192.0.2.1")), ClientKey::of(ip("192.0.2.2")));
        assert_ne!(ClientKey::of(ip("::1")), ClientKey::of(ip("127.0.0.1")));
    }

    #[test]
    fn a_client_at_its_cap_sheds_its_own_oldest_unfinished_connection() {
        let table = ConnectionTable::new(100, 3);
        let start = Instant::now();
        let ids: Vec<u64> =
            (0..3).map(|n| admitted(table.admit(ip("127.0.0.1"), start + Duration::from_millis(n))).0).collect();
        // The oldest is inside a request: the next oldest goes.
        table.request_started(ids[0]);
        let (_, displaced) = admitted(table.admit(ip("127.0.0.1"), start + Duration::from_secs(1)));
        assert_eq!(displaced, vec![DropReason::ShedForClient]);
        assert_eq!(table.of_client(ip("127.0.0.1")), 3);
        let remaining: Vec<u64> = table.inner.lock().entries.keys().copied().collect();
        assert!(remaining.contains(&ids[0]) && !remaining.contains(&ids[1]) && remaining.contains(&ids[2]));
        // Another client is untouched by that client's cap.
        admitted(table.admit(ip("127.0.0.2"), start + Duration::from_secs(2)));
        assert_eq!(table.len(), 4);
    }

    #[test]
    fn a_client_whose_connections_are_all_busy_is_refused() {
        let table = ConnectionTable::new(100, 2);
        let now = Instant::now();
        for _ in 0..2 {
            let (id, _) = admitted(table.admit(ip("2001:db8::1"), now));
            table.request_started(id);
        }
        assert!(matches!(table.admit(ip("2001:db8::2"), now), Admission::Refused(DropReason::RefusedClientLimit)));
        assert_eq!(table.len(), 2);
    }

    #[test]
    fn a_full_server_sheds_unfinished_heads_first_then_idle_keep_alives_never_busy_ones() {
        let table = ConnectionTable::new(3, 10);
        let start = Instant::now();
        let at = |seconds: u64| start + Duration::from_secs(seconds);
        let (busy, _) = admitted(table.admit(ip("192.0.2.1"), at(0)));
        table.request_started(busy);
        let (idle, _) = admitted(table.admit(ip("192.0.2.2"), at(1)));
        table.request_started(idle);
        table.request_finished(idle, at(2));
        let (head, _) = admitted(table.admit(ip("192.0.2.3"), at(3)));
        // Full: the unfinished head goes although it is younger than the idle one.
        let (_, displaced) = admitted(table.admit(ip("192.0.2.4"), at(4)));
        assert_eq!(displaced, vec![DropReason::ShedForServer]);
        assert!(!table.inner.lock().entries.contains_key(&head));
        // Full again: 192.0.2.4's unfinished head goes before the older idle keep-alive.
        let (newest, _) = admitted(table.admit(ip("192.0.2.5"), at(5)));
        assert!(table.inner.lock().entries.contains_key(&idle));
        table.request_started(newest);
        // Now only the idle keep-alive can go.
        admitted(table.admit(ip("192.0.2.6"), at(6)));
        assert!(!table.inner.lock().entries.contains_key(&idle));
        assert!(table.inner.lock().entries.contains_key(&busy));
        // Everything busy: refused.
        let ids: Vec<u64> = table.inner.lock().entries.keys().copied().collect();
        for id in ids {
            table.request_started(id);
        }
        assert!(matches!(table.admit(ip("192.0.2.7"), at(7)), Admission::Refused(DropReason::RefusedServerFull)));
    }

    #[test]
    fn closing_is_idempotent_and_frees_the_slot() {
        let table = ConnectionTable::new(1, 1);
        let (id, _) = admitted(table.admit(ip("127.0.0.1"), Instant::now()));
        table.closed(id);
        table.closed(id);
        assert!(table.is_empty());
        assert_eq!(table.of_client(ip("127.0.0.1")), 0);
        admitted(table.admit(ip("127.0.0.1"), Instant::now()));
    }

    #[test]
    fn a_shed_connection_is_told() {
        let table = ConnectionTable::new(1, 5);
        let Admission::Admitted { shed, .. } = table.admit(ip("127.0.0.1"), Instant::now()) else { panic!() };
        admitted(table.admit(ip("127.0.0.2"), Instant::now()));
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            // The permit was stored when it was shed: the wait returns at once.
            tokio::time::timeout(Duration::from_secs(1), shed.notified()).await.expect("the shed connection was told");
        });
    }
}
