//! The frames a client's socket has not taken yet, and how they are written.

use std::collections::VecDeque;
use std::io::{self, IoSlice};

use bytes::Bytes;
use switchboard_core::Out;
use switchboard_protocol::websocket::{self, opcode};
use tokio::net::TcpStream;

use super::{GATHER_MAX, SCRATCH};

/// Frames waiting for the socket, written with vectored writes: each frame's
/// header is built on the stack and its payload (shared with every other
/// recipient) is written as it is.
#[derive(Default)]
pub(super) struct WriteQueue {
    pub(super) frames: VecDeque<Out>,
    /// Bytes of the first frame (header included) already written.
    offset: usize,
}

/// What one [`WriteQueue::write_now`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Progress {
    /// Everything queued is written.
    pub(super) done: bool,
    /// The socket took at least one byte.
    pub(super) wrote: bool,
}

/// Not a WebSocket opcode: bytes written as they are, without a frame header
/// (the handshake's `101`, queued so that it and the welcome frame leave in
/// one write).
pub(super) const RAW: u8 = 0xff;

/// The frame header `out` goes out with (none for [`RAW`] bytes).
fn header_for(out: &Out) -> ([u8; 10], usize) {
    match opcode_and_payload(out) {
        (RAW, _) => ([0; 10], 0),
        (op, payload) => websocket::frame_header(op, payload.len()),
    }
}

fn opcode_and_payload(out: &Out) -> (u8, &[u8]) {
    match out {
        Out::Frame(b) => (opcode::TEXT, b),
        Out::Ping => (opcode::PING, &[]),
        Out::Control(op, b) => (*op, b),
    }
}

