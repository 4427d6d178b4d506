//! One WebSocket connection's I/O: its read state (decoding what arrives)
//! and its write state (what the socket has not taken yet).
//!
//! Read state: nothing while idle; a boxed [`Decoder`] only while a frame or
//! a fragmented message is incomplete. Write state: the [`WriteQueue`], which
//! holds at most one outbox's worth plus one pong. Reads are bounded per turn
//! by [`READ_BUDGET`]; the client loop reads only while the write queue is
//! empty, so a client that does not take our bytes is not read from either.

use std::io;
use std::time::Duration;

use bytes::Bytes;
use switchboard_core::Out;
use switchboard_protocol::websocket::{self, Decoder, Message, ProtocolError, opcode};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::SCRATCH;
use super::write_queue::{RAW, WriteQueue};

/// How many bytes one turn reads at most before letting writes and other
/// clients run.
const READ_BUDGET: usize = 256 * 1024;

/// Reads (each up to [`READ_BUDGET`]) spent waiting for the peer's close
/// frame after ours.
const CLOSE_READS: usize = 4;

/// How many pongs one read may write one by one (each its own `send`); past
/// it, pings of that read share the one pending pong. Enough for a peer that
/// checks every ping of a short burst is answered (Autobahn's 2.10 sends 10).
pub(super) const PONGS_AT_ONCE: u32 = 16;

pub(super) struct Connection {
    pub(super) stream: TcpStream,
    /// Read state, only while something is incomplete: an idle client holds none.
    reading: Option<Box<Reading>>,
    max_message: usize,
    pub(super) out: WriteQueue,
}

/// What a connection keeps between reads while a message is incomplete.
struct Reading {
    decoder: Decoder,
    /// Bytes that came with the upgrade request, decoded on the first read.
    early: Vec<u8>,
}

/// How a connection ends with a close frame.
pub(super) struct Close {
    pub(super) code: u16,
    pub(super) reason: String,
    /// The peer sent its close first.
    pub(super) by_peer: bool,
}

impl Close {
    pub(super) fn ours(code: u16, reason: impl Into<String>) -> Self {
        Close {
            code,
            reason: reason.into(),
            by_peer: false,
        }
    }

    /// The answer to the peer's close frame.
    pub(super) fn answer(m: &Message) -> Option<Close> {
        match m {
            Message::Close(code, _) => Some(Close {
                code: code.unwrap_or(1000),
                reason: String::new(),
                by_peer: true,
            }),
            _ => None,
        }
    }
}

/// What one read produced: the whole messages, then possibly an end.
pub(super) struct ReadOutcome {
    /// Messages decoded, in order; handled even when the read also ended the
    /// connection, so nothing sent before a bad frame is lost.
    pub(super) messages: Vec<Message>,
    /// Frames completed, fragments and control frames included: what the
    /// rate limit counts.
    pub(super) frames: usize,
    pub(super) end: Option<ReadEnd>,
    /// The read stopped at its budget with bytes possibly left: the task
    /// yields before reading again, so one busy client cannot hold a worker.
    pub(super) budget_spent: bool,
}

pub(super) enum ReadEnd {
    /// The peer closed the TCP connection.
    Eof,
    /// The peer broke the protocol: close with this code.
    Failed(ProtocolError),
}

impl Connection {
    /// `first` (the handshake's `101`, as raw bytes) is the first thing written.
    pub(super) fn new(
        stream: TcpStream,
        already_read: &[u8],
        first: Bytes,
        max_message: usize,
    ) -> Self {
        Connection {
            stream,
            reading: (!already_read.is_empty()).then(|| {
                Box::new(Reading {
                    decoder: Decoder::new(max_message),
                    early: already_read.to_vec(),
                })
            }),
            max_message,
            out: WriteQueue::new((!first.is_empty()).then(|| Out::Control(RAW, first))),
        }
    }

    /// Bytes that came with the upgrade request wait to be decoded.
    pub(super) fn has_early_bytes(&self) -> bool {
        self.reading.as_ref().is_some_and(|r| !r.early.is_empty())
    }

    #[cfg(test)]
    pub(super) fn is_reading(&self) -> bool {
        self.reading.is_some()
    }

    /// Decodes `bytes`. A fresh decoder lives on the stack and is boxed only
    /// when it is left with something incomplete; a box is dropped once
    /// nothing is.
    fn decode(&mut self, bytes: &[u8], read: &mut ReadOutcome) -> Result<(), ProtocolError> {
        match self.reading.as_mut() {
            Some(r) => {
                read.frames += r.decoder.decode(bytes, &mut read.messages)?;
                if r.decoder.is_idle() && r.early.is_empty() {
                    self.reading = None;
                }
            }
            None => {
                let mut decoder = Decoder::new(self.max_message);
                read.frames += decoder.decode(bytes, &mut read.messages)?;
                if !decoder.is_idle() {
                    self.reading = Some(Box::new(Reading {
                        decoder,
                        early: Vec::new(),
                    }));
                }
            }
        }
        Ok(())
    }

