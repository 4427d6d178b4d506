//! The WebSocket framing of RFC 6455, server side, without I/O.
//!
//! [`Decoder`] turns bytes a client sent, in whatever pieces they arrive, into
//! [`Message`]s; it keeps only what an incomplete frame or message needs, so an
//! idle connection costs nothing here. The transport reads into a scratch
//! buffer shared per thread.
//! [`frame_header`] writes a server frame's header; payloads are written after
//! it as they are (server frames are not masked), so one encoded payload is
//! shared by every recipient.

/// Opcodes of RFC 6455 §5.2.
pub mod opcode {
    pub const CONTINUATION: u8 = 0x0;
    pub const TEXT: u8 = 0x1;
    pub const BINARY: u8 = 0x2;
    pub const CLOSE: u8 = 0x8;
    pub const PING: u8 = 0x9;
    pub const PONG: u8 = 0xA;
}

/// A complete message from the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Valid UTF-8, checked.
    Text(String),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    /// The close code (when the client sent one) and reason.
    Close(Option<u16>, String),
}

/// Why the client's bytes broke the protocol, and the close code that says so.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProtocolError {
    /// A framing error: close 1002.
    Protocol(&'static str),
    /// Text that is not UTF-8: close 1007.
    InvalidUtf8,
    /// A frame or message above the configured maximum: close 1009.
    TooLarge,
}

impl ProtocolError {
    pub fn close_code(self) -> u16 {
        match self {
            ProtocolError::Protocol(_) => 1002,
            ProtocolError::InvalidUtf8 => 1007,
            ProtocolError::TooLarge => 1009,
        }
    }

    pub fn reason(self) -> &'static str {
        match self {
            ProtocolError::Protocol(r) => r,
            ProtocolError::InvalidUtf8 => "invalid UTF-8 in text",
            ProtocolError::TooLarge => "message too large",
        }
    }
}

/// Whether a close code may be sent by a peer (RFC 6455 §7.4).
pub fn close_code_is_valid(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1011 | 3000..=4999)
}

/// Decodes client frames as their bytes arrive, in any pieces.
///
/// Every byte is looked at once: a frame's header is gathered in a 14-byte
/// array, its payload is unmasked straight into the message it belongs to
/// (one growing buffer per incomplete message), and text is checked for UTF-8
/// only in the bytes that are new since the last check (backing up at most 3
/// for a code point split between pieces). So a message that arrives in many
/// small reads or in many small fragments costs what its bytes cost, once.
/// An idle decoder ([`Decoder::is_idle`]) holds no allocation.
#[derive(Debug)]
pub struct Decoder {
    max_message: usize,
    /// The header of the next frame, while it is incomplete.
    head: [u8; MAX_HEAD],
    head_len: u8,
    /// The frame whose payload is arriving.
    frame: Option<Frame>,
    /// The data message the current or last frame belongs to, while it is
    /// unfinished (a fragmented message, or one frame arriving in parts).
    message: Option<Partial>,
}

/// The longest frame header: 2 bytes, 8 of extended length, 4 of mask.
const MAX_HEAD: usize = 14;

#[derive(Debug)]
struct Frame {
    op: u8,
    fin: bool,
    mask: [u8; 4],
    /// Payload bytes still to come.
    left: usize,
    /// Payload bytes already unmasked: the mask's phase.
    done: usize,
    /// A control frame's payload (at most 125 bytes); data frames go straight
    /// into the message.
    control: Vec<u8>,
}

#[derive(Debug)]
struct Partial {
    op: u8,
    buf: Vec<u8>,
    /// For text, `buf[..checked]` is valid UTF-8: only what follows is checked
    /// when more arrives.
    checked: usize,
}

impl Partial {
    /// Checks the text that arrived since the last check. An incomplete code
    /// point at the end stays unchecked until its other bytes come.
    fn check_new_text(&mut self) -> Result<(), ProtocolError> {
        if self.op != opcode::TEXT || self.checked == self.buf.len() {
            return Ok(());
        }
        match std::str::from_utf8(&self.buf[self.checked..]) {
            Ok(_) => self.checked = self.buf.len(),
            Err(e) if e.error_len().is_none() => self.checked += e.valid_up_to(),
            Err(_) => return Err(ProtocolError::InvalidUtf8),
        }
        Ok(())
    }
}

