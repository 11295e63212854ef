//! Hexadecimal keys: 32 bytes ↔ 64 hex digits.

/// Bytes in a key.
pub(crate) const KEY_LEN: usize = 32;

/// Why a string is not a hex-encoded key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum HexError {
    /// A character that is not a hex digit.
    BadDigit {
        /// Its position, in characters, counting from 0.
        position: usize,
        /// The character.
        found: char,
    },
    /// Only hex digits, but not 64 of them.
    WrongLength {
        /// How many hex digits there are.
        digits: usize,
    },
}

fn nibble(c: char) -> Option<u8> {
    // `to_digit(16)` accepts both cases and only ASCII hex digits; a value below 16 fits a u8.
    c.to_digit(16).map(|d| d as u8)
}

/// Decodes exactly 64 hex digits (either case) into `key`, which the caller owns (and
/// wipes): no copy of the key is made here.
///
/// Characters are checked before the length, so a pasted key in another encoding (base64,
/// say) is reported at its first foreign character. On error `key` may be partly written.
pub(crate) fn decode_key(s: &str, key: &mut [u8; KEY_LEN]) -> Result<(), HexError> {
    if let Some((position, found)) = s.chars().enumerate().find(|&(_, c)| nibble(c).is_none()) {
        return Err(HexError::BadDigit { position, found });
    }
    // Every character is an ASCII hex digit here, so bytes and characters coincide.
    if s.len() != 2 * KEY_LEN {
        return Err(HexError::WrongLength { digits: s.len() });
    }
    // Digits and length were checked above, so this cannot fail.
    hex::decode_to_slice(s, key).map_err(|_| HexError::WrongLength { digits: s.len() })
}

/// Appends the lowercase hex digits of `bytes` to `out`.
pub(crate) fn encode_into(bytes: &[u8], out: &mut String) {
    // Keys pass through here: the temporary is wiped when dropped.
    out.push_str(&zeroize::Zeroizing::new(hex::encode(bytes)));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// [`decode_key`] returning the key.
    fn decode(s: &str) -> Result<[u8; KEY_LEN], HexError> {
        let mut key = [0u8; KEY_LEN];
        decode_key(s, &mut key).map(|()| key)
    }

    #[test]
    fn round_trip_and_case() {
        let key: [u8; 32] = core::array::from_fn(|i| (i as u8).wrapping_mul(37) ^ 0xa5);
        let mut s = String::new();
        encode_into(&key, &mut s);
        assert_eq!(s.len(), 64);
        assert!(s.chars().all(|c| c.is_ascii_digit() || c.is_ascii_lowercase()));
        assert_eq!(decode(&s), Ok(key));
        assert_eq!(decode(&s.to_uppercase()), Ok(key));
    }

    #[test]
    fn fixture() {
        let s = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
        let key: [u8; 32] = core::array::from_fn(|i| i as u8);
        assert_eq!(decode(s), Ok(key));
        let mut out = String::new();
        encode_into(&key, &mut out);
        assert_eq!(out, s);
    }

    #[test]
    fn errors() {
        assert_eq!(decode(""), Err(HexError::WrongLength { digits: 0 }));
        assert_eq!(decode(&"ab".repeat(31)), Err(HexError::WrongLength { digits: 62 }));
        assert_eq!(decode(&"a".repeat(65)), Err(HexError::WrongLength { digits: 65 }));
        assert_eq!(decode("0g"), Err(HexError::BadDigit { position: 1, found: 'g' }));
        // Positions count characters, not bytes.
        assert_eq!(decode("éa+"), Err(HexError::BadDigit { position: 0, found: 'é' }));
        assert_eq!(decode("aé"), Err(HexError::BadDigit { position: 1, found: 'é' }));
        assert_eq!(decode(" 00"), Err(HexError::BadDigit { position: 0, found: ' ' }));
    }
}
