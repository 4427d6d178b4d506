//! Channel names: `[namespace:]name`, at most 255 bytes of `[A-Za-z0-9_\-:.@=,]`.

use std::fmt;
use std::sync::Arc;

/// The longest channel name accepted, in bytes.
pub const MAX_CHANNEL_LEN: usize = 255;

/// A validated channel name. Cheap to clone: the text is shared.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelName(Arc<str>);

/// Why a channel name was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChannelNameError {
    Empty,
    TooLong,
    BadCharacter,
}

impl fmt::Display for ChannelNameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ChannelNameError::Empty => "channel name is empty",
            ChannelNameError::TooLong => "channel name is longer than 255 bytes",
            ChannelNameError::BadCharacter => {
                "channel name may only contain A-Z a-z 0-9 _ - : . @ = ,"
            }
        })
    }
}

impl std::error::Error for ChannelNameError {}

fn allowed(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b':' | b'.' | b'@' | b'=' | b',')
}

impl ChannelName {
    /// Checks `name` against the contract's length and charset.
    pub fn parse(name: &str) -> Result<Self, ChannelNameError> {
        if name.is_empty() {
            return Err(ChannelNameError::Empty);
        }
        if name.len() > MAX_CHANNEL_LEN {
            return Err(ChannelNameError::TooLong);
        }
        if !name.bytes().all(allowed) {
            return Err(ChannelNameError::BadCharacter);
        }
        Ok(ChannelName(Arc::from(name)))
    }

    /// The personal channel of `user`, if the user id makes a valid name.
    pub fn personal(user: &str) -> Result<Self, ChannelNameError> {
        Self::parse(&format!("user:{user}"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The namespace: the part before the first `:`, or `""` when there is none.
    pub fn namespace(&self) -> &str {
        match self.0.find(':') {
            Some(i) => &self.0[..i],
            None => "",
        }
    }

    /// For `user:<id>`, the `<id>`.
    pub fn personal_owner(&self) -> Option<&str> {
        self.0.strip_prefix("user:")
    }
}

impl fmt::Display for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl AsRef<str> for ChannelName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// Whether `channel` matches a pattern of a token's `channels` claim: an exact
/// name, or a prefix followed by a single trailing `*`.
pub fn pattern_matches(pattern: &str, channel: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => !prefix.contains('*') && channel.starts_with(prefix),
        None => pattern == channel,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn namespace_is_the_part_before_the_first_colon() {
        let c = ChannelName::parse("chat:room:1").expect("valid");
        assert_eq!(c.namespace(), "chat");
        assert_eq!(ChannelName::parse("news").expect("valid").namespace(), "");
    }

    #[test]
    fn bad_names_are_refused() {
        assert_eq!(ChannelName::parse(""), Err(ChannelNameError::Empty));
        assert_eq!(
            ChannelName::parse(&"a".repeat(256)),
            Err(ChannelNameError::TooLong)
        );
        assert!(ChannelName::parse(&"a".repeat(255)).is_ok());
        for bad in ["a b", "a*", "ü", "a/b", "a\"b"] {
            assert_eq!(
                ChannelName::parse(bad),
                Err(ChannelNameError::BadCharacter),
                "{bad}"
            );
        }
    }

    #[test]
    fn patterns_match_exactly_or_by_prefix() {
        assert!(pattern_matches("chat:*", "chat:lobby"));
        assert!(pattern_matches("chat:lobby", "chat:lobby"));
        assert!(!pattern_matches("chat:lobby", "chat:lobby2"));
        assert!(!pattern_matches("chat:*", "news:x"));
        assert!(pattern_matches("*", "anything"));
        assert!(!pattern_matches("a*b*", "a-b-c"));
    }

    proptest! {
        #[test]
        fn parse_never_panics_and_accepts_only_the_charset(s in ".{0,300}") {
            if let Ok(c) = ChannelName::parse(&s) {
                prop_assert!(c.as_str().len() <= MAX_CHANNEL_LEN);
                prop_assert!(c.as_str().bytes().all(allowed));
            }
        }

        #[test]
        fn a_prefix_pattern_matches_every_extension(p in "[a-z:]{0,10}", rest in "[a-z]{0,10}") {
            let pattern = format!("{p}*");
            let channel = format!("{p}{rest}");
            prop_assert!(pattern_matches(&pattern, &channel));
        }
    }
}