impl Decoder {
    pub fn new(max_message: usize) -> Self {
        Decoder {
            max_message,
            head: [0; MAX_HEAD],
            head_len: 0,
            frame: None,
            message: None,
        }
    }

    /// Nothing is in progress: no partial header, frame or message.
    pub fn is_idle(&self) -> bool {
        self.head_len == 0 && self.frame.is_none() && self.message.is_none()
    }

    /// Decodes `input`, which continues whatever the previous calls were given,
    /// pushing finished messages to `out`. Every byte is used: an incomplete
    /// frame is kept in the decoder. Returns how many frames were completed
    /// (fragments and control frames included), which is what the rate limit
    /// counts. Bytes after a close frame are ignored. After an error the
    /// connection must be closed with the error's code.
    pub fn decode(
        &mut self,
        mut input: &[u8],
        out: &mut Vec<Message>,
    ) -> Result<usize, ProtocolError> {
        let mut frames = 0;
        loop {
            if self.frame.is_none() {
                if input.is_empty() {
                    break;
                }
                let used = self.read_head(input)?;
                input = &input[used..];
                if self.frame.is_none() {
                    break;
                }
            }
            let used = self.read_payload(input);
            input = &input[used..];
            if self.frame.as_ref().is_some_and(|f| f.left > 0) {
                break;
            }
            self.end_frame(out)?;
            frames += 1;
            if matches!(out.last(), Some(Message::Close(..))) {
                // Nothing after a close counts.
                return Ok(frames);
            }
        }
        // Fail fast on text that can no longer become UTF-8.
        if let Some(m) = self.message.as_mut() {
            m.check_new_text()?;
        }
        Ok(frames)
    }

    /// Takes header bytes from `input`; once the header is whole, starts its
    /// frame. Each part is checked as soon as it is there, so an oversized
    /// frame is refused from its length alone. Returns the bytes used.
    fn read_head(&mut self, input: &[u8]) -> Result<usize, ProtocolError> {
        let mut used = 0;
        // The header's parts: the first two bytes, the extended length, the mask.
        for part in 0..3 {
            let need = match part {
                0 => 2,
                1 => self.length_end(),
                _ => self.length_end() + 4,
            };
            let have = usize::from(self.head_len);
            if have < need {
                let n = (need - have).min(input.len() - used);
                self.head[have..have + n].copy_from_slice(&input[used..used + n]);
                self.head_len += n as u8;
                used += n;
                if have + n < need {
                    return Ok(used);
                }
                match part {
                    0 => self.check_first_bytes()?,
                    1 => {
                        self.payload_len()?;
                    }
                    _ => {}
                }
            }
        }
        let left = self.payload_len()?;
        let op = self.head[0] & 0x0F;
        let is_control = op & 0x8 != 0;
        let at = self.length_end();
        let mut mask = [0u8; 4];
        mask.copy_from_slice(&self.head[at..at + 4]);
        if !is_control && self.message.is_none() {
            self.message = Some(Partial {
                op,
                buf: Vec::new(),
                checked: 0,
            });
        }
        self.frame = Some(Frame {
            op,
            fin: self.head[0] & 0x80 != 0,
            mask,
            left,
            done: 0,
            control: if is_control {
                Vec::with_capacity(left)
            } else {
                Vec::new()
            },
        });
        self.head_len = 0;
        Ok(used)
    }

    /// Where the header's length ends (and its mask begins).
    fn length_end(&self) -> usize {
        match self.head[1] & 0x7F {
            126 => 4,
            127 => 10,
            _ => 2,
        }
    }

    /// The payload length of the header gathered so far (its length part is
    /// whole), checked against the message size limit.
    fn payload_len(&self) -> Result<usize, ProtocolError> {
        let len = match self.head[1] & 0x7F {
            126 => u64::from(u16::from_be_bytes([self.head[2], self.head[3]])),
            127 => {
                let mut b = [0u8; 8];
                b.copy_from_slice(&self.head[2..10]);
                let n = u64::from_be_bytes(b);
                if n >> 63 != 0 {
                    return Err(ProtocolError::Protocol(
                        "payload length has its top bit set",
                    ));
                }
                n
            }
            n => u64::from(n),
        };
        let len = usize::try_from(len).map_err(|_| ProtocolError::TooLarge)?;
        let is_control = self.head[0] & 0x8 != 0;
        let so_far = self.message.as_ref().map_or(0, |m| m.buf.len());
        if !is_control && len > self.max_message.saturating_sub(so_far) {
            return Err(ProtocolError::TooLarge);
        }
        Ok(len)
    }

