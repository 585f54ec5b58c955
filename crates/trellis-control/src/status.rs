//! What the control plane knows of each proxy's sync state, for `trellis proxy-status`.
//!
//! - [`Tracker`]: one stream's bookkeeping of pushes and answers (pure: no I/O, no clock of
//!   its own). A Config gets a fresh [`Nonce`]; an ACK or NACK counts only if it echoes the
//!   nonce of the last Config sent; an answer to an older one is stale and ignored.
//! - [`ProxyStatus`]: one proxy's row: who it is (name, namespace, SPIFFE ID, address), since
//!   when it is connected, the last version sent and ACKed, the last NACK and its reason, and
//!   when it was last heard from. *Stale* means the last version sent is not the last ACKed.
//! - [`StatusBoard`]: every proxy's row, written by the streams (a short `std` mutex hold,
//!   never across an `.await`) and served as JSON at the admin port's `/debug/proxies`.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use serde_json::{Value, json};
use tokio::time::Instant;
use trellis_identity::{SpiffeId, human};

use crate::push::{Generation, NodeKey, Version};

/// Rows of proxies gone this long are dropped from the board.
const FORGET_AFTER: Duration = Duration::from_secs(600);

/// The nonce of one Config: unique within the control plane process.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Nonce(String);

/// One stream's pushes and answers.
#[derive(Debug, Default)]
pub struct Tracker {
    /// The last Config sent, and whether it is still unanswered.
    sent: Option<Sent>,
    acked: Option<Version>,
    last_nack: Option<Nack>,
    last_latency: Option<Duration>,
}

/// A Config on its way.
#[derive(Debug, Clone)]
struct Sent {
    version: Version,
    nonce: Nonce,
    at: Instant,
    answered: bool,
}

/// A refused Config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nack {
    pub version: Version,
    pub reason: String,
    pub at: SystemTime,
}

/// What an ACK or NACK meant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// The proxy applied `version`, `latency` after it was sent.
    Applied { version: Version, latency: Duration },
    /// The proxy refused `version`.
    Refused { version: Version },
    /// An answer to a Config that is not the last one sent (or to nothing): ignored.
    Stale,
}

/// Where a proxy stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncState {
    /// Connected, and has ACKed the last config sent.
    Synced,
    /// Connected, and the last config sent is not ACKed (in flight or NACKed).
    Stale,
    /// Connected, but the control plane has no config for it yet.
    Waiting,
    /// Not connected now.
    Disconnected,
}

/// One proxy's row.
#[derive(Debug, Clone)]
pub struct ProxyStatus {
    pub node: NodeKey,
    pub identity: SpiffeId,
    /// The proxy's address as the control plane sees it.
    pub addr: SocketAddr,
    /// The proxy's admin address, as its Hello said.
    pub admin: Option<SocketAddr>,
    pub connected: bool,
    pub connected_since: SystemTime,
    /// The version the proxy had in force when it said Hello (0: none).
    pub hello_version: u64,
    pub sent: Option<Version>,
    pub acked: Option<Version>,
    pub last_nack: Option<Nack>,
    /// Send → ACK of the last config applied.
    pub last_latency: Option<Duration>,
    /// The control plane had no config for this proxy at the last look.
    pub waiting: bool,
    /// The last message from the proxy, or when its stream ended.
    pub last_seen: SystemTime,
}

/// Identifies one stream, so that a stale stream cannot overwrite a newer one's row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct StreamId(u64);

/// Every proxy's row. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct StatusBoard {
    rows: Arc<Mutex<HashMap<NodeKey, (StreamId, ProxyStatus)>>>,
}

