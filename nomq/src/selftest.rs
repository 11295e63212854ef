//! Power-on self-test: known-answer checks of the primitives through the crate's own
//! functions, cheap enough for an MCU to run at boot (a few microseconds).

use crate::envelope::{open, seal_in_place};
use crate::keys::{KeyLookup, KeyPair, Keyring, hmac_sha256};
use crate::wire::{HEADER_LEN, Header, MAC_LEN, PacketId, PacketType, SessionId};

/// Which check failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum SelfTestError {
    /// HMAC-SHA256 disagrees with RFC 4231 test case 2.
    Hmac,
    /// AES-256-CBC disagrees with NIST SP 800-38A F.2.5.
    Aes,
    /// A sealed packet did not open to its plaintext.
    RoundTrip,
}

impl core::fmt::Display for SelfTestError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Self::Hmac => "HMAC-SHA256 known answer (RFC 4231 #2) failed",
            Self::Aes => "AES-256-CBC known answer (NIST SP 800-38A F.2.5) failed",
            Self::RoundTrip => "seal/open round trip failed",
        })
    }
}
impl core::error::Error for SelfTestError {}

const RFC4231_2: [u8; 32] = [
    0x5b, 0xdc, 0xc1, 0x46, 0xbf, 0x60, 0x75, 0x4e, 0x6a, 0x04, 0x24, 0x26, 0x08, 0x95, 0x75, 0xc7,
    0x5a, 0x00, 0x3f, 0x08, 0x9d, 0x27, 0x39, 0x83, 0x9d, 0xec, 0x58, 0xb9, 0x64, 0xec, 0x38, 0x43,
];
const NIST_KEY: [u8; 32] = [
    0x60, 0x3d, 0xeb, 0x10, 0x15, 0xca, 0x71, 0xbe, 0x2b, 0x73, 0xae, 0xf0, 0x85, 0x7d, 0x77, 0x81,
    0x1f, 0x35, 0x2c, 0x07, 0x3b, 0x61, 0x08, 0xd7, 0x2d, 0x98, 0x10, 0xa3, 0x09, 0x14, 0xdf, 0xf4,
];
const NIST_PT: [u8; 16] = [
    0x6b, 0xc1, 0xbe, 0xe2, 0x2e, 0x40, 0x9f, 0x96, 0xe9, 0x3d, 0x7e, 0x11, 0x73, 0x93, 0x17, 0x2a,
];
const NIST_CT: [u8; 16] = [
    0xf5, 0x8c, 0x4c, 0x04, 0xd6, 0xe5, 0xf1, 0xba, 0x77, 0x9e, 0xab, 0xfb, 0x5f, 0x7b, 0xfb, 0xd6,
];

/// Runs the checks.
///
/// # Errors
/// The first [`SelfTestError`]: do not use the crypto of this build.
pub fn run() -> Result<(), SelfTestError> {
    if hmac_sha256(b"Jefe", &[b"what do ya want ", b"for nothing?"]) != RFC4231_2 {
        return Err(SelfTestError::Hmac);
    }
    let ring: Keyring<0> =
        Keyring::new(&KeyPair::new(NIST_KEY, [9; 32])).map_err(|_| SelfTestError::RoundTrip)?;
    let header = Header {
        packet_id: PacketId(1),
        session_id: SessionId(1),
        ttl: 1,
        ..Header::new(PacketType::Publish)
    };
    let iv: [u8; 16] = core::array::from_fn(|i| i as u8);
    let mut buf = [0u8; HEADER_LEN + 32 + MAC_LEN];
    buf[HEADER_LEN..HEADER_LEN + 16].copy_from_slice(&NIST_PT);
    let n = seal_in_place(ring.network().current, &header, iv, &mut buf, 16, 1376)
        .map_err(|_| SelfTestError::RoundTrip)?;
    if buf[HEADER_LEN..HEADER_LEN + 16] != NIST_CT {
        return Err(SelfTestError::Aes);
    }
    match open(&ring, &mut buf[..n], 1376) {
        Ok(o) if o.plaintext == NIST_PT => Ok(()),
        _ => Err(SelfTestError::RoundTrip),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn passes() {
        assert_eq!(super::run(), Ok(()));
    }
}