    /// The checks the first two header bytes allow.
    fn check_first_bytes(&self) -> Result<(), ProtocolError> {
        let (b0, b1) = (self.head[0], self.head[1]);
        if b0 & 0x70 != 0 {
            return Err(ProtocolError::Protocol("reserved bits set"));
        }
        if b1 & 0x80 == 0 {
            return Err(ProtocolError::Protocol("client frames must be masked"));
        }
        let op = b0 & 0x0F;
        if op & 0x8 != 0 {
            if b0 & 0x80 == 0 {
                return Err(ProtocolError::Protocol("fragmented control frame"));
            }
            if b1 & 0x7F > 125 {
                return Err(ProtocolError::Protocol("control frame over 125 bytes"));
            }
        }
        match op {
            opcode::CLOSE | opcode::PING | opcode::PONG => Ok(()),
            opcode::CONTINUATION if self.message.is_none() => {
                Err(ProtocolError::Protocol("continuation without a message"))
            }
            opcode::TEXT | opcode::BINARY if self.message.is_some() => Err(
                ProtocolError::Protocol("new message inside a fragmented one"),
            ),
            opcode::CONTINUATION | opcode::TEXT | opcode::BINARY => Ok(()),
            _ => Err(ProtocolError::Protocol("unknown opcode")),
        }
    }

    /// Unmasks what `input` holds of the current frame's payload into where it
    /// belongs. Returns the bytes used.
    fn read_payload(&mut self, input: &[u8]) -> usize {
        let Some(frame) = self.frame.as_mut() else {
            return 0;
        };
        let n = frame.left.min(input.len());
        let target = match self.message.as_mut() {
            Some(m) if frame.op & 0x8 == 0 => &mut m.buf,
            _ => &mut frame.control,
        };
        target.reserve(n);
        let (mask, phase) = (frame.mask, frame.done);
        // The mask restarts with every frame (RFC 6455 §5.3).
        target.extend(
            input[..n]
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ mask[(phase + i) & 3]),
        );
        frame.left -= n;
        frame.done += n;
        n
    }

    /// The current frame is whole: a control frame becomes a message, a data
    /// frame finishes its message or leaves it waiting for the next fragment.
    fn end_frame(&mut self, out: &mut Vec<Message>) -> Result<(), ProtocolError> {
        let Some(frame) = self.frame.take() else {
            return Ok(());
        };
        match frame.op {
            opcode::PING => out.push(Message::Ping(frame.control)),
            opcode::PONG => out.push(Message::Pong(frame.control)),
            opcode::CLOSE => out.push(close_message(&frame.control)?),
            _ if frame.fin => {
                if let Some(m) = self.message.take() {
                    out.push(finish(m)?);
                }
            }
            _ => {
                if let Some(m) = self.message.as_mut() {
                    m.check_new_text()?;
                }
            }
        }
        Ok(())
    }
}

fn finish(m: Partial) -> Result<Message, ProtocolError> {
    if m.op == opcode::TEXT {
        String::from_utf8(m.buf)
            .map(Message::Text)
            .map_err(|_| ProtocolError::InvalidUtf8)
    } else {
        Ok(Message::Binary(m.buf))
    }
}

fn close_message(payload: &[u8]) -> Result<Message, ProtocolError> {
    match payload.len() {
        0 => Ok(Message::Close(None, String::new())),
        1 => Err(ProtocolError::Protocol("close payload of one byte")),
        _ => {
            let code = u16::from_be_bytes([payload[0], payload[1]]);
            if !close_code_is_valid(code) {
                return Err(ProtocolError::Protocol("invalid close code"));
            }
            let reason =
                std::str::from_utf8(&payload[2..]).map_err(|_| ProtocolError::InvalidUtf8)?;
            Ok(Message::Close(Some(code), reason.to_string()))
        }
    }
}

