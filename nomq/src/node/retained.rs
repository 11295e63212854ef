//! Retained values: the last value per channel this node published with the retain
//! flag, until its TTL; sent to each peer that subscribes later. Bounded to `R`
//! channels of at most `M` bytes (name + body) each.

use super::outbox::Stored;
use super::types::PublishError;
use crate::channel::Pattern;
use crate::time::Instant;
use heapless::Vec;

/// The retained store.
#[derive(Debug, Default)]
pub(super) struct RetainedStore<const R: usize, const M: usize> {
    values: Vec<Stored<M>, R>,
}

impl<const R: usize, const M: usize> RetainedStore<R, M> {
    /// Keeps `data` (name of `name_len` bytes, then body) as the channel's value; an empty
    /// body clears it (MQTT convention).
    ///
    /// # Errors
    /// [`PublishError::RetainedFull`]: a new channel and no room.
    pub(super) fn store(&mut self, r: Stored<M>) -> Result<(), PublishError> {
        let existing = self.values.iter().position(|v| v.channel_id == r.channel_id);
        if r.data.len() == usize::from(r.name_len) {
            if let Some(i) = existing {
                self.values.swap_remove(i);
            }
            return Ok(());
        }
        match existing {
            Some(i) => self.values[i] = r,
            None => self.values.push(r).map_err(|_| PublishError::RetainedFull)?,
        }
        Ok(())
    }

    /// Indices of live values whose channel `pattern` matches.
    pub(super) fn matching<'a>(
        &'a self,
        now: Instant,
        pattern: Pattern<'a>,
    ) -> impl Iterator<Item = usize> + 'a {
        self.values.iter().enumerate().filter_map(move |(i, r)| {
            (r.expires > now && r.name().is_some_and(|n| pattern.matches(n))).then_some(i)
        })
    }

    /// # Panics
    /// If `i` is not an index [`RetainedStore::matching`] just returned.
    pub(super) fn get(&self, i: usize) -> &Stored<M> {
        &self.values[i]
    }

    pub(super) fn expire(&mut self, now: Instant) {
        self.values.retain(|r| r.expires > now);
    }

    pub(super) fn deadlines(&self) -> impl Iterator<Item = Instant> + '_ {
        self.values.iter().map(|r| r.expires)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::channel::{ChannelId, ChannelName};
    use crate::keys::ScopeIndex;
    use crate::wire::Qos;
    use heapless::Vec;

    fn value(name: &str, body: &[u8], id: u8, expires: u64) -> Stored<32> {
        let name = ChannelName::new(name).unwrap();
        let ids = (ChannelId([id; 16]), ScopeIndex::NETWORK);
        Stored::new(name, body, ids, Qos::AtLeastOnce, Instant::from_micros(expires)).unwrap()
    }

    #[test]
    fn last_value_per_channel_bounded_and_cleared_by_empty_body() {
        let mut s: RetainedStore<2, 32> = RetainedStore::default();
        s.store(value("a", b"1", 1, 100)).unwrap();
        s.store(value("a", b"2", 1, 100)).unwrap();
        s.store(value("b", b"1", 2, 100)).unwrap();
        assert_eq!(s.store(value("c", b"1", 3, 100)), Err(PublishError::RetainedFull));
        let all = Pattern::new("#").unwrap();
        assert_eq!(s.matching(Instant::ZERO, all).count(), 2);
        let a: Vec<usize, 2> = s.matching(Instant::ZERO, Pattern::new("a").unwrap()).collect();
        assert_eq!(&s.get(a[0]).data[1..], b"2");
        // An empty body clears the value, and makes room.
        s.store(value("a", b"", 1, 100)).unwrap();
        s.store(value("c", b"1", 3, 100)).unwrap();
        assert_eq!(s.matching(Instant::ZERO, Pattern::new("a").unwrap()).count(), 0);
    }

    #[test]
    fn expired_values_are_not_served_and_are_dropped() {
        let mut s: RetainedStore<2, 32> = RetainedStore::default();
        s.store(value("a", b"1", 1, 100)).unwrap();
        let all = Pattern::new("#").unwrap();
        assert_eq!(s.matching(Instant::from_micros(100), all).count(), 0);
        assert_eq!(s.deadlines().count(), 1);
        s.expire(Instant::from_micros(100));
        assert_eq!(s.deadlines().count(), 0);
    }
}