impl Nonce {
    /// A nonce no Config of this process has had.
    pub fn fresh() -> Nonce {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        Nonce(format!("{:x}", NEXT.fetch_add(1, Ordering::Relaxed)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Tracker {
    /// A Config with `version` and `nonce` went out at `at`.
    pub fn sent(&mut self, version: Version, nonce: Nonce, at: Instant) {
        self.sent = Some(Sent {
            version,
            nonce,
            at,
            answered: false,
        });
    }

    /// The proxy ACKed `nonce` (claiming `version`) at `now`.
    pub fn ack(&mut self, version: u64, nonce: &str, now: Instant) -> Answer {
        let Some(sent) = self.current(version, nonce) else {
            return Answer::Stale;
        };
        sent.answered = true;
        let (version, latency) = (sent.version, now.saturating_duration_since(sent.at));
        self.acked = Some(version);
        self.last_latency = Some(latency);
        Answer::Applied { version, latency }
    }

    /// The proxy NACKed `nonce` (claiming `version`) at `now` because of `reason`.
    pub fn nack(&mut self, version: u64, nonce: &str, reason: String, now: SystemTime) -> Answer {
        let Some(sent) = self.current(version, nonce) else {
            return Answer::Stale;
        };
        sent.answered = true;
        let version = sent.version;
        self.last_nack = Some(Nack {
            version,
            reason,
            at: now,
        });
        Answer::Refused { version }
    }

    /// The version of the last Config sent.
    pub fn sent_version(&self) -> Option<Version> {
        self.sent.as_ref().map(|s| s.version)
    }

    pub fn acked_version(&self) -> Option<Version> {
        self.acked
    }

    pub fn last_nack(&self) -> Option<&Nack> {
        self.last_nack.as_ref()
    }

    pub fn last_latency(&self) -> Option<Duration> {
        self.last_latency
    }

    /// The last Config sent, if `nonce` (and `version`) answer it and it is unanswered.
    fn current(&mut self, version: u64, nonce: &str) -> Option<&mut Sent> {
        self.sent
            .as_mut()
            .filter(|s| !s.answered && s.nonce.0 == nonce && s.version.0 == version)
    }
}

impl ProxyStatus {
    /// Where the proxy stands.
    pub fn state(&self) -> SyncState {
        if !self.connected {
            SyncState::Disconnected
        } else if self.sent.is_none() && self.waiting {
            SyncState::Waiting
        } else if self.sent != self.acked {
            SyncState::Stale
        } else {
            SyncState::Synced
        }
    }

    /// Copies the tracker's figures into the row.
    pub fn record(&mut self, tracker: &Tracker) {
        self.sent = tracker.sent_version();
        self.acked = tracker.acked_version();
        self.last_nack = tracker.last_nack().cloned();
        self.last_latency = tracker.last_latency();
    }

    /// The row as `/debug/proxies` shows it, with ages counted from `now`.
    pub fn to_json(&self, now: SystemTime) -> Value {
        let ago = |at: SystemTime| now.duration_since(at).unwrap_or_default().as_secs_f64();
        json!({
            "name": self.node.name,
            "namespace": self.node.namespace,
            "identity": self.identity.to_string(),
            "address": self.addr.to_string(),
            "admin": self.admin.map(|a| a.to_string()),
            "connected": self.connected,
            "state": self.state().as_str(),
            "connected_since": human::time(self.connected_since),
            "hello_version": self.hello_version,
            "sent_version": self.sent,
            "acked_version": self.acked,
            "last_nack": self.last_nack.as_ref().map(|n| json!({
                "version": n.version,
                "reason": n.reason,
                "at": human::time(n.at),
                "seconds_ago": ago(n.at),
            })),
            "last_push_latency_ms": self.last_latency.map(|d| d.as_secs_f64() * 1000.0),
            "last_seen": human::time(self.last_seen),
            "last_seen_seconds_ago": ago(self.last_seen),
        })
    }
}

impl SyncState {
    pub fn as_str(self) -> &'static str {
        match self {
            SyncState::Synced => "synced",
            SyncState::Stale => "stale",
            SyncState::Waiting => "waiting",
            SyncState::Disconnected => "disconnected",
        }
    }
}

impl StatusBoard {
    pub fn new() -> StatusBoard {
        StatusBoard::default()
    }

    /// A new stream for `status.node`: its row replaces whatever was there. Returns the
    /// stream's id for later updates, and the row it replaced if that proxy was still connected
    /// (two proxies claiming one name).
    pub fn connect(&self, status: ProxyStatus) -> (StreamId, Option<ProxyStatus>) {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let id = StreamId(NEXT.fetch_add(1, Ordering::Relaxed));
        let previous = self
            .lock()
            .insert(status.node.clone(), (id, status))
            .map(|(_, old)| old)
            .filter(|old| old.connected);
        (id, previous)
    }

    /// Replaces the row of `status.node` if `stream` still owns it.
    pub fn update(&self, stream: StreamId, status: &ProxyStatus) {
        let mut rows = self.lock();
        match rows.get_mut(&status.node) {
            Some((owner, row)) if *owner == stream => row.clone_from(status),
            _ => {}
        }
    }

    /// Every row, and a row for each proxy `generation` has a config for that has never
    /// connected, as the JSON of `/debug/proxies`.
    pub fn to_json(&self, generation: &Generation, now: SystemTime) -> Value {
        let rows: Vec<ProxyStatus> = {
            let mut rows = self.lock();
            rows.retain(|_, (_, row)| {
                row.connected
                    || now.duration_since(row.last_seen).unwrap_or_default() < FORGET_AFTER
            });
            rows.values().map(|(_, row)| row.clone()).collect()
        };
        let mut proxies: Vec<(NodeKey, Value)> = rows
            .iter()
            .map(|row| (row.node.clone(), row.to_json(now)))
            .collect();
        let known: HashSet<&NodeKey> = rows.iter().map(|row| &row.node).collect();
        for node in generation.nodes() {
            if !known.contains(node) {
                proxies.push((
                    node.clone(),
                    json!({
                        "name": node.name,
                        "namespace": node.namespace,
                        "connected": false,
                        "state": "never connected",
                    }),
                ));
            }
        }
        proxies.sort_by(|a, b| a.0.cmp(&b.0));
        let connected = rows.iter().filter(|r| r.connected).count();
        json!({
            "version": generation.version,
            "configs": generation.len(),
            "connected": connected,
            "proxies": proxies.into_iter().map(|(_, v)| v).collect::<Vec<_>>(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<NodeKey, (StreamId, ProxyStatus)>> {
        // A panic while holding the lock leaves plain data behind: keep using it.
        self.rows.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl fmt::Display for Nonce {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn an_ack_that_echoes_the_last_nonce_applies_it_and_measures_the_latency() {
        let t0 = Instant::now();
        let mut tracker = Tracker::default();
        let nonce = Nonce::fresh();
        tracker.sent(Version(3), nonce.clone(), t0);
        assert_eq!(tracker.sent_version(), Some(Version(3)));
        assert_eq!(tracker.acked_version(), None);
        assert_eq!(
            tracker.ack(3, nonce.as_str(), t0 + 7 * MS),
            Answer::Applied {
                version: Version(3),
                latency: 7 * MS
            }
        );
        assert_eq!(tracker.acked_version(), Some(Version(3)));
        // Answering twice does not count twice.
        assert_eq!(tracker.ack(3, nonce.as_str(), t0 + 9 * MS), Answer::Stale);
        assert_eq!(tracker.last_latency(), Some(7 * MS));
    }

    #[test]
    fn answers_to_a_superseded_config_are_ignored() {
        let t0 = Instant::now();
        let mut tracker = Tracker::default();
        let old = Nonce::fresh();
        let new = Nonce::fresh();
        assert_ne!(old, new);
        tracker.sent(Version(3), old.clone(), t0);
        tracker.sent(Version(4), new.clone(), t0 + MS);
        assert_eq!(tracker.ack(3, old.as_str(), t0 + 2 * MS), Answer::Stale);
        let nack = tracker.nack(3, old.as_str(), "no".into(), SystemTime::now());
        assert_eq!(nack, Answer::Stale);
        assert_eq!(tracker.acked_version(), None);
        assert!(tracker.last_nack().is_none());
        // A nonce with the wrong version is not an answer either.
        assert_eq!(tracker.ack(3, new.as_str(), t0 + 2 * MS), Answer::Stale);
        assert!(matches!(
            tracker.ack(4, new.as_str(), t0 + 3 * MS),
            Answer::Applied {
                version: Version(4),
                ..
            }
        ));
        // Nothing sent: any answer is stale.
        assert_eq!(Tracker::default().ack(1, "x", t0), Answer::Stale);
    }

    #[test]
    fn a_nack_keeps_the_acked_version_and_records_the_reason() {
        let t0 = Instant::now();
        let mut tracker = Tracker::default();
        let first = Nonce::fresh();
        tracker.sent(Version(1), first.clone(), t0);
        tracker.ack(1, first.as_str(), t0);
        let second = Nonce::fresh();
        tracker.sent(Version(2), second.clone(), t0);
        let answer = tracker.nack(
            2,
            second.as_str(),
            "listeners differ".into(),
            SystemTime::now(),
        );
        assert_eq!(
            answer,
            Answer::Refused {
                version: Version(2)
            }
        );
        assert_eq!(tracker.acked_version(), Some(Version(1)));
        assert_eq!(tracker.sent_version(), Some(Version(2)));
        let nack = tracker.last_nack().unwrap();
        assert_eq!(
            (nack.version, nack.reason.as_str()),
            (Version(2), "listeners differ")
        );
    }

    fn row(name: &str) -> ProxyStatus {
        let now = SystemTime::now();
        ProxyStatus {
            node: NodeKey::new("test", name),
            identity: "spiffe://cluster.local/ns/test/sa/web".parse().unwrap(),
            addr: "127.0.0.1:5000".parse().unwrap(),
            admin: None,
            connected: true,
            connected_since: now,
            hello_version: 0,
            sent: None,
            acked: None,
            last_nack: None,
            last_latency: None,
            waiting: true,
            last_seen: now,
        }
    }

    #[test]
    fn the_state_follows_sent_and_acked() {
        let mut r = row("a");
        assert_eq!(r.state(), SyncState::Waiting);
        r.waiting = false;
        r.sent = Some(Version(2));
        assert_eq!(r.state(), SyncState::Stale);
        r.acked = Some(Version(2));
        assert_eq!(r.state(), SyncState::Synced);
        r.connected = false;
        assert_eq!(r.state(), SyncState::Disconnected);
    }

    #[test]
    fn a_newer_stream_owns_the_row() {
        let board = StatusBoard::new();
        let (old, replaced) = board.connect(row("a"));
        assert!(replaced.is_none());
        let (new, replaced) = board.connect(row("a"));
        assert!(replaced.is_some());
        let mut stale = row("a");
        stale.sent = Some(Version(9));
        board.update(old, &stale);
        let mut fresh = row("a");
        fresh.sent = Some(Version(4));
        board.update(new, &fresh);
        let json = board.to_json(&Generation::default(), SystemTime::now());
        assert_eq!(json["proxies"][0]["sent_version"], 4, "{json}");
        assert_eq!(json["proxies"].as_array().unwrap().len(), 1);
    }
}
