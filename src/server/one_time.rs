//! One-time secret URLs: a profile's `one_time_url("name")` renders a secret template once and
//! hands the board a capability URL that answers once, within its TTL.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// In-memory one-time secrets: each answers once, within its TTL. Bounded: a board has at
/// most one outstanding URL per secret name (a new one replaces the old), the whole store at
/// most [`OneTimeStore::CAP`], and expired ones are purged on a timer.
#[derive(Default)]
pub struct OneTimeStore {
    inner: Mutex<OneTime>,
    issued: AtomicU64,
    used: AtomicU64,
    expired: AtomicU64,
}

#[derive(Default)]
struct OneTime {
    /// token → (deadline, body, owner)
    by_token: HashMap<String, (Instant, String, (String, String))>,
    /// (board, secret name) → its outstanding token
    by_owner: HashMap<(String, String), String>,
}

impl OneTime {
    fn remove(&mut self, token: &str) -> Option<(Instant, String, (String, String))> {
        let (deadline, body, owner) = self.by_token.remove(token)?;
        if self.by_owner.get(&owner).is_some_and(|t| t == token) {
            self.by_owner.remove(&owner);
        }
        Some((deadline, body, owner))
    }

    fn purge(&mut self, now: Instant) -> u64 {
        let dead: Vec<String> = self
            .by_token
            .iter()
            .filter(|(_, (d, _, _))| *d <= now)
            .map(|(t, _)| t.clone())
            .collect();
        let n = dead.len() as u64;
        for t in dead {
            self.remove(&t);
        }
        n
    }
}

impl std::fmt::Debug for OneTimeStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OneTimeStore")
    }
}

impl OneTimeStore {
    /// Outstanding one-time URLs at most (a few MB of secrets at worst).
    pub const CAP: usize = 10_000;

    fn lock(&self) -> std::sync::MutexGuard<'_, OneTime> {
        match self.inner.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Keep `body` for `board`'s secret `name` and return the token that fetches it once.
    /// The board's previous URL for the same secret stops working.
    pub fn insert(&self, board: &str, name: &str, body: String, ttl: Duration) -> Option<String> {
        self.insert_at(Instant::now(), board, name, body, ttl)
    }

    fn insert_at(
        &self,
        now: Instant,
        board: &str,
        name: &str,
        body: String,
        ttl: Duration,
    ) -> Option<String> {
        let mut raw = [0u8; 24];
        aws_lc_rs::rand::fill(&mut raw).ok()?;
        let token = hex::encode(raw);
        let owner = (board.to_string(), name.to_string());
        let mut m = self.lock();
        if let Some(old) = m.by_owner.get(&owner).cloned() {
            m.remove(&old);
        }
        if m.by_token.len() >= Self::CAP {
            let n = m.purge(now);
            self.expired.fetch_add(n, Relaxed);
        }
        if m.by_token.len() >= Self::CAP {
            // Still full of live URLs: the one closest to expiry goes.
            if let Some(t) = m
                .by_token
                .iter()
                .min_by_key(|(_, (d, _, _))| *d)
                .map(|(t, _)| t.clone())
            {
                m.remove(&t);
            }
        }
        m.by_token
            .insert(token.clone(), (now.checked_add(ttl)?, body, owner.clone()));
        m.by_owner.insert(owner, token.clone());
        self.issued.fetch_add(1, Relaxed);
        Some(token)
    }

    /// Take the secret: it is gone afterwards, whether or not it had expired. None for a
    /// token never issued (or used, replaced or purged already).
    pub fn take(&self, token: &str) -> Option<Taken> {
        self.take_at(Instant::now(), token)
    }

    fn take_at(&self, now: Instant, token: &str) -> Option<Taken> {
        let (deadline, body, (board, _)) = self.lock().remove(token)?;
        let live = deadline > now;
        let counter = if live { &self.used } else { &self.expired };
        counter.fetch_add(1, Relaxed);
        Some(Taken {
            board,
            body: live.then_some(body),
        })
    }

    /// Drop expired URLs (run on a timer, so that memory returns after a burst).
    pub fn purge_expired(&self) {
        let n = self.lock().purge(Instant::now());
        self.expired.fetch_add(n, Relaxed);
    }

