//! A minimal HTTP/1.1 keep-alive client for `POST /api/publish`.
//!
//! One request at a time per connection; the publisher opens one connection per
//! publication it keeps in flight. Written out rather than taken from a crate so the
//! publishing side costs the generator (and the measurement) as little as possible.

use std::net::SocketAddr;

use anyhow::{Context, Result, anyhow, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A parsed response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
    /// The server said `Connection: close`.
    pub close: bool,
}

/// Parses one response from the front of `buf`: `Ok(None)` while incomplete,
/// else the response and how many bytes it took.
pub fn parse_response(buf: &[u8]) -> Result<Option<(Response, usize)>> {
    let Some(head_end) = find(buf, b"\r\n\r\n") else {
        if buf.len() > 64 * 1024 {
            bail!("response head over 64 KiB");
        }
        return Ok(None);
    };
    let head = std::str::from_utf8(&buf[..head_end]).context("response head is not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        bail!("not an HTTP/1 response: {status_line:?}");
    }
    let status: u16 = parts
        .next()
        .unwrap_or_default()
        .parse()
        .context("bad status code")?;

    let mut content_length = None;
    let mut chunked = false;
    let mut close = version == "HTTP/1.0";
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "content-length" => {
                content_length = Some(value.parse::<usize>().context("bad content-length")?)
            }
            "transfer-encoding" => chunked = value.to_ascii_lowercase().contains("chunked"),
            "connection" => close = value.eq_ignore_ascii_case("close"),
            _ => {}
        }
    }

    let body_start = head_end + 4;
    let rest = &buf[body_start..];
    if chunked {
        return Ok(parse_chunked(rest)?.map(|(body, used)| {
            (
                Response {
                    status,
                    body,
                    close,
                },
                body_start + used,
            )
        }));
    }
    let len = match (content_length, status) {
        (Some(len), _) => len,
        (None, 204 | 304) | (None, 100..=199) => 0,
        (None, _) => bail!("response without content-length or chunked encoding"),
    };
    if rest.len() < len {
        return Ok(None);
    }
    Ok(Some((
        Response {
            status,
            body: rest[..len].to_vec(),
            close,
        },
        body_start + len,
    )))
}

fn parse_chunked(mut buf: &[u8]) -> Result<Option<(Vec<u8>, usize)>> {
    let total = buf.len();
    let mut body = Vec::new();
    loop {
        let Some(line_end) = find(buf, b"\r\n") else {
            return Ok(None);
        };
        let size_text = std::str::from_utf8(&buf[..line_end])?;
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| anyhow!("bad chunk size {size_text:?}"))?;
        buf = &buf[line_end + 2..];
        if size == 0 {
            // Trailers end with an empty line; none are expected.
            let Some(end) = find(buf, b"\r\n") else {
                return Ok(None);
            };
            buf = &buf[end + 2..];
            return Ok(Some((body, total - buf.len())));
        }
        if buf.len() < size + 2 {
            return Ok(None);
        }
        body.extend_from_slice(&buf[..size]);
        buf = &buf[size + 2..];
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// One keep-alive connection to the server's HTTP API.
pub struct ApiClient {
    addr: SocketAddr,
    host: String,
    auth: String,
    stream: Option<TcpStream>,
    buf: Vec<u8>,
}

impl ApiClient {
    pub fn new(addr: SocketAddr, api_key: &str) -> Self {
        ApiClient {
            addr,
            host: addr.to_string(),
            auth: format!("Bearer {api_key}"),
            stream: None,
            buf: Vec::new(),
        }
    }

    /// A client to the same server, with its own connection.
    pub fn fresh(&self) -> ApiClient {
        ApiClient {
            addr: self.addr,
            host: self.host.clone(),
            auth: self.auth.clone(),
            stream: None,
            buf: Vec::new(),
        }
    }

    /// `POST path` with a JSON body; reconnects once if the kept-alive connection was closed.
    pub async fn post_json(&mut self, path: &str, body: &str) -> Result<Response> {
        let request = format!(
            "POST {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: {}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{body}",
            self.host,
            self.auth,
            body.len()
        );
        match self.round_trip(request.as_bytes()).await {
            Ok(resp) => Ok(resp),
            Err(_) if self.stream.is_none() => self.round_trip(request.as_bytes()).await,
            Err(e) => Err(e),
        }
    }

    /// `GET path`, like [`ApiClient::post_json`].
    pub async fn get(&mut self, path: &str) -> Result<Response> {
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: {}\r\n\r\n",
            self.host, self.auth
        );
        match self.round_trip(request.as_bytes()).await {
            Ok(resp) => Ok(resp),
            Err(_) if self.stream.is_none() => self.round_trip(request.as_bytes()).await,
            Err(e) => Err(e),
        }
    }

    async fn round_trip(&mut self, request: &[u8]) -> Result<Response> {
        if self.stream.is_none() {
            let stream = TcpStream::connect(self.addr)
                .await
                .context("connecting to the API")?;
            stream.set_nodelay(true)?;
            self.stream = Some(stream);
            self.buf.clear();
        }
        let result = self.exchange(request).await;
        match &result {
            Ok(resp) if !resp.close => {}
            _ => self.stream = None,
        }
        result
    }

    async fn exchange(&mut self, request: &[u8]) -> Result<Response> {
        let stream = self
            .stream
            .as_mut()
            .ok_or_else(|| anyhow!("not connected"))?;
        stream.write_all(request).await?;
        loop {
            if let Some((resp, used)) = parse_response(&self.buf)? {
                self.buf.drain(..used);
                return Ok(resp);
            }
            let n = stream.read_buf(&mut self.buf).await?;
            if n == 0 {
                bail!("API connection closed mid-response");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_length_response() {
        let raw = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 27\r\n\r\n{\"offset\":3,\"epoch\":\"abc\"}XHTTP";
        let (resp, used) = parse_response(raw).expect("valid").expect("complete");
        assert_eq!(resp.status, 200);
        assert_eq!(resp.body, b"{\"offset\":3,\"epoch\":\"abc\"}X");
        assert!(!resp.close);
        assert_eq!(&raw[used..], b"HTTP");
    }

    #[test]
    fn incomplete_responses_wait_for_more() {
        assert_eq!(
            parse_response(b"HTTP/1.1 200 OK\r\ncontent-le").expect("ok"),
            None
        );
        assert_eq!(
            parse_response(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nab").expect("ok"),
            None
        );
        assert_eq!(
            parse_response(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nab")
                .expect("ok"),
            None
        );
    }

    #[test]
    fn chunked_response() {
        let raw = b"HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n";
        let (resp, used) = parse_response(raw).expect("valid").expect("complete");
        assert_eq!(resp.status, 503);
        assert_eq!(resp.body, b"abcde");
        assert!(resp.close);
        assert_eq!(used, raw.len());
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(parse_response(b"SSH-2.0-OpenSSH\r\n\r\n").is_err());
        assert!(
            parse_response(b"HTTP/1.1 200 OK\r\n\r\n").is_err(),
            "no length"
        );
        let ok_no_body = parse_response(b"HTTP/1.1 204 No Content\r\n\r\n")
            .expect("valid")
            .expect("complete");
        assert_eq!(ok_no_body.0.body, b"");
    }
}
