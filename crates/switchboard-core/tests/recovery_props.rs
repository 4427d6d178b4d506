//! For any interleaving of publishes, trimming (by size, on append and on
//! read), reads from arbitrary positions and (file store) restarts, a reader
//! either gets every publication after `since` exactly once and in order with
//! `recovered: true`, or `recovered: false`: never a partial list claimed whole.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use proptest::prelude::*;
use switchboard_core::protocol::{ChannelName, StreamPosition};
use switchboard_core::{
    FileHistory, HistoryQuery, HistoryStore, MemoryHistory, Retention, SyncMode,
};

const CHANNELS: usize = 2;

#[derive(Debug, Clone)]
enum Op {
    Publish {
        ch: usize,
        size: usize,
    },
    Read {
        ch: usize,
        /// (offset back from the latest, may pass it; right epoch?)
        since: Option<(i64, bool)>,
        limit: Option<usize>,
        size: usize,
    },
    Restart,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..CHANNELS, 0..5usize).prop_map(|(ch, size)| Op::Publish { ch, size }),
        5 => (
            0..CHANNELS,
            proptest::option::weighted(0.8, (-2i64..8, proptest::bool::weighted(0.85))),
            proptest::option::of(0..6usize),
            0..5usize,
        )
            .prop_map(|(ch, since, limit, size)| Op::Read { ch, since, limit, size }),
        1 => Just(Op::Restart),
    ]
}

fn retention(size: usize) -> Retention {
    Retention {
        size,
        ttl: Duration::from_secs(3600),
        max_channels: 0,
    }
}

#[derive(Debug, Default, Clone)]
struct Model {
    /// Everything published, offset i + 1 at index i.
    data: Vec<Bytes>,
    epoch: Option<Arc<str>>,
    /// Offsets below this may have been trimmed (by an append or a read).
    kept_from: u64,
    /// Something was stored, so the channel is in the file.
    durable: bool,
}

impl Model {
    fn len(&self) -> u64 {
        self.data.len() as u64
    }

    fn trimmed_to(&mut self, size: usize) {
        let floor = (self.len() + 1).saturating_sub(size as u64);
        self.kept_from = self.kept_from.max(floor);
    }

    fn epoch_is(&mut self, epoch: &Arc<str>) -> Result<(), TestCaseError> {
        match &self.epoch {
            Some(e) => prop_assert_eq!(e, epoch, "the epoch changed"),
            None => self.epoch = Some(epoch.clone()),
        }
        Ok(())
    }
}

fn run(
    ops: &[Op],
    mut open: impl FnMut() -> Option<Box<dyn HistoryStore>>,
) -> Result<(), TestCaseError> {
    let names: Vec<ChannelName> = (0..CHANNELS)
        .map(|i| ChannelName::parse(&format!("prop:c{i}")).expect("valid"))
        .collect();
    let mut models = vec![Model::default(); CHANNELS];
    let mut store = open().expect("first open");
    for (step, op) in ops.iter().enumerate() {
        match *op {
            Op::Publish { ch, size } => {
                let m = &mut models[ch];
                let data = Bytes::from(format!("{step}"));
                let p = store
                    .append(&names[ch], data.clone(), None, retention(size))
                    .expect("append");
                prop_assert_eq!(p.offset, m.len() + 1, "offsets have no gap");
                m.epoch_is(&p.epoch)?;
                m.data.push(data);
                m.durable |= size > 0;
                m.trimmed_to(size);
            }
            Op::Read {
                ch,
                since,
                limit,
                size,
            } => {
                let m = &mut models[ch];
                let since = since.map(|(back, right)| {
                    let offset = (m.len() as i64 - back).max(0) as u64;
                    (offset, right && m.epoch.is_some())
                });
                let query = HistoryQuery {
                    since: since.map(|(offset, right)| StreamPosition {
                        offset,
                        epoch: match &m.epoch {
                            Some(e) if right => e.to_string(),
                            _ => "not-an-epoch".into(),
                        },
                    }),
                    limit,
                };
                let r = store
                    .read(&names[ch], &query, retention(size))
                    .expect("read");
                m.trimmed_to(size);
                prop_assert_eq!(r.offset, m.len());
                m.epoch_is(&r.epoch)?;
                let limit = limit.unwrap_or(usize::MAX);
                prop_assert!(r.publications.len() <= limit);
                for w in r.publications.windows(2) {
                    prop_assert_eq!(w[1].offset, w[0].offset + 1, "no gap, no repeat");
                }
                for p in &r.publications {
                    prop_assert!(p.offset >= 1 && p.offset <= m.len());
                    prop_assert_eq!(&p.data, &m.data[p.offset as usize - 1]);
                    prop_assert_eq!(&p.epoch, &r.epoch);
                }
                match since {
                    Some((offset, right)) => {
                        if let Some(first) = r.publications.first() {
                            prop_assert!(first.offset > offset);
                        }
                        if r.recovered {
                            prop_assert!(right && offset <= m.len());
                            let got: Vec<u64> = r.publications.iter().map(|p| p.offset).collect();
                            let want: Vec<u64> = (offset + 1..=m.len()).collect();
                            prop_assert_eq!(got, want, "recovered means every one after since");
                        }
                        // And it recovers whenever nothing after since could be trimmed.
                        let missed = m.len().saturating_sub(offset);
                        if right
                            && offset <= m.len()
                            && (missed == 0
                                || (offset + 1 >= m.kept_from
                                    && missed <= size as u64
                                    && missed <= limit as u64))
                        {
                            prop_assert!(r.recovered, "recoverable from {} of {}", offset, m.len());
                        }
                    }
                    None => {
                        if let Some(last) = r.publications.last() {
                            prop_assert_eq!(last.offset, m.len(), "the latest ones");
                        }
                        let floor = m
                            .kept_from
                            .max(1)
                            .max((m.len() + 1).saturating_sub(size as u64));
                        let kept = (m.len() + 1).saturating_sub(floor).min(limit as u64);
                        prop_assert!(r.publications.len() as u64 >= kept);
                    }
                }
            }
            Op::Restart => {
                drop(store);
                match open() {
                    Some(reopened) => {
                        store = reopened;
                        // What was never stored has no file state: it starts over.
                        for m in models.iter_mut().filter(|m| !m.durable) {
                            *m = Model::default();
                        }
                    }
                    None => {
                        // A memory store is gone with the process: start over.
                        store = Box::new(MemoryHistory::new());
                        models = vec![Model::default(); CHANNELS];
                    }
                }
            }
        }
    }
    Ok(())
}

fn file_store(
    sync: SyncMode,
) -> (
    tempfile::TempDir,
    impl FnMut() -> Option<Box<dyn HistoryStore>>,
) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("history.db");
    let open = move || {
        Some(Box::new(FileHistory::open(&path, sync).expect("open")) as Box<dyn HistoryStore>)
    };
    (dir, open)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn memory_history_recovers_whole_or_says_so(ops in proptest::collection::vec(op(), 1..60)) {
        let mut first = true;
        run(&ops, || {
            std::mem::take(&mut first).then(|| Box::new(MemoryHistory::new()) as Box<dyn HistoryStore>)
        })?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn file_history_recovers_whole_or_says_so(ops in proptest::collection::vec(op(), 1..60)) {
        let (_dir, open) = file_store(SyncMode::Always);
        run(&ops, open)?;
    }

    #[test]
    fn batched_file_history_recovers_whole_or_says_so(ops in proptest::collection::vec(op(), 1..60)) {
        let (_dir, open) = file_store(SyncMode::batch());
        run(&ops, open)?;
    }
}
