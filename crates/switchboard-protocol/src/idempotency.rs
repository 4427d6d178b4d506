//! [`IdempotencyKey`]: the `idempotency_key` of a publish (PROTOCOL §2, §5).
//!
//! The contract does not bound the key; Switchboard does (ARCHITECTURE.md
//! "Departures"): every node and store keeps keys in memory or as Redis key
//! names, so a key is 1 to [`IdempotencyKey::MAX_BYTES`] printable ASCII
//! characters (space to `~`), which any UUID, hash or order id fits.

use std::sync::Arc;

/// A validated idempotency key; cheap to clone.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IdempotencyKey(Arc<str>);

/// Why a key was refused (the reply's message).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKeyError(&'static str);

impl std::fmt::Display for IdempotencyKeyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for IdempotencyKeyError {}

impl IdempotencyKey {
    pub const MAX_BYTES: usize = 128;

    pub fn parse(key: &str) -> Result<Self, IdempotencyKeyError> {
        if key.is_empty() {
            return Err(IdempotencyKeyError("`idempotency_key` is empty"));
        }
        if key.len() > Self::MAX_BYTES {
            return Err(IdempotencyKeyError(
                "`idempotency_key` is longer than 128 bytes",
            ));
        }
        if !key.bytes().all(|b| (0x20..=0x7e).contains(&b)) {
            return Err(IdempotencyKeyError(
                "`idempotency_key` holds a character that is not printable ASCII",
            ));
        }
        Ok(IdempotencyKey(Arc::from(key)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for IdempotencyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_short_printable_ascii() {
        for ok in [
            "k",
            "order-42 retry",
            &"x".repeat(128),
            "6f1c…"[..4].as_ref(),
        ] {
            assert_eq!(IdempotencyKey::parse(ok).expect(ok).as_str(), ok);
        }
        for bad in ["", &"x".repeat(129), "tab\there", "é", "nul\0"] {
            assert!(IdempotencyKey::parse(bad).is_err(), "{bad:?}");
        }
    }
}
