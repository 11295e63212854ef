//! What both adapters share: where datagrams go and address conversions.

use nomq::Addr;
use nomq::node::Routes;
use smoltcp::wire::{IpAddress, IpEndpoint};

/// Where a publish's first copy goes ([`Target::Fanout`](nomq::node::Target::Fanout)): the engine knows subscribers
/// only by the addresses their packets came from, so the adapter supplies this list.
/// Retransmissions and acknowledgements are always unicast.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fanout<'a> {
    /// IPv4 limited broadcast, `255.255.255.255:port`: every host on the LAN.
    Broadcast(u16),
    /// These endpoints: static peers, a subnet broadcast address or a multicast group.
    Peers(&'a [IpEndpoint]),
}

impl Routes for Fanout<'_> {
    type Endpoint = IpEndpoint;
    fn endpoint(&self, addr: Addr) -> Option<IpEndpoint> {
        endpoint(addr)
    }
    fn fanout(&self, n: usize) -> Option<IpEndpoint> {
        match *self {
            Fanout::Broadcast(port) => (n == 0)
                .then(|| IpEndpoint::new(IpAddress::Ipv4(core::net::Ipv4Addr::BROADCAST), port)),
            Fanout::Peers(p) => p.get(n).copied(),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fanout_resolves_broadcast_peers_and_unicast() {
        let peers = [
            IpEndpoint::new(IpAddress::v4(10, 0, 0, 1), 1),
            IpEndpoint::new(IpAddress::v4(10, 0, 0, 2), 2),
        ];
        let all = |f: Fanout<'_>| -> heapless::Vec<_, 4> {
            (0..).map_while(|n| f.fanout(n)).map(Some).collect()
        };
        assert_eq!(all(Fanout::Peers(&peers)).as_slice(), &[Some(peers[0]), Some(peers[1])]);
        let b = all(Fanout::Broadcast(8888));
        assert_eq!(b.as_slice(), &[Some(IpEndpoint::new(IpAddress::v4(255, 255, 255, 255), 8888))]);
        let u = Fanout::Peers(&peers).endpoint(Addr::V4([1, 2, 3, 4], 5));
        assert_eq!(u, Some(IpEndpoint::new(IpAddress::v4(1, 2, 3, 4), 5)));
    }

    #[test]
    fn addresses_round_trip() {
        let a = Addr::V4([192, 168, 69, 2], 8888);
        assert_eq!(endpoint(a).map(from_endpoint), Some(a));
        #[cfg(not(feature = "proto-ipv6"))]
        assert_eq!(endpoint(Addr::V6([0; 16], 1)), None);
    }
}
