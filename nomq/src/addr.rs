//! Socket addresses the core can name without `std`: they map one-to-one onto
//! `std::net::SocketAddr` (tokio) and `smoltcp::wire::IpEndpoint` (embassy-net).

use core::fmt;

/// An IP address and UDP port.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Addr {
    /// IPv4 address, port.
    V4([u8; 4], u16),
    /// IPv6 address, port (scope ids are the adapter's business).
    V6([u8; 16], u16),
}

impl Addr {
    /// The host alone (port 0): what lockout accounts by, so that rotating source ports
    /// does not escape it.
    #[must_use]
    pub const fn host(&self) -> Self {
        match *self {
            Self::V4(a, _) => Self::V4(a, 0),
            Self::V6(a, _) => Self::V6(a, 0),
        }
    }

    /// The port.
    pub const fn port(&self) -> u16 {
        match *self {
            Self::V4(_, p) | Self::V6(_, p) => p,
        }
    }
}

impl fmt::Debug for Addr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for Addr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::V4(a, p) => write!(f, "{}.{}.{}.{}:{p}", a[0], a[1], a[2], a[3]),
            Self::V6(a, p) => {
                f.write_str("[")?;
                for (i, c) in a.chunks(2).enumerate() {
                    if i > 0 {
                        f.write_str(":")?;
                    }
                    write!(f, "{:x}", u16::from_be_bytes([c[0], c[1]]))?;
                }
                write!(f, "]:{p}")
            }
        }
    }
}

#[cfg(feature = "std")]
impl From<std::net::SocketAddr> for Addr {
    fn from(s: std::net::SocketAddr) -> Self {
        match s {
            std::net::SocketAddr::V4(v) => Self::V4(v.ip().octets(), v.port()),
            std::net::SocketAddr::V6(v) => Self::V6(v.ip().octets(), v.port()),
        }
    }
}

#[cfg(feature = "std")]
impl From<Addr> for std::net::SocketAddr {
    fn from(a: Addr) -> Self {
        match a {
            Addr::V4(ip, p) => (std::net::Ipv4Addr::from(ip), p).into(),
            Addr::V6(ip, p) => (std::net::Ipv6Addr::from(ip), p).into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::format;

    #[test]
    fn display() {
        assert_eq!(format!("{}", Addr::V4([127, 0, 0, 1], 8888)), "127.0.0.1:8888");
        let mut v6 = [0u8; 16];
        v6[15] = 1;
        assert_eq!(format!("{}", Addr::V6(v6, 80)), "[0:0:0:0:0:0:0:1]:80");
    }
}
