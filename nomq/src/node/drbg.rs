//! A small deterministic random bit generator: AES-256 in counter mode over a 32-byte
//! seed (the construction of NIST SP 800-90A CTR_DRBG without derivation function, with
//! the key refreshed every 2^16 blocks for backtracking resistance).
//!
//! The engine needs unpredictable IVs, session ids and retransmission jitter but must not
//! touch an OS RNG; the adapter seeds it from the OS or the chip's RNG.

use aes::Aes256Enc;
use aes::cipher::{BlockCipherEncrypt, KeyInit};
use zeroize::Zeroize;

pub(crate) struct Drbg {
    cipher: Aes256Enc,
    counter: u128,
    since_rekey: u32,
}

impl Drbg {
    pub(crate) fn new(mut seed: [u8; 32]) -> Self {
        let cipher = Aes256Enc::new(&seed.into());
        seed.zeroize();
        Self { cipher, counter: 0, since_rekey: 0 }
    }

    pub(crate) fn block(&mut self) -> [u8; 16] {
        if self.since_rekey >= 1 << 16 {
            self.rekey();
        }
        self.since_rekey += 1;
        self.counter = self.counter.wrapping_add(1);
        let mut b = self.counter.to_be_bytes().into();
        self.cipher.encrypt_block(&mut b);
        b.into()
    }

    fn rekey(&mut self) {
        self.since_rekey = 0;
        let mut k = [0u8; 32];
        k[..16].copy_from_slice(&self.block_raw());
        k[16..].copy_from_slice(&self.block_raw());
        self.cipher = Aes256Enc::new(&k.into());
        k.zeroize();
    }

    fn block_raw(&mut self) -> [u8; 16] {
        self.counter = self.counter.wrapping_add(1);
        let mut b = self.counter.to_be_bytes().into();
        self.cipher.encrypt_block(&mut b);
        b.into()
    }

    pub(crate) fn next_u32(&mut self) -> u32 {
        let b = self.block();
        u32::from_le_bytes([b[0], b[1], b[2], b[3]])
    }

    /// Uniform-ish in `0..n` (n > 0); the modulo bias is irrelevant for jitter.
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        let b = self.block();
        let mut x = [0; 8];
        x.copy_from_slice(&b[..8]);
        u64::from_le_bytes(x) % n.max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distinct_outputs_and_rekey() {
        let mut d = Drbg::new([7; 32]);
        let a = d.block();
        let b = d.block();
        assert_ne!(a, b);
        let mut e = Drbg::new([7; 32]);
        assert_eq!(e.block(), a, "deterministic for a seed");
        for _ in 0..(1 << 16) + 3 {
            d.block();
        }
        assert!(d.since_rekey < 10);
        assert!(d.below(10) < 10);
    }
}
