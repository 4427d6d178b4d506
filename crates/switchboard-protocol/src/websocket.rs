//! The WebSocket framing of RFC 6455, server side, without I/O.
//!
//! [`Decoder`] turns bytes a client sent into [`Message`]s; it keeps no buffer
//! of its own between calls except an unfinished fragmented message, so an
//! idle connection costs nothing here. The transport reads into a scratch
//! buffer shared per thread and keeps only an incomplete frame's bytes.
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

/// Decodes client frames. Holds only a fragmented message in progress.
#[derive(Debug)]
pub struct Decoder {
    max_message: usize,
    /// Opcode and payload of a fragmented message in progress.
    fragments: Option<(u8, Vec<u8>)>,
}

impl Decoder {
    pub fn new(max_message: usize) -> Self {
        Decoder {
            max_message,
            fragments: None,
        }
    }

    /// No fragmented message is in progress: the decoder holds nothing.
    pub fn is_idle(&self) -> bool {
        self.fragments.is_none()
    }

    /// Decodes every complete frame at the start of `input`, pushing finished
    /// messages to `out`. Returns how many bytes were used; the rest is an
    /// incomplete frame the caller keeps for the next call. After an error the
    /// connection must be closed with the error's code.
    pub fn decode(&mut self, input: &[u8], out: &mut Vec<Message>) -> Result<usize, ProtocolError> {
        let mut used = 0;
        loop {
            let rest = &input[used..];
            match self.frame(rest, out)? {
                Some(n) => used += n,
                None => return Ok(used),
            }
            if matches!(out.last(), Some(Message::Close(..))) {
                // Nothing after a close counts.
                return Ok(input.len());
            }
        }
    }

    /// Decodes one frame; `None` when `input` does not hold a whole one yet.
    fn frame(
        &mut self,
        input: &[u8],
        out: &mut Vec<Message>,
    ) -> Result<Option<usize>, ProtocolError> {
        if input.len() < 2 {
            return Ok(None);
        }
        let b0 = input[0];
        let b1 = input[1];
        let fin = b0 & 0x80 != 0;
        if b0 & 0x70 != 0 {
            return Err(ProtocolError::Protocol("reserved bits set"));
        }
        let op = b0 & 0x0F;
        if b1 & 0x80 == 0 {
            return Err(ProtocolError::Protocol("client frames must be masked"));
        }
        let (len, mut pos) = match b1 & 0x7F {
            126 => {
                if input.len() < 4 {
                    return Ok(None);
                }
                (u64::from(u16::from_be_bytes([input[2], input[3]])), 4)
            }
            127 => {
                if input.len() < 10 {
                    return Ok(None);
                }
                let mut b = [0u8; 8];
                b.copy_from_slice(&input[2..10]);
                let n = u64::from_be_bytes(b);
                if n >> 63 != 0 {
                    return Err(ProtocolError::Protocol(
                        "payload length has its top bit set",
                    ));
                }
                (n, 10)
            }
            n => (u64::from(n), 2),
        };
        let is_control = op & 0x8 != 0;
        if is_control {
            if !fin {
                return Err(ProtocolError::Protocol("fragmented control frame"));
            }
            if len > 125 {
                return Err(ProtocolError::Protocol("control frame over 125 bytes"));
            }
        }
        match op {
            opcode::CONTINUATION
            | opcode::TEXT
            | opcode::BINARY
            | opcode::CLOSE
            | opcode::PING
            | opcode::PONG => {}
            _ => return Err(ProtocolError::Protocol("unknown opcode")),
        }
        let so_far = self.fragments.as_ref().map_or(0, |(_, p)| p.len()) as u64;
        if !is_control && len.saturating_add(so_far) > self.max_message as u64 {
            return Err(ProtocolError::TooLarge);
        }
        if input.len() < pos + 4 {
            return Ok(None);
        }
        let mask = [input[pos], input[pos + 1], input[pos + 2], input[pos + 3]];
        pos += 4;
        let len = len as usize;
        let Some(end) = pos.checked_add(len) else {
            return Err(ProtocolError::TooLarge);
        };
        if input.len() < end {
            return Ok(None);
        }
        let payload = &input[pos..end];
        match op {
            opcode::CONTINUATION => {
                let Some((first_op, mut buf)) = self.fragments.take() else {
                    return Err(ProtocolError::Protocol("continuation without a message"));
                };
                unmask_into(payload, mask, &mut buf);
                if fin {
                    out.push(finish(first_op, buf)?);
                } else {
                    if first_op == opcode::TEXT {
                        check_utf8_prefix(&buf)?;
                    }
                    self.fragments = Some((first_op, buf));
                }
            }
            opcode::TEXT | opcode::BINARY => {
                if self.fragments.is_some() {
                    return Err(ProtocolError::Protocol(
                        "new message inside a fragmented one",
                    ));
                }
                let mut buf = Vec::with_capacity(len);
                unmask_into(payload, mask, &mut buf);
                if fin {
                    out.push(finish(op, buf)?);
                } else {
                    if op == opcode::TEXT {
                        check_utf8_prefix(&buf)?;
                    }
                    self.fragments = Some((op, buf));
                }
            }
            _ => {
                let mut buf = Vec::with_capacity(len);
                unmask_into(payload, mask, &mut buf);
                out.push(match op {
                    opcode::PING => Message::Ping(buf),
                    opcode::PONG => Message::Pong(buf),
                    _ => close_message(&buf)?,
                });
            }
        }
        Ok(Some(end))
    }
}

