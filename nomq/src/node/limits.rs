//! Replay windows, rate limiting and the authentication-failure lockout table.

use crate::addr::Addr;
use crate::time::{Duration, Instant};

/// Width of the per-session replay window, in packet ids.
pub const REPLAY_WINDOW: u32 = 128;

/// Sliding replay window over a sender's packet ids (RFC 4303 §3.4.3 style): the highest
/// id seen and a bitmap of the [`REPLAY_WINDOW`] ids below it.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct ReplayWindow {
    highest: u32,
    /// Bit i set: id `highest - i` was seen. Bit 0 is `highest` itself.
    bits: u128,
    any: bool,
}

/// Result of a replay check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ReplayCheck {
    Fresh,
    Duplicate,
    TooOld,
}

impl ReplayWindow {
    /// A window that refuses `floor` and every id below it: the state of a session
    /// verified by the packet `floor` (nothing it sent before may be accepted).
    pub(crate) fn from_floor(floor: u32) -> Self {
        Self { highest: floor, bits: u128::MAX, any: true }
    }

    pub(crate) fn check(&self, id: u32) -> ReplayCheck {
        if !self.any || id > self.highest {
            return ReplayCheck::Fresh;
        }
        let back = self.highest - id;
        if back >= REPLAY_WINDOW {
            return ReplayCheck::TooOld;
        }
        if self.bits & (1u128 << back) != 0 { ReplayCheck::Duplicate } else { ReplayCheck::Fresh }
    }

    /// Marks `id` seen. Call only after [`ReplayWindow::check`] returned `Fresh`.
    pub(crate) fn mark(&mut self, id: u32) {
        if !self.any {
            self.any = true;
            self.highest = id;
            self.bits = 1;
        } else if id > self.highest {
            let shift = id - self.highest;
            self.bits = if shift >= REPLAY_WINDOW { 0 } else { self.bits << shift };
            self.bits |= 1;
            self.highest = id;
        } else {
            self.bits |= 1u128 << (self.highest - id);
        }
    }
}

/// Sliding-window rate counter: the previous fixed window's count, weighted by how much
/// of it still overlaps the sliding window, plus the current window's count.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct RateWindow {
    start: Instant,
    current: u32,
    previous: u32,
}

impl RateWindow {
    /// Counts one packet at `now`; returns false if it exceeds `limit` per `window`.
    pub(crate) fn admit(&mut self, now: Instant, window: Duration, limit: u32) -> bool {
        let w = window.total_micros().max(1);
        let elapsed = (now - self.start).total_micros();
        if elapsed >= 2 * w {
            self.previous = 0;
            self.current = 0;
            self.start = now;
        } else if elapsed >= w {
            self.previous = self.current;
            self.current = 0;
            self.start += window;
        }
        let into = (now - self.start).total_micros().min(w);
        let weighted = u64::from(self.previous) * (w - into) / w + u64::from(self.current);
        if weighted >= u64::from(limit) {
            return false;
        }
        self.current = self.current.saturating_add(1);
        true
    }
}

/// Lockout policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct LockoutConfig {
    /// Consecutive authentication failures from one address before it is locked out.
    pub threshold: u8,
    /// First lockout duration; doubles with every further failure.
    pub base: Duration,
    /// Longest lockout.
    pub cap: Duration,
}

impl Default for LockoutConfig {
    fn default() -> Self {
        Self { threshold: 5, base: Duration::from_secs(1), cap: Duration::from_secs(300) }
    }
}

#[derive(Clone, Copy, Debug)]
struct LockEntry {
    addr: Addr,
    failures: u8,
    until: Instant,
    last: Instant,
}

/// Capped table of hosts (IP addresses, any port) failing authentication.
///
/// Eviction when full: the entry with the oldest last failure that is not locked now; if
/// all are locked, the one whose lockout ends first. Pruning ([`Lockouts::prune`]) drops
/// entries whose lockout ended and whose last failure is older than the cap.
#[derive(Debug)]
pub(crate) struct Lockouts<const L: usize> {
    entries: heapless::Vec<LockEntry, L>,
}

impl<const L: usize> Lockouts<L> {
    pub(crate) const fn new() -> Self {
        Self { entries: heapless::Vec::new() }
    }

    /// Whether the host of `addr` (any port) is locked out at `now`.
    pub(crate) fn is_locked(&self, addr: &Addr, now: Instant) -> bool {
        let host = addr.host();
        self.entries.iter().any(|e| e.addr == host && e.until > now)
    }

    /// Records a failure; returns `Some(until)` when this failure (re)locks the address.
    pub(crate) fn fail(
        &mut self,
        addr: Addr,
        now: Instant,
        cfg: &LockoutConfig,
    ) -> Option<Instant> {
        let addr = addr.host();
        let idx = match self.entries.iter().position(|e| e.addr == addr) {
            Some(i) => i,
            None => {
                let e = LockEntry { addr, failures: 0, until: Instant::ZERO, last: now };
                if self.entries.push(e).is_err() {
                    let victim = self.victim(now)?;
                    self.entries[victim] = e;
                    victim
                } else {
                    self.entries.len() - 1
                }
            }
        };
        let e = &mut self.entries[idx];
        e.failures = e.failures.saturating_add(1);
        e.last = now;
        if e.failures >= cfg.threshold.max(1) {
            let exp = u32::from(e.failures - cfg.threshold.max(1)).min(30);
            let d = cfg.base.saturating_mul(1u64 << exp).min(cfg.cap);
            e.until = now + d;
            return Some(e.until);
        }
        None
    }