impl WriteQueue {
    pub(super) fn new(first: Option<Out>) -> Self {
        WriteQueue {
            frames: first.into_iter().collect(),
            offset: 0,
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Queues the answer to a ping. At most one pong waits here (RFC 6455
    /// §5.5.3 lets an endpoint answer only the latest ping): a pong not yet
    /// started takes the newer payload instead of queueing another. Pongs are
    /// only queued after everything else (the outbox is taken only into an
    /// empty queue), so a waiting pong is always the last frame.
    pub(super) fn push_pong(&mut self, payload: Bytes) {
        let started = self.frames.len() == 1 && self.offset > 0;
        if let Some(Out::Control(opcode::PONG, p)) = self.frames.back_mut()
            && !started
        {
            *p = payload;
            return;
        }
        self.frames.push_back(Out::Control(opcode::PONG, payload));
    }

    pub(super) fn push_all(&mut self, mut more: VecDeque<Out>) {
        if self.frames.is_empty() {
            // Reuse the taken queue: no copy, no allocation.
            self.frames = more;
        } else {
            self.frames.append(&mut more);
        }
    }

    /// Writes as much as the socket takes now.
    pub(super) fn write_now(&mut self, stream: &TcpStream) -> io::Result<Progress> {
        const MAX_FRAMES: usize = 64;
        let mut wrote = false;
        while !self.frames.is_empty() {
            // Small frames are copied into one buffer and sent with `send`:
            // for a frame of a few hundred bytes that costs less than the
            // kernel's vectored-write path, and it is the common case.
            if let Some(sent) = self.send_gathered(stream) {
                match sent {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(n) => {
                        wrote = true;
                        self.advance(n);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        return Ok(Progress { done: false, wrote });
                    }
                    Err(e) => return Err(e),
                }
                continue;
            }
            let mut headers = [([0u8; 10], 0usize); MAX_FRAMES];
            for (h, out) in headers.iter_mut().zip(self.frames.iter()) {
                *h = header_for(out);
            }
            let mut slices = [IoSlice::new(&[]); MAX_FRAMES * 2];
            let mut n_slices = 0;
            for (i, (out, (h, hlen))) in self.frames.iter().zip(headers.iter()).enumerate() {
                let (_, payload) = opcode_and_payload(out);
                let skip = if i == 0 { self.offset } else { 0 };
                if *hlen == 0 {
                    slices[n_slices] = IoSlice::new(&payload[skip..]);
                    n_slices += 1;
                } else if skip < *hlen {
                    slices[n_slices] = IoSlice::new(&h[skip..*hlen]);
                    slices[n_slices + 1] = IoSlice::new(payload);
                    n_slices += 2;
                } else {
                    slices[n_slices] = IoSlice::new(&payload[skip - hlen..]);
                    n_slices += 1;
                }
            }
            let written = match stream.try_write_vectored(&slices[..n_slices]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Ok(Progress { done: false, wrote });
                }
                Err(e) => return Err(e),
            };
            wrote = true;
            self.advance(written);
        }
        if self.frames.capacity() > 0 {
            // An idle client keeps no queue memory.
            self.frames = VecDeque::new();
        }
        Ok(Progress { done: true, wrote })
    }

    /// Copies the queue's head (whole frames, up to [`GATHER_MAX`] bytes)
    /// into the thread's scratch buffer and sends it with one `send`. `None`
    /// when the first frame alone is larger: that goes out by vectored write,
    /// its payload uncopied.
    fn send_gathered(&self, stream: &TcpStream) -> Option<io::Result<usize>> {
        SCRATCH.with(|scratch| {
            let mut scratch = scratch.try_borrow_mut().ok()?;
            let buf = &mut scratch[..GATHER_MAX];
            let mut len = 0;
            for (i, out) in self.frames.iter().enumerate() {
                let (h, hlen) = header_for(out);
                let (_, payload) = opcode_and_payload(out);
                let skip = if i == 0 { self.offset } else { 0 };
                let size = hlen + payload.len() - skip;
                if len + size > buf.len() {
                    if i == 0 {
                        return None;
                    }
                    break;
                }
                if skip < hlen {
                    buf[len..len + hlen - skip].copy_from_slice(&h[skip..hlen]);
                    len += hlen - skip;
                    buf[len..len + payload.len()].copy_from_slice(payload);
                    len += payload.len();
                } else {
                    let rest = &payload[skip - hlen..];
                    buf[len..len + rest.len()].copy_from_slice(rest);
                    len += rest.len();
                }
            }
            Some(stream.try_write(&buf[..len]))
        })
    }

    fn advance(&mut self, mut n: usize) {
        while n > 0 {
            let Some(front) = self.frames.front() else {
                return;
            };
            let total = header_for(front).1 + opcode_and_payload(front).1.len();
            let left = total - self.offset;
            if n >= left {
                n -= left;
                self.offset = 0;
                self.frames.pop_front();
            } else {
                self.offset += n;
                n = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Whatever mix of small (gathered) and large (vectored) frames, raw
    /// bytes and partial writes, the peer reads exactly the frames in order.
    #[tokio::test]
    async fn queued_frames_reach_the_peer_byte_exact() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let reader = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.expect("accept");
            let mut all = Vec::new();
            s.read_to_end(&mut all).await.expect("read");
            all
        });
        let stream = TcpStream::connect(addr).await.expect("connect");
        let mut q = WriteQueue::default();
        let mut expected = Vec::new();
        q.frames.push_back(Out::Control(
            RAW,
            Bytes::from_static(b"HTTP/1.1 101 x\r\n\r\n"),
        ));
        expected.extend_from_slice(b"HTTP/1.1 101 x\r\n\r\n");
        for i in 0..400usize {
            let size = match i % 7 {
                0 => 70_000,
                1 => 20_000,
                2 => 0,
                _ => i * 13 % 900,
            };
            let payload = Bytes::from(vec![(i % 251) as u8; size]);
            let (h, hlen) = websocket::frame_header(opcode::TEXT, size);
            expected.extend_from_slice(&h[..hlen]);
            expected.extend_from_slice(&payload);
            q.frames.push_back(Out::Frame(payload));
        }
        let mut stream = stream;
        while !q.write_now(&stream).expect("write").done {
            stream.writable().await.expect("writable");
        }
        stream.shutdown().await.expect("shutdown");
        let got = reader.await.expect("reader");
        assert_eq!(got.len(), expected.len());
        assert!(got == expected, "bytes differ");
    }

    /// However many pings arrive before the socket takes their pongs, one
    /// pong waits, with the latest payload; a pong already half written is
    /// left alone.
    #[test]
    fn pongs_coalesce_into_one() {
        let mut q = WriteQueue::new(None);
        q.frames.push_back(Out::Frame(Bytes::from_static(b"reply")));
        for i in 0..1000u32 {
            q.push_pong(Bytes::from(i.to_string()));
        }
        assert_eq!(q.frames.len(), 2);
        assert!(matches!(q.frames.back(), Some(Out::Control(opcode::PONG, p)) if p == "999"));
        let mut q = WriteQueue::new(None);
        q.push_pong(Bytes::from_static(b"a"));
        q.advance(1);
        q.push_pong(Bytes::from_static(b"b"));
        assert_eq!(q.frames.len(), 2);
    }
}