fn unmask_into(payload: &[u8], mask: [u8; 4], out: &mut Vec<u8>) {
    // The mask restarts with every frame (RFC 6455 §5.3).
    out.reserve(payload.len());
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
}

fn finish(op: u8, buf: Vec<u8>) -> Result<Message, ProtocolError> {
    if op == opcode::TEXT {
        String::from_utf8(buf)
            .map(Message::Text)
            .map_err(|_| ProtocolError::InvalidUtf8)
    } else {
        Ok(Message::Binary(buf))
    }
}

/// Fails fast when an unfinished text message can no longer become UTF-8.
fn check_utf8_prefix(buf: &[u8]) -> Result<(), ProtocolError> {
    match std::str::from_utf8(buf) {
        Ok(_) => Ok(()),
        // An incomplete code point at the very end may still be completed.
        Err(e) if e.error_len().is_none() => Ok(()),
        Err(_) => Err(ProtocolError::InvalidUtf8),
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
        assert_eq!(n, bytes.len());
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
        let mut d = Decoder::new(1 << 20);
        let f = client_frame(true, opcode::TEXT, &[b'a'; 300]);
        for cut in [0, 1, 2, 3, 7, 299, f.len() - 1] {
            let (msgs, n) = decode_all(&mut d, &f[..cut]).expect("valid so far");
            assert!(msgs.is_empty());
            assert_eq!(n, 0);
        }
        let (msgs, n) = decode_all(&mut d, &f).expect("valid");
        assert_eq!(n, f.len());
        assert_eq!(msgs.len(), 1);
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
            texts in proptest::collection::vec("[a-zé]{0,200}", 1..5),
            cut in 0usize..2000,
        ) {
            let mut bytes = Vec::new();
            for t in &texts {
                bytes.extend(client_frame(true, opcode::TEXT, t.as_bytes()));
            }
            let cut = cut.min(bytes.len());
            let mut d = Decoder::new(1 << 20);
            let mut out = Vec::new();
            let used = d.decode(&bytes[..cut], &mut out).expect("valid");
            let mut rest = bytes[used..].to_vec();
            let used2 = d.decode(&rest, &mut out).expect("valid");
            rest.drain(..used2);
            prop_assert!(rest.is_empty());
            let got: Vec<String> = out.into_iter().map(|m| match m { Message::Text(t) => t, _ => String::new() }).collect();
            prop_assert_eq!(got, texts);
        }
    }
}
