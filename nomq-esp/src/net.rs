//! What both adapters share: where datagrams go, address conversions, transmit counters.

use nomq::Addr;
use nomq::node::Target;
use smoltcp::wire::{IpAddress, IpEndpoint};

/// Where a publish's first copy goes ([`Target::Fanout`]): the engine knows subscribers
/// only by the addresses their packets came from, so the adapter supplies this list.
/// Retransmissions and acknowledgements are always unicast.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fanout<'a> {
    /// IPv4 limited broadcast, `255.255.255.255:port`: every host on the LAN.
    Broadcast(u16),
    /// These endpoints: static peers, a subnet broadcast address or a multicast group.
    Peers(&'a [IpEndpoint]),
}

impl<'a> Fanout<'a> {
    /// The endpoints a datagram for `target` goes to. An address the stack cannot
    /// carry (IPv6 without `proto-ipv6`) yields `None` for the adapter to count.
    pub(crate) fn resolve(&self, target: Target) -> Destinations<'a> {
        match (target, *self) {
            (Target::Unicast(a) | Target::Group(a), _) => Destinations::One(Some(endpoint(a))),
            (Target::Fanout, Fanout::Broadcast(port)) => Destinations::One(Some(Some(
                IpEndpoint::new(IpAddress::Ipv4(core::net::Ipv4Addr::BROADCAST), port),
            ))),
            (Target::Fanout, Fanout::Peers(p)) => Destinations::Many(p.iter()),
        }
    }
}

/// Iterator over the endpoints of one transmit; `None` items could not be converted.
pub(crate) enum Destinations<'a> {
    One(Option<Option<IpEndpoint>>),
    Many(core::slice::Iter<'a, IpEndpoint>),
}

impl Iterator for Destinations<'_> {
    type Item = Option<IpEndpoint>;
    fn next(&mut self) -> Option<Option<IpEndpoint>> {
        match self {
            Destinations::One(e) => e.take(),
            Destinations::Many(it) => it.next().map(|e| Some(*e)),
        }
    }
}

/// The smoltcp endpoint of a NoMQ address; `None` for IPv6 when the stack has no IPv6.
pub fn endpoint(a: Addr) -> Option<IpEndpoint> {
    match a {
        Addr::V4(ip, port) => Some(IpEndpoint::new(IpAddress::Ipv4(ip.into()), port)),
        #[cfg(feature = "proto-ipv6")]
        Addr::V6(ip, port) => Some(IpEndpoint::new(IpAddress::Ipv6(ip.into()), port)),
        #[cfg(not(feature = "proto-ipv6"))]
        Addr::V6(..) => None,
    }
}

/// The NoMQ address of a smoltcp endpoint.
pub fn from_endpoint(e: IpEndpoint) -> Addr {
    match e.addr {
        IpAddress::Ipv4(ip) => Addr::V4(ip.octets(), e.port),
        #[cfg(feature = "proto-ipv6")]
        IpAddress::Ipv6(ip) => Addr::V6(ip.octets(), e.port),
    }
}

/// Adapter-level counters: what happened to datagrams between the engine and the socket.
/// The engine's own counters are in [`nomq::node::Stats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct TxStats {
    /// Datagrams handed to the socket (one per destination).
    pub sent: u64,
    /// Datagrams the socket refused (no route, buffer full, too large). QoS 1/2 messages
    /// are retransmitted by the engine; QoS 0 copies are lost and counted here.
    pub send_errors: u64,
    /// Destinations the stack cannot address (IPv6 without `proto-ipv6`).
    pub unroutable: u64,
    /// Received datagrams larger than [`MAX_DATAGRAM`](crate::MAX_DATAGRAM), dropped.
    pub truncated: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fanout_resolves_broadcast_peers_and_unicast() {
        let peers = [
            IpEndpoint::new(IpAddress::v4(10, 0, 0, 1), 1),
            IpEndpoint::new(IpAddress::v4(10, 0, 0, 2), 2),
        ];
        let all: heapless::Vec<_, 4> = Fanout::Peers(&peers).resolve(Target::Fanout).collect();
        assert_eq!(all.as_slice(), &[Some(peers[0]), Some(peers[1])]);
        let b: heapless::Vec<_, 4> = Fanout::Broadcast(8888).resolve(Target::Fanout).collect();
        assert_eq!(b.as_slice(), &[Some(IpEndpoint::new(IpAddress::v4(255, 255, 255, 255), 8888))]);
        let u: heapless::Vec<_, 4> =
            Fanout::Peers(&peers).resolve(Target::Unicast(Addr::V4([1, 2, 3, 4], 5))).collect();
        assert_eq!(u.as_slice(), &[Some(IpEndpoint::new(IpAddress::v4(1, 2, 3, 4), 5))]);
    }

    #[test]
    fn addresses_round_trip() {
        let a = Addr::V4([192, 168, 69, 2], 8888);
        assert_eq!(endpoint(a).map(from_endpoint), Some(a));
        #[cfg(not(feature = "proto-ipv6"))]
        assert_eq!(endpoint(Addr::V6([0; 16], 1)), None);
    }
}
