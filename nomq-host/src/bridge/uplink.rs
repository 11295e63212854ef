//! Which NoMQ message each MQTT packet id of the uplink stands for.
//!
//! The MQTT client (rumqttc 0.25) reports, in order, `Outgoing::Publish(pkid)` when it
//! writes a publish, and the broker's PUBACK / PUBREC / PUBCOMP by packet id. The
//! bridge hands publishes over in order, so the n-th new `Outgoing::Publish` is the n-th
//! publish handed over. Three things about the client make a plain "packet id → message"
//! map wrong, and are handled here:
//!
//! - **Retransmissions** after a reconnection repeat `Outgoing::Publish(pkid)` for a
//!   packet id still waiting for its PUBACK / PUBREC: not a new publish.
//! - **QoS 2 packet ids are reused before their PUBCOMP**: the client frees a packet id
//!   for new publishes at the PUBREC, not at the PUBCOMP, so a new publish may carry the
//!   packet id of a message still waiting for its PUBCOMP. Messages waiting for a PUBREC
//!   (`sent`) and those waiting for a PUBCOMP (`released`) are therefore kept apart: a
//!   PUBCOMP completes the released one, a PUBREC moves the sent one. If a PUBREC comes
//!   for a packet id whose released message is still waiting, the broker may have taken
//!   the new publish for a duplicate of the old one: the new one is given back to NoMQ
//!   unacknowledged (its publisher retransmits; at worst a duplicate at MQTT, never a
//!   loss).
//! - **The client can lose track of a message** (a publish released from its collision
//!   stash at a PUBCOMP is written but not recorded, so it is not retransmitted after a
//!   reconnection). After every reconnection that kept the session, each waiting
//!   message must be seen again (its PUBLISH or PUBREL retransmitted) within
//!   [`RESEND_GRACE`]; one that is not is given back to NoMQ unacknowledged.
//!
//! Giving a message back means dropping it: the caller's value (the NoMQ `Ack`) is
//! returned in [`Done::GivenBack`] and dropped there, which abandons the delivery, so
//! the NoMQ publisher retransmits and finally reports what was not delivered. Nothing is
//! acknowledged in NoMQ without the broker's acknowledgement of that very message.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

/// How long after a reconnection (with the session kept) the client has to retransmit
/// every waiting message before the ones it did not are given back.
pub const RESEND_GRACE: Duration = Duration::from_secs(5);

/// What became of a message.
#[derive(Debug)]
pub enum Done<T> {
    /// The broker acknowledged it (`true`) or refused it with a reason code (`false`).
    Answered(T, bool),
    /// Written at QoS 0: nothing more will come.
    Written(T),
    /// The client lost track of it, or it may have been taken for another: given back.
    GivenBack(T),
}

struct Item<T> {
    qos: u8,
    v: T,
}

/// Messages on their way to the broker, by stage.
pub struct Tracker<T> {
    /// Handed to the client, no packet id yet (in order).
    fifo: VecDeque<Item<T>>,
    /// Written, waiting for the PUBACK (QoS 1) or PUBREC (QoS 2).
    sent: HashMap<u16, Item<T>>,
    /// QoS 2, PUBREC received, waiting for the PUBCOMP.
    released: HashMap<u16, Item<T>>,
    /// After a reconnection: since when, and the packet ids not yet retransmitted.
    unconfirmed: Option<(Instant, HashSet<u16>, HashSet<u16>)>,
}

impl<T> Default for Tracker<T> {
    fn default() -> Self {
        Self {
            fifo: VecDeque::new(),
            sent: HashMap::new(),
            released: HashMap::new(),
            unconfirmed: None,
        }
    }
}

impl<T> Tracker<T> {
    /// Messages handed over and not finished.
    pub fn len(&self) -> usize {
        self.fifo.len() + self.sent.len() + self.released.len()
    }

    /// A publish at `qos` (0, 1, 2) was handed to the client.
    pub fn handed(&mut self, qos: u8, v: T) {
        self.fifo.push_back(Item { qos, v });
    }

    /// The client wrote a PUBLISH with `pkid` (0 for QoS 0).
    pub fn outgoing_publish(&mut self, pkid: u16) -> Option<Done<T>> {
        if pkid != 0 && self.sent.contains_key(&pkid) {
            // A retransmission after a reconnection.
            if let Some((_, s, _)) = &mut self.unconfirmed {
                s.remove(&pkid);
            }
            return None;
        }
        let it = self.fifo.pop_front()?;
        if pkid == 0 || it.qos == 0 {
            return Some(Done::Written(it.v));
        }
        self.sent.insert(pkid, it);
        None
    }