/// A server frame header: at most 10 bytes, returned with its length.
pub fn frame_header(op: u8, payload_len: usize) -> ([u8; 10], usize) {
    let mut h = [0u8; 10];
    h[0] = 0x80 | op;
    if payload_len < 126 {
        h[1] = payload_len as u8;
        (h, 2)
    } else if payload_len <= usize::from(u16::MAX) {
        h[1] = 126;
        h[2..4].copy_from_slice(&(payload_len as u16).to_be_bytes());
        (h, 4)
    } else {
        h[1] = 127;
        h[2..10].copy_from_slice(&(payload_len as u64).to_be_bytes());
        (h, 10)
    }
}

/// The payload of a close frame: the code, then the reason (cut to fit 125 bytes
/// at a character boundary).
pub fn close_payload(code: u16, reason: &str) -> Vec<u8> {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut p = Vec::with_capacity(2 + end);
    p.extend_from_slice(&code.to_be_bytes());
    p.extend_from_slice(&reason.as_bytes()[..end]);
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A masked client frame.
    fn client_frame(fin: bool, op: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [1u8, 2, 3, 4];
        let mut f = vec![if fin { 0x80 } else { 0 } | op];
        let n = payload.len();
        if n < 126 {
            f.push(0x80 | n as u8);
        } else if n <= 65535 {
            f.push(0x80 | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        } else {
            f.push(0x80 | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
        f.extend_from_slice(&mask);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        f
    }

    /// The messages and the number of frames `bytes` complete.
    fn decode_all(d: &mut Decoder, bytes: &[u8]) -> Result<(Vec<Message>, usize), ProtocolError> {
        let mut out = Vec::new();
        let n = d.decode(bytes, &mut out)?;
        Ok((out, n))
    }

    #[test]
    fn text_binary_and_control_frames_decode() {
        let mut d = Decoder::new(1 << 20);
        let mut bytes = client_frame(true, opcode::TEXT, "héllo".as_bytes());
        bytes.extend(client_frame(true, opcode::PING, b"p"));
        bytes.extend(client_frame(true, opcode::BINARY, &[0, 1, 2]));
        bytes.extend(client_frame(
            true,
            opcode::CLOSE,
            &close_payload(1000, "bye"),
        ));
        let (msgs, n) = decode_all(&mut d, &bytes).expect("valid");
        assert_eq!(n, 4);
        assert_eq!(
            msgs,
            vec![
                Message::Text("héllo".into()),
                Message::Ping(b"p".to_vec()),
                Message::Binary(vec![0, 1, 2]),
                Message::Close(Some(1000), "bye".into()),
            ]
        );
    }

    #[test]
    fn incomplete_frames_wait_for_more_bytes() {
        let f = client_frame(true, opcode::TEXT, &[b'a'; 300]);
        for cut in [0, 1, 2, 3, 7, 299, f.len() - 1] {
            let mut d = Decoder::new(1 << 20);
            let (msgs, frames) = decode_all(&mut d, &f[..cut]).expect("valid so far");
            assert!(msgs.is_empty());
            assert_eq!(frames, 0);
            assert_eq!(d.is_idle(), cut == 0);
            let (msgs, frames) = decode_all(&mut d, &f[cut..]).expect("valid");
            assert_eq!(frames, 1);
            assert_eq!(msgs, vec![Message::Text("a".repeat(300))]);
            assert!(d.is_idle());
        }
    }

    /// Frames are counted whether or not they finish a message.
    #[test]
    fn every_frame_is_counted() {
        let mut d = Decoder::new(1 << 20);
        let mut bytes = client_frame(false, opcode::TEXT, b"a");
        bytes.extend(client_frame(true, opcode::PING, b""));
        bytes.extend(client_frame(false, opcode::CONTINUATION, b"b"));
        bytes.extend(client_frame(true, opcode::CONTINUATION, b"c"));
        bytes.extend(client_frame(true, opcode::PONG, b""));
        let (msgs, frames) = decode_all(&mut d, &bytes).expect("valid");
        assert_eq!(frames, 5);
        assert_eq!(msgs.len(), 3);
    }

    /// Text split anywhere, even inside a code point and one byte per
    /// fragment, decodes; text that can no longer be UTF-8 fails before the
    /// message ends.
    #[test]
    fn text_is_checked_across_fragments_and_reads() {
        let text = "aé€😀z".repeat(50);
        let mut bytes = Vec::new();
        let raw = text.as_bytes();
        for (i, b) in raw.iter().enumerate() {
            let op = if i == 0 {
                opcode::TEXT
            } else {
                opcode::CONTINUATION
            };
            bytes.extend(client_frame(i + 1 == raw.len(), op, &[*b]));
        }
        let mut d = Decoder::new(1 << 20);
        let mut out = Vec::new();
        let mut frames = 0;
        for piece in bytes.chunks(5) {
            frames += d.decode(piece, &mut out).expect("valid");
        }
        assert_eq!(frames, raw.len());
        assert_eq!(out, vec![Message::Text(text.clone())]);

        // An invalid byte in the first fragment fails at once.
        let mut d = Decoder::new(1 << 20);
        let bad = client_frame(false, opcode::TEXT, &[b'a', 0xff]);
        assert_eq!(
            decode_all(&mut d, &bad).map(|_| ()),
            Err(ProtocolError::InvalidUtf8)
        );
        // A code point cut short by a fragment then broken by the next fails
        // with the next, although the message is not finished.
        let mut d = Decoder::new(1 << 20);
        let mut bytes = client_frame(false, opcode::TEXT, &[0xe2, 0x82]);
        assert!(decode_all(&mut d, &bytes).is_ok());
        bytes = client_frame(false, opcode::CONTINUATION, b"x");
        assert_eq!(
            decode_all(&mut d, &bytes).map(|_| ()),
            Err(ProtocolError::InvalidUtf8)
        );
        // An invalid byte in a frame that has only partly arrived fails too.
        let mut d = Decoder::new(1 << 20);
        let f = client_frame(true, opcode::TEXT, &[b'a', b'b', 0xc0, b'c', b'd', b'e']);
        assert_eq!(
            decode_all(&mut d, &f[..f.len() - 2]).map(|_| ()),
            Err(ProtocolError::InvalidUtf8)
        );
    }

    #[test]
    fn fragments_join_with_control_frames_between() {
        let mut d = Decoder::new(1 << 20);
        let mut bytes = client_frame(false, opcode::TEXT, b"he");
        bytes.extend(client_frame(true, opcode::PING, b""));
        bytes.extend(client_frame(false, opcode::CONTINUATION, b"l"));
        bytes.extend(client_frame(true, opcode::CONTINUATION, b"lo"));
        let (msgs, _) = decode_all(&mut d, &bytes).expect("valid");
        assert_eq!(
            msgs,
            vec![Message::Ping(vec![]), Message::Text("hello".into())]
        );
    }

    #[test]
    fn protocol_violations_name_their_close_code() {
        let cases: Vec<(Vec<u8>, u16)> = vec![
            (vec![0x81, 0x01, b'a'], 1002),       // unmasked
            (client_frame(true, 0x3, b""), 1002), // reserved opcode
            (
                {
                    let mut f = client_frame(true, opcode::TEXT, b"");
                    f[0] |= 0x40;
                    f
                },
                1002,
            ),
            (client_frame(false, opcode::PING, b""), 1002), // fragmented control
            (client_frame(true, opcode::PING, &[0; 126]), 1002), // control too long
            (client_frame(true, opcode::CONTINUATION, b"x"), 1002), // nothing to continue
            (client_frame(true, opcode::TEXT, &[0xff, 0xfe]), 1007), // not UTF-8
            (client_frame(true, opcode::CLOSE, &[3]), 1002), // 1-byte close
            (
                client_frame(true, opcode::CLOSE, &close_payload(1005, "")),
                1002,
            ),
            (client_frame(true, opcode::CLOSE, &[0x03, 0xe8, 0xff]), 1007), // reason not UTF-8
            (client_frame(true, opcode::BINARY, &[0; 2000]), 1009),
        ];
        for (bytes, code) in cases {
            let mut d = Decoder::new(1024);
            let e = decode_all(&mut d, &bytes).expect_err("invalid");
            assert_eq!(e.close_code(), code, "{bytes:?}");
        }
        let mut d = Decoder::new(1 << 20);
        let mut bytes = client_frame(false, opcode::TEXT, b"a");
        bytes.extend(client_frame(true, opcode::TEXT, b"b"));
        assert_eq!(
            decode_all(&mut d, &bytes).map(|_| ()),
            Err(ProtocolError::Protocol(
                "new message inside a fragmented one"
            ))
        );
    }

    #[test]
    fn a_too_large_frame_is_refused_from_its_header_alone() {
        let mut d = Decoder::new(1024);
        let mut header = vec![0x82, 0x80 | 127];
        header.extend_from_slice(&(1u64 << 40).to_be_bytes());
        assert_eq!(
            decode_all(&mut d, &header).map(|_| ()),
            Err(ProtocolError::TooLarge)
        );
    }

    #[test]
    fn server_headers_encode_every_length_form() {
        assert_eq!(
            frame_header(opcode::TEXT, 5),
            ([0x81, 5, 0, 0, 0, 0, 0, 0, 0, 0], 2)
        );
        let (h, n) = frame_header(opcode::TEXT, 300);
        assert_eq!(&h[..n], &[0x81, 126, 1, 44]);
        let (h, n) = frame_header(opcode::BINARY, 70000);
        assert_eq!(n, 10);
        assert_eq!(&h[2..10], &70000u64.to_be_bytes());
    }

    proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut d = Decoder::new(256);
            let mut out = Vec::new();
            if let Ok(n) = d.decode(&bytes, &mut out) {
                prop_assert!(n <= bytes.len());
            }
        }

        #[test]
        fn any_split_of_valid_frames_decodes_the_same(
            texts in proptest::collection::vec("[a-zé€😀]{0,200}", 1..5),
            cuts in proptest::collection::vec(0usize..3000, 0..8),
        ) {
            let mut bytes = Vec::new();
            for t in &texts {
                bytes.extend(client_frame(true, opcode::TEXT, t.as_bytes()));
            }
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(bytes.len())).collect();
            cuts.push(0);
            cuts.push(bytes.len());
            cuts.sort_unstable();
            let mut d = Decoder::new(1 << 20);
            let mut out = Vec::new();
            let mut frames = 0;
            for w in cuts.windows(2) {
                frames += d.decode(&bytes[w[0]..w[1]], &mut out).expect("valid");
            }
            prop_assert!(d.is_idle());
            prop_assert_eq!(frames, texts.len());
            let got: Vec<String> = out.into_iter().map(|m| match m { Message::Text(t) => t, _ => String::new() }).collect();
            prop_assert_eq!(got, texts);
        }

        /// A text message cut into fragments at any byte (code points split
        /// included), its frames cut into reads anywhere, decodes to itself;
        /// with one byte spoiled it fails with 1007, and the same way however
        /// it was cut.
        #[test]
        fn fragmented_text_is_checked_incrementally(
            text in "[a-zé€😀]{1,120}",
            frag_cuts in proptest::collection::vec(0usize..500, 0..10),
            read_step in 1usize..40,
            spoil in proptest::option::of(0usize..500),
        ) {
            let mut raw = text.as_bytes().to_vec();
            if let Some(at) = spoil {
                let at = at % raw.len();
                raw[at] = 0xff;
            }
            let mut cuts: Vec<usize> = frag_cuts.into_iter().map(|c| c % raw.len()).collect();
            cuts.push(0);
            cuts.push(raw.len());
            cuts.sort_unstable();
            cuts.dedup();
            let mut bytes = Vec::new();
            let n = cuts.len() - 1;
            for (i, w) in cuts.windows(2).enumerate() {
                let op = if i == 0 { opcode::TEXT } else { opcode::CONTINUATION };
                bytes.extend(client_frame(i + 1 == n, op, &raw[w[0]..w[1]]));
            }
            let mut whole = Decoder::new(1 << 20);
            let mut out_whole = Vec::new();
            let whole_result = whole.decode(&bytes, &mut out_whole).map(|_| ());
            let mut d = Decoder::new(1 << 20);
            let mut out = Vec::new();
            let mut result = Ok(());
            for piece in bytes.chunks(read_step) {
                if let Err(e) = d.decode(piece, &mut out) {
                    result = Err(e);
                    break;
                }
            }
            if spoil.is_some() {
                prop_assert_eq!(result, Err(ProtocolError::InvalidUtf8));
                prop_assert_eq!(whole_result, Err(ProtocolError::InvalidUtf8));
                prop_assert!(out.is_empty());
            } else {
                prop_assert_eq!(result, Ok(()));
                prop_assert_eq!(whole_result, Ok(()));
                prop_assert_eq!(&out, &vec![Message::Text(text.clone())]);
                prop_assert_eq!(out_whole, out);
            }
        }
    }
}