    /// (issued, used, expired) since start.
    pub fn counts(&self) -> (u64, u64, u64) {
        (
            self.issued.load(Relaxed),
            self.used.load(Relaxed),
            self.expired.load(Relaxed),
        )
    }

    /// Outstanding URLs.
    pub fn len(&self) -> usize {
        self.lock().by_token.len()
    }

    /// Whether none are outstanding.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A token's secret as taken: its board (for the board's history) and the secret, unless the
/// URL had expired.
#[derive(Debug, PartialEq)]
pub struct Taken {
    /// The board the URL was issued to.
    pub board: String,
    /// The secret; None when the URL had expired.
    pub body: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_url_replaces_the_boards_old_one_and_the_store_is_bounded() {
        let s = OneTimeStore::default();
        let ttl = Duration::from_secs(60);
        let a = s.insert("b1", "x", "one".into(), ttl).unwrap();
        let b = s.insert("b1", "x", "two".into(), ttl).unwrap();
        let c = s.insert("b1", "y", "other".into(), ttl).unwrap();
        assert_eq!(s.len(), 2);
        let body = |t: Option<Taken>| t.and_then(|t| t.body);
        assert_eq!(s.take(&a), None);
        let two = s.take(&b).unwrap();
        assert_eq!(
            (two.board.as_str(), two.body.as_deref()),
            ("b1", Some("two"))
        );
        assert_eq!(body(s.take(&c)).as_deref(), Some("other"));
        for i in 0..OneTimeStore::CAP + 50 {
            s.insert(&format!("b{i}"), "x", "s".into(), ttl).unwrap();
        }
        assert_eq!(s.len(), OneTimeStore::CAP);
        // A fake clock: no sleep races the deadline.
        let t0 = Instant::now();
        let short = OneTimeStore::default();
        let tok = short.insert_at(t0, "b", "x", "s".into(), ttl).unwrap();
        let late = t0 + ttl;
        short.lock().purge(late - Duration::from_millis(1));
        assert_eq!(short.len(), 1, "purged before its deadline");
        let tok2 = short.insert_at(t0, "b", "y", "s".into(), ttl).unwrap();
        let at_deadline = short.take_at(late, &tok2).unwrap();
        assert_eq!(at_deadline.body, None, "taken at its deadline");
        assert_eq!(at_deadline.board, "b");
        short.lock().purge(late);
        assert!(short.is_empty());
        assert_eq!(short.take_at(t0, &tok), None, "purged, so gone");
        // Taken or purged, a URL leaves no trace: the owner map empties too.
        assert!(short.lock().by_owner.is_empty());
        assert!(s.lock().by_owner.len() <= OneTimeStore::CAP);
    }

    #[test]
    fn a_full_store_of_expired_urls_is_purged_not_evicted_one_by_one() {
        let s = OneTimeStore::default();
        let t0 = Instant::now();
        let ttl = Duration::from_secs(60);
        for i in 0..OneTimeStore::CAP {
            s.insert_at(t0, &format!("b{i}"), "x", "s".into(), ttl)
                .unwrap();
        }
        let tok = s
            .insert_at(t0 + 2 * ttl, "late", "x", "fresh".into(), ttl)
            .unwrap();
        assert_eq!(s.len(), 1, "every expired URL goes when the store is full");
        assert_eq!(
            s.counts(),
            (OneTimeStore::CAP as u64 + 1, 0, OneTimeStore::CAP as u64)
        );
        assert!(!s.is_empty());
        let taken = s.take_at(t0 + 2 * ttl, &tok).unwrap();
        assert_eq!(taken.body.as_deref(), Some("fresh"));
        assert!(s.lock().by_owner.is_empty());
        assert!(s.is_empty());
        // The timer's purge: a URL past its deadline goes, and counts as expired.
        s.insert("b", "x", "s".into(), Duration::ZERO).unwrap();
        s.purge_expired();
        assert!(s.is_empty());
        assert_eq!(s.counts().2, OneTimeStore::CAP as u64 + 1);
    }
}