    /// Reads what the socket has now (up to [`READ_BUDGET`]) and decodes it.
    pub(super) fn read_now(&mut self) -> ReadOutcome {
        let mut read = ReadOutcome {
            messages: Vec::new(),
            frames: 0,
            end: None,
            budget_spent: false,
        };
        let early = self
            .reading
            .as_mut()
            .map(|r| std::mem::take(&mut r.early))
            .unwrap_or_default();
        if !early.is_empty()
            && let Err(e) = self.decode(&early, &mut read)
        {
            read.end = Some(ReadEnd::Failed(e));
            return read;
        }
        let mut budget = READ_BUDGET;
        while budget > 0 && !matches!(read.messages.last(), Some(Message::Close(..))) {
            let r: Result<usize, Option<ProtocolError>> = SCRATCH.with(|scratch| {
                let mut scratch = scratch.borrow_mut();
                let n = match self.stream.try_read(&mut scratch[..]) {
                    Ok(0) => return Err(None),
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(0),
                    Err(_) => return Err(None),
                };
                self.decode(&scratch[..n], &mut read).map_err(Some)?;
                Ok(n)
            });
            match r {
                Ok(0) => break,
                Ok(n) => budget = budget.saturating_sub(n),
                Err(None) => {
                    read.end = Some(ReadEnd::Eof);
                    break;
                }
                Err(Some(e)) => {
                    read.end = Some(ReadEnd::Failed(e));
                    break;
                }
            }
        }
        read.budget_spent = budget == 0;
        read
    }

    /// Answers a ping. The pong goes out at once when nothing else is
    /// waiting for the socket and `at_once` is still above 0 (a write per
    /// pong, so the caller bounds them per read); otherwise it waits as the
    /// one pending pong (see [`WriteQueue::push_pong`]), so a flood of pings
    /// never queues more than one answer.
    pub(super) fn answer_ping(&mut self, payload: &[u8], at_once: &mut u32) {
        let was_idle = self.out.is_empty();
        self.out.push_pong(Bytes::copy_from_slice(payload));
        if was_idle && *at_once > 0 {
            *at_once -= 1;
            // An error shows again on the loop's next write, which ends it.
            let _ = self.out.write_now(&self.stream);
        }
    }

    /// Writes everything queued, waiting for the socket up to `timeout`.
    pub(super) async fn flush(&mut self, timeout: Duration) -> io::Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        while !self.out.write_now(&self.stream)?.done {
            tokio::select! {
                r = self.stream.writable() => r?,
                () = tokio::time::sleep_until(deadline) => {
                    return Err(io::ErrorKind::TimedOut.into());
                }
            }
        }
        Ok(())
    }

    /// Sends a close frame after what is queued (waiting up to `timeout` for
    /// the socket), then closes our side of TCP at once: RFC 6455 §7.1.1 has
    /// the server close the TCP connection first, and a peer that already
    /// sent its close (valid or not) is owed nothing more. When we started
    /// the close, waits briefly for the peer's close or EOF before dropping
    /// the socket, so unread bytes do not turn the end into a reset.
    pub(super) async fn close(mut self, close: Close, timeout: Duration) {
        let payload = websocket::close_payload(close.code, &close.reason);
        self.out
            .frames
            .push_back(Out::Control(opcode::CLOSE, Bytes::from(payload)));
        if self.flush(timeout).await.is_err() {
            return;
        }
        let _ = self.stream.shutdown().await;
        if close.by_peer {
            return;
        }
        // Waiting for the peer's close costs at most a few reads: a peer
        // that keeps sending instead is dropped. (`readable()` does not
        // yield to the scheduler while bytes keep coming, so the timeout
        // alone would never fire against a flood.)
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            for _ in 0..CLOSE_READS {
                if self.stream.readable().await.is_err() {
                    return;
                }
                let read = self.read_now();
                if read.end.is_some()
                    || read
                        .messages
                        .iter()
                        .any(|m| matches!(m, Message::Close(..)))
                {
                    return;
                }
            }
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// A client frame, masked as RFC 6455 requires (payloads under 126 bytes).
    fn client_frame(fin: bool, op: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [7u8, 1, 9, 3];
        let mut f = vec![u8::from(fin) << 7 | op, 0x80 | payload.len() as u8];
        f.extend_from_slice(&mask);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        f
    }

    /// Decoding state lives only while a frame or a fragmented message is
    /// incomplete, and survives between reads while it is.
    #[tokio::test]
    async fn decoding_state_is_kept_only_while_a_message_is_incomplete() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let mut client = TcpStream::connect(listener.local_addr().expect("addr"))
            .await
            .expect("connect");
        let (server, _) = listener.accept().await.expect("accept");
        let mut conn = Connection::new(server, &[], Bytes::new(), 1 << 20);
        assert!(!conn.is_reading());

        let continuation = client_frame(true, opcode::CONTINUATION, b"lo");
        let steps: [(Vec<u8>, Vec<Message>, bool); 4] = [
            // A whole first fragment: the message is incomplete.
            (client_frame(false, opcode::TEXT, b"hel"), vec![], true),
            // Half a frame header.
            (continuation[..3].to_vec(), vec![], true),
            (
                continuation[3..].to_vec(),
                vec![Message::Text("hello".into())],
                false,
            ),
            // A whole unfragmented frame needs no state at all.
            (
                client_frame(true, opcode::TEXT, b"x"),
                vec![Message::Text("x".into())],
                false,
            ),
        ];
        for (i, (bytes, expected, kept)) in steps.into_iter().enumerate() {
            client.write_all(&bytes).await.expect("write");
            // Each read drains the socket, so the next readiness is the next step's bytes.
            let mut got = Vec::new();
            loop {
                conn.stream.readable().await.expect("readable");
                let out = conn.read_now();
                assert!(out.end.is_none(), "step {i}: the read ended the connection");
                got.extend(out.messages);
                if got.len() >= expected.len() {
                    break;
                }
            }
            assert_eq!(got, expected, "step {i}");
            assert_eq!(conn.is_reading(), kept, "step {i}");
        }
    }
}
