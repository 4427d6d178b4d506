//! Loss and duplicate accounting.
//!
//! Each subscriber keeps a [`SeqSet`] of the publication numbers (`seq`) it got and an
//! [`OffsetTrack`] of the channel offsets it saw; [`InFlight`] counts, per
//! publication, how many subscribers still wait for it, which is what the publish
//! window is made of.

use std::sync::atomic::{AtomicU32, Ordering};

/// What happened to one received `seq`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    First,
    Duplicate,
    /// Not a publication of this run.
    Unknown,
}

/// The set of publication numbers one subscriber received (a bitset over `0..len`).
#[derive(Debug, Clone)]
pub struct SeqSet {
    bits: Vec<u64>,
    len: u64,
    distinct: u64,
}

impl SeqSet {
    pub fn new(len: u64) -> Self {
        let words = usize::try_from(len.div_ceil(64)).unwrap_or(usize::MAX);
        SeqSet {
            bits: vec![0; words],
            len,
            distinct: 0,
        }
    }

    pub fn insert(&mut self, seq: u64) -> Seen {
        if seq >= self.len {
            return Seen::Unknown;
        }
        let (word, bit) = ((seq / 64) as usize, seq % 64);
        let mask = 1u64 << bit;
        if self.bits[word] & mask != 0 {
            return Seen::Duplicate;
        }
        self.bits[word] |= mask;
        self.distinct += 1;
        Seen::First
    }

    pub fn contains(&self, seq: u64) -> bool {
        seq < self.len && self.bits[(seq / 64) as usize] & (1u64 << (seq % 64)) != 0
    }

    pub fn distinct(&self) -> u64 {
        self.distinct
    }

    /// How many of the given expected publications are missing.
    pub fn missing_of(&self, expected: impl IntoIterator<Item = u64>) -> u64 {
        expected
            .into_iter()
            .filter(|&seq| !self.contains(seq))
            .count() as u64
    }
}

/// Checks that one subscriber sees a channel's offsets in order without gaps
/// (PROTOCOL §3): each offset is the previous one plus one.
#[derive(Debug, Clone, Copy, Default)]
pub struct OffsetTrack {
    last: Option<u64>,
    /// Offsets that were not `last + 1`.
    pub anomalies: u64,
}

impl OffsetTrack {
    pub fn observe(&mut self, offset: u64) {
        if let Some(last) = self.last
            && offset != last + 1
        {
            self.anomalies += 1;
        }
        self.last = Some(offset);
    }
}

/// What one subscriber reports at the end of a run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    /// Distinct publications of this run received.
    pub received: u64,
    pub duplicated: u64,
    pub unknown: u64,
    pub offset_anomalies: u64,
}

/// Sums of the subscribers' tallies against what each should have got.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Totals {
    pub expected: u64,
    pub delivered: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub unknown: u64,
    pub offset_anomalies: u64,
}

/// Adds up the tallies; `missing` holds each subscriber's count of expected
/// publications it never got (see [`SeqSet::missing_of`]).
pub fn totals(per_subscriber: &[(Tally, u64)], expected_each: u64) -> Totals {
    let mut t = Totals {
        expected: expected_each * per_subscriber.len() as u64,
        ..Totals::default()
    };
    for (tally, missing) in per_subscriber {
        t.delivered += tally.received;
        t.lost += missing;
        t.duplicated += tally.duplicated;
        t.unknown += tally.unknown;
        t.offset_anomalies += tally.offset_anomalies;
    }
    t
}

/// Per publication, the number of subscribers that have not received it yet.
#[derive(Debug)]
pub struct InFlight {
    remaining: Vec<AtomicU32>,
}

impl InFlight {
    pub fn new(publications: usize, subscribers: u32) -> Self {
        InFlight {
            remaining: (0..publications)
                .map(|_| AtomicU32::new(subscribers))
                .collect(),
        }
    }

    /// Stops waiting for `count` subscribers (those that never connected).
    pub fn forget_subscribers(&self, count: u32) {
        if count > 0 {
            for slot in &self.remaining {
                slot.fetch_sub(count, Ordering::AcqRel);
            }
        }
    }

    /// Records one first receipt of `seq`; true when that was the last subscriber
    /// waiting for it (the publication is then no longer in flight).
    pub fn delivered(&self, seq: u64) -> bool {
        let Some(slot) = usize::try_from(seq)
            .ok()
            .and_then(|i| self.remaining.get(i))
        else {
            return false;
        };
        slot.fetch_sub(1, Ordering::AcqRel) == 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_receipt_then_duplicate() {
        let mut set = SeqSet::new(130);
        assert_eq!(set.insert(0), Seen::First);
        assert_eq!(set.insert(129), Seen::First);
        assert_eq!(set.insert(129), Seen::Duplicate);
        assert_eq!(set.insert(130), Seen::Unknown);
        assert_eq!(set.distinct(), 2);
        assert!(set.contains(129) && !set.contains(64));
    }

    #[test]
    fn missing_counts_only_expected_publications() {
        let mut set = SeqSet::new(10);
        for seq in [0, 1, 2, 5, 9] {
            set.insert(seq);
        }
        assert_eq!(set.missing_of(0..10), 5);
        assert_eq!(set.missing_of(0..3), 0);
    }

    #[test]
    fn offsets_must_follow_each_other() {
        let mut track = OffsetTrack::default();
        for offset in [7, 8, 9, 11, 12, 12, 13] {
            track.observe(offset);
        }
        // 9 -> 11 is a gap, 12 -> 12 a repeat.
        assert_eq!(track.anomalies, 2);
    }

    #[test]
    fn totals_add_up_loss_and_duplicates() {
        let a = Tally {
            received: 10,
            duplicated: 1,
            unknown: 0,
            offset_anomalies: 0,
        };
        let b = Tally {
            received: 8,
            duplicated: 0,
            unknown: 2,
            offset_anomalies: 1,
        };
        let t = totals(&[(a, 0), (b, 2)], 10);
        assert_eq!(
            t,
            Totals {
                expected: 20,
                delivered: 18,
                lost: 2,
                duplicated: 1,
                unknown: 2,
                offset_anomalies: 1
            }
        );
    }

    #[test]
    fn a_publication_leaves_flight_with_its_last_subscriber() {
        let flight = InFlight::new(2, 3);
        assert!(!flight.delivered(1));
        assert!(!flight.delivered(1));
        assert!(flight.delivered(1));
        assert!(!flight.delivered(0));
        assert!(!flight.delivered(99), "unknown seq is ignored");
        flight.forget_subscribers(1);
        assert!(
            flight.delivered(0),
            "only the connected ones are waited for"
        );
    }
}