    /// The client wrote a PUBREL for `pkid` (a retransmission after a reconnection, or
    /// the answer to a PUBREC).
    pub fn outgoing_pubrel(&mut self, pkid: u16) {
        if let Some((_, _, r)) = &mut self.unconfirmed {
            r.remove(&pkid);
        }
    }

    /// A PUBACK (QoS 1).
    pub fn puback(&mut self, pkid: u16, ok: bool) -> Option<Done<T>> {
        self.sent.remove(&pkid).map(|it| Done::Answered(it.v, ok))
    }

    /// A PUBREC (QoS 2).
    pub fn pubrec(&mut self, pkid: u16, ok: bool) -> Option<Done<T>> {
        let it = self.sent.remove(&pkid)?;
        if !ok {
            return Some(Done::Answered(it.v, false));
        }
        if self.released.contains_key(&pkid) {
            // The packet id was reused before the PUBCOMP of the message holding it,
            // and that one is still waiting: which of the two the broker has is
            // unknown, so the newer is given back.
            return Some(Done::GivenBack(it.v));
        }
        self.released.insert(pkid, it);
        None
    }

    /// A PUBCOMP (QoS 2).
    pub fn pubcomp(&mut self, pkid: u16, ok: bool) -> Option<Done<T>> {
        self.released.remove(&pkid).map(|it| Done::Answered(it.v, ok))
    }

    /// Connected (again). Without the session the broker forgot every waiting message
    /// and the client dropped them: all are given back. With it, each must be
    /// retransmitted within [`RESEND_GRACE`] (see [`Tracker::settle`]).
    pub fn connected(&mut self, session_present: bool, now: Instant) -> Vec<T> {
        if !session_present {
            self.unconfirmed = None;
            let all = self.fifo.drain(..).chain(self.sent.drain().map(|(_, it)| it));
            return all.chain(self.released.drain().map(|(_, it)| it)).map(|it| it.v).collect();
        }
        let s: HashSet<u16> = self.sent.keys().copied().collect();
        let r: HashSet<u16> = self.released.keys().copied().collect();
        self.unconfirmed = (!s.is_empty() || !r.is_empty()).then_some((now, s, r));
        Vec::new()
    }

    /// The connection was lost: the grace of the last reconnection no longer runs (the
    /// next one starts its own).
    pub fn disconnected(&mut self) {
        self.unconfirmed = None;
    }