    /// A fresh authenticated packet (not a replay) from `addr`: its host's failure count
    /// starts over.
    pub(crate) fn succeed(&mut self, addr: &Addr) {
        let host = addr.host();
        if let Some(i) = self.entries.iter().position(|e| e.addr == host) {
            self.entries.swap_remove(i);
        }
    }

    fn victim(&self, now: Instant) -> Option<usize> {
        let unlocked = self
            .entries
            .iter()
            .enumerate()
            .filter(|(_, e)| e.until <= now)
            .min_by_key(|(_, e)| e.last)
            .map(|(i, _)| i);
        unlocked.or_else(|| {
            self.entries.iter().enumerate().min_by_key(|(_, e)| e.until).map(|(i, _)| i)
        })
    }

    pub(crate) fn prune(&mut self, now: Instant, cfg: &LockoutConfig) {
        self.entries.retain(|e| e.until > now || now - e.last < cfg.cap);
    }

    pub(crate) fn next_deadline(&self, cfg: &LockoutConfig) -> Option<Instant> {
        self.entries.iter().map(|e| (e.last + cfg.cap).max(e.until)).min()
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replay_window() {
        let mut w = ReplayWindow::default();
        assert_eq!(w.check(5), ReplayCheck::Fresh);
        w.mark(5);
        assert_eq!(w.check(5), ReplayCheck::Duplicate);
        assert_eq!(w.check(3), ReplayCheck::Fresh);
        w.mark(3);
        assert_eq!(w.check(3), ReplayCheck::Duplicate);
        w.mark(200);
        assert_eq!(w.check(5), ReplayCheck::TooOld);
        assert_eq!(w.check(200 - 127), ReplayCheck::Fresh);
        assert_eq!(w.check(200 - 128), ReplayCheck::TooOld);
        w.mark(199);
        assert_eq!(w.check(199), ReplayCheck::Duplicate);
        w.mark(u32::MAX);
        assert_eq!(w.check(u32::MAX), ReplayCheck::Duplicate);
        assert_eq!(w.check(200), ReplayCheck::TooOld);
    }

    #[test]
    fn rate_window_limits_and_recovers() {
        let mut r = RateWindow::default();
        let w = Duration::from_secs(1);
        let t0 = Instant::from_secs(10);
        let admitted = (0..100).filter(|i| r.admit(t0 + Duration::from_millis(*i), w, 20)).count();
        assert_eq!(admitted, 20);
        // Halfway into the next window half the previous count still weighs.
        let t1 = t0 + Duration::from_millis(1500);
        let admitted = (0..100).filter(|_| r.admit(t1, w, 20)).count();
        assert_eq!(admitted, 10);
        let t2 = t0 + Duration::from_secs(5);
        assert!(r.admit(t2, w, 20));
    }

    #[test]
    fn lockout_grows_caps_evicts_prunes() {
        let cfg = LockoutConfig {
            threshold: 3,
            base: Duration::from_secs(1),
            cap: Duration::from_secs(8),
        };
        let mut l: Lockouts<2> = Lockouts::new();
        let a = Addr::V4([10, 0, 0, 1], 1);
        let t = Instant::from_secs(100);
        assert_eq!(l.fail(a, t, &cfg), None);
        assert_eq!(l.fail(a, t, &cfg), None);
        assert_eq!(l.fail(a, t, &cfg), Some(t + Duration::from_secs(1)));
        assert!(l.is_locked(&a, t));
        assert_eq!(l.fail(a, t, &cfg), Some(t + Duration::from_secs(2)));
        assert_eq!(l.fail(a, t, &cfg), Some(t + Duration::from_secs(4)));
        assert_eq!(l.fail(a, t, &cfg), Some(t + Duration::from_secs(8)));
        assert_eq!(l.fail(a, t, &cfg), Some(t + Duration::from_secs(8)), "capped");
        assert!(!l.is_locked(&a, t + Duration::from_secs(9)));
        // Capacity: a third address evicts the unlocked, oldest one.
        let b = Addr::V4([10, 0, 0, 2], 1);
        let c = Addr::V4([10, 0, 0, 3], 1);
        l.fail(b, t, &cfg);
        assert_eq!(l.len(), 2);
        l.fail(c, t + Duration::from_secs(1), &cfg);
        assert_eq!(l.len(), 2);
        assert!(l.is_locked(&a, t + Duration::from_secs(1)), "locked entry kept over unlocked b");
        l.prune(t + Duration::from_secs(100), &cfg);
        assert_eq!(l.len(), 0);
        l.fail(b, t, &cfg);
        l.succeed(&b);
        assert_eq!(l.len(), 0);
    }
}
