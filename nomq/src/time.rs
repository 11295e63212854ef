//! Time as the core sees it: integers of microseconds, handed in by the caller.
//!
//! The core never reads a clock. Adapters convert their clock (`tokio::time::Instant`,
//! `embassy_time::Instant`, a hardware timer) into [`Instant`] by counting microseconds
//! from any fixed origin, and pass the wall clock (Unix seconds) separately where the
//! protocol needs it (packet timestamps).

use core::fmt;
use core::ops::{Add, AddAssign, Sub};

/// A monotonic point in time, in microseconds since an origin the adapter chooses.
///
/// Values handed to one engine must never go backwards.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Instant {
    micros: u64,
}

impl Instant {
    /// The origin.
    pub const ZERO: Instant = Instant { micros: 0 };

    /// An instant `micros` microseconds after the origin.
    pub const fn from_micros(micros: u64) -> Self {
        Self { micros }
    }
    /// An instant `millis` milliseconds after the origin.
    pub const fn from_millis(millis: u64) -> Self {
        Self { micros: millis.saturating_mul(1000) }
    }
    /// An instant `secs` seconds after the origin.
    pub const fn from_secs(secs: u64) -> Self {
        Self { micros: secs.saturating_mul(1_000_000) }
    }
    /// Microseconds since the origin.
    pub const fn total_micros(self) -> u64 {
        self.micros
    }
    /// Milliseconds since the origin.
    pub const fn total_millis(self) -> u64 {
        self.micros / 1000
    }
    /// Time elapsed from `earlier` to `self`, zero if `earlier` is later.
    pub const fn saturating_duration_since(self, earlier: Instant) -> Duration {
        Duration { micros: self.micros.saturating_sub(earlier.micros) }
    }
}

impl fmt::Debug for Instant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:06}s", self.micros / 1_000_000, self.micros % 1_000_000)
    }
}

/// A span of time in microseconds.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Duration {
    micros: u64,
}

impl Duration {
    /// No time.
    pub const ZERO: Duration = Duration { micros: 0 };
    /// `micros` microseconds.
    pub const fn from_micros(micros: u64) -> Self {
        Self { micros }
    }
    /// `millis` milliseconds.
    pub const fn from_millis(millis: u64) -> Self {
        Self { micros: millis.saturating_mul(1000) }
    }
    /// `secs` seconds.
    pub const fn from_secs(secs: u64) -> Self {
        Self { micros: secs.saturating_mul(1_000_000) }
    }
    /// Whole microseconds.
    pub const fn total_micros(self) -> u64 {
        self.micros
    }
    /// Whole milliseconds.
    pub const fn total_millis(self) -> u64 {
        self.micros / 1000
    }
    /// Whole seconds.
    pub const fn total_secs(self) -> u64 {
        self.micros / 1_000_000
    }
    /// `self * n`, saturating.
    pub const fn saturating_mul(self, n: u64) -> Self {
        Self { micros: self.micros.saturating_mul(n) }
    }
}

impl fmt::Debug for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:06}s", self.micros / 1_000_000, self.micros % 1_000_000)
    }
}

impl Add<Duration> for Instant {
    type Output = Instant;
    fn add(self, d: Duration) -> Instant {
        Instant { micros: self.micros.saturating_add(d.micros) }
    }
}
impl AddAssign<Duration> for Instant {
    fn add_assign(&mut self, d: Duration) {
        *self = *self + d;
    }
}
impl Sub<Duration> for Instant {
    type Output = Instant;
    fn sub(self, d: Duration) -> Instant {
        Instant { micros: self.micros.saturating_sub(d.micros) }
    }
}
impl Sub<Instant> for Instant {
    type Output = Duration;
    fn sub(self, other: Instant) -> Duration {
        self.saturating_duration_since(other)
    }
}
impl Add for Duration {
    type Output = Duration;
    fn add(self, d: Duration) -> Duration {
        Duration { micros: self.micros.saturating_add(d.micros) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_saturates() {
        let t = Instant::from_secs(2);
        assert_eq!((t + Duration::from_millis(1500)).total_millis(), 3500);
        assert_eq!(t - Instant::from_secs(5), Duration::ZERO);
        assert_eq!((t - Duration::from_secs(9)), Instant::ZERO);
        assert_eq!(
            Instant::from_micros(u64::MAX) + Duration::from_secs(1),
            Instant::from_micros(u64::MAX)
        );
        assert_eq!(Duration::from_secs(3).saturating_mul(2).total_secs(), 6);
    }
}