    /// Gives back what the client did not retransmit within [`RESEND_GRACE`] of the
    /// last reconnection.
    pub fn settle(&mut self, now: Instant) -> Vec<T> {
        let Some((since, ..)) = &self.unconfirmed else { return Vec::new() };
        if now.duration_since(*since) < RESEND_GRACE {
            return Vec::new();
        }
        let Some((_, s, r)) = self.unconfirmed.take() else { return Vec::new() };
        let sent = s.iter().filter_map(|p| self.sent.remove(p));
        let gone: Vec<T> = sent.map(|it| it.v).collect();
        let released = r.iter().filter_map(|p| self.released.remove(p));
        gone.into_iter().chain(released.map(|it| it.v)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answered(d: Option<Done<u32>>) -> Option<(u32, bool)> {
        match d {
            Some(Done::Answered(v, ok)) => Some((v, ok)),
            _ => None,
        }
    }

    #[test]
    fn qos0_is_done_when_written_and_qos1_at_its_puback() {
        let mut t = Tracker::default();
        t.handed(0, 1);
        t.handed(1, 2);
        assert!(matches!(t.outgoing_publish(0), Some(Done::Written(1))));
        assert!(t.outgoing_publish(7).is_none());
        assert_eq!(t.len(), 1);
        assert!(t.puback(8, true).is_none(), "another packet id");
        assert_eq!(answered(t.puback(7, true)), Some((2, true)));
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn retransmissions_are_not_new_publishes() {
        let mut t = Tracker::default();
        t.handed(1, 1);
        t.handed(1, 2);
        t.outgoing_publish(1);
        let now = Instant::now();
        assert!(t.connected(true, now).is_empty());
        // The client retransmits 1, then writes the next one as 2.
        assert!(t.outgoing_publish(1).is_none());
        assert!(t.outgoing_publish(2).is_none());
        assert_eq!(answered(t.puback(2, true)), Some((2, true)));
        assert_eq!(answered(t.puback(1, true)), Some((1, true)));
        assert!(t.settle(now + RESEND_GRACE).is_empty());
    }

    /// rumqttc frees a QoS 2 packet id at the PUBREC: a new publish may carry the id of
    /// one still waiting for its PUBCOMP. The PUBCOMP completes the old one, and the
    /// new one completes at its own PUBREC + PUBCOMP (a plain map would have taken the
    /// new publish for a retransmission and shifted every later pairing by one).
    #[test]
    fn a_qos2_packet_id_reused_before_its_pubcomp_pairs_correctly() {
        let mut t = Tracker::default();
        for v in 1..=3 {
            t.handed(2, v);
        }
        t.outgoing_publish(1);
        assert!(t.pubrec(1, true).is_none());
        // Packet id 1 again, for message 2, before message 1's PUBCOMP.
        assert!(t.outgoing_publish(1).is_none());
        assert!(t.outgoing_publish(2).is_none());
        assert_eq!(answered(t.pubcomp(1, true)), Some((1, true)));
        assert!(t.pubrec(1, true).is_none());
        assert!(t.pubrec(2, true).is_none());
        assert_eq!(answered(t.pubcomp(2, true)), Some((3, true)));
        assert_eq!(answered(t.pubcomp(1, true)), Some((2, true)));
        assert_eq!(t.len(), 0);
    }

    /// A PUBREC for a reused packet id while the old message still waits for its PUBCOMP:
    /// the broker may have taken the new PUBLISH as a duplicate of the old one. The new
    /// one is given back, never acknowledged on a guess.
    #[test]
    fn an_ambiguous_pubrec_gives_the_newer_message_back() {
        let mut t = Tracker::default();
        t.handed(2, 1);
        t.handed(2, 2);
        t.outgoing_publish(5);
        t.pubrec(5, true);
        t.outgoing_publish(5);
        assert!(matches!(t.pubrec(5, true), Some(Done::GivenBack(2))));
        assert_eq!(answered(t.pubcomp(5, true)), Some((1, true)));
        assert!(t.pubcomp(5, true).is_none());
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn refusals_are_answers_that_are_not_acknowledgements() {
        let mut t = Tracker::default();
        t.handed(2, 1);
        t.handed(2, 2);
        t.outgoing_publish(1);
        t.outgoing_publish(2);
        assert_eq!(answered(t.pubrec(1, false)), Some((1, false)));
        t.pubrec(2, true);
        assert_eq!(answered(t.pubcomp(2, false)), Some((2, false)));
    }

    #[test]
    fn without_the_session_everything_waiting_is_given_back() {
        let mut t = Tracker::default();
        for v in 1..=4 {
            t.handed(2, v);
        }
        t.outgoing_publish(1);
        t.outgoing_publish(2);
        t.pubrec(2, true);
        let mut back = t.connected(false, Instant::now());
        back.sort_unstable();
        assert_eq!(back, [1, 2, 3, 4]);
        assert_eq!(t.len(), 0);
    }

    /// A message the client does not retransmit after a reconnection (it lost track of
    /// it) is given back once the grace is over; those it did retransmit stay.
    #[test]
    fn what_is_not_retransmitted_after_a_reconnection_is_given_back() {
        let mut t = Tracker::default();
        for v in 1..=4 {
            t.handed(2, v);
        }
        for p in 1..=4 {
            t.outgoing_publish(p);
        }
        t.pubrec(3, true);
        t.pubrec(4, true);
        let now = Instant::now();
        t.disconnected();
        assert!(t.connected(true, now).is_empty());
        t.outgoing_publish(1); // retransmitted
        t.outgoing_pubrel(3); // retransmitted
        assert!(t.settle(now + RESEND_GRACE / 2).is_empty(), "still within the grace");
        let mut back = t.settle(now + RESEND_GRACE);
        back.sort_unstable();
        assert_eq!(back, [2, 4]);
        assert!(t.settle(now + RESEND_GRACE * 2).is_empty());
        assert_eq!(answered(t.puback(1, true)), Some((1, true)));
        assert_eq!(answered(t.pubcomp(3, true)), Some((3, true)));
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn a_new_reconnection_restarts_the_grace() {
        let mut t = Tracker::default();
        t.handed(1, 1);
        t.outgoing_publish(1);
        let now = Instant::now();
        t.connected(true, now);
        t.disconnected();
        let later = now + RESEND_GRACE;
        t.connected(true, later);
        assert!(t.settle(later).is_empty());
        t.outgoing_publish(1);
        assert!(t.settle(later + RESEND_GRACE).is_empty());
        assert_eq!(t.len(), 1);
    }
}
