//! Reading a complete HTTP/1.1 answer, for the tracer's two small clients: the Docker
//! Engine API on its Unix socket (enrich/docker.rs) and `dropgate import` (import/).
//! Both send `Connection: close` and read to the end of the stream, so an answer is
//! parsed whole: status, then a body delimited by `Content-Length`, chunks, or the end.

/// A parsed answer.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    /// The whole first line (`HTTP/1.1 404 Not Found`), for messages.
    pub status_line: String,
    pub body: Vec<u8>,
}

impl Response {
    /// The body as text, for messages (lossy, trimmed).
    #[must_use]
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).trim().to_owned()
    }
}

/// Parses a complete answer; the error says what is wrong with it.
pub fn parse_response(raw: &[u8]) -> Result<Response, String> {
    let head_end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no end of headers")?;
    let head = std::str::from_utf8(&raw[..head_end]).map_err(|_| "headers are not UTF-8")?;
    let body = &raw[head_end + 4..];
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let mut chunked = false;
    let mut length = None;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.to_ascii_lowercase().contains("chunked");
        } else if name.eq_ignore_ascii_case("content-length") {
            length = Some(
                value
                    .parse::<usize>()
                    .map_err(|_| format!("bad Content-Length {value:?}"))?,
            );
        }
    }
    let body = if chunked {
        decode_chunked(body)?
    } else if let Some(length) = length {
        body.get(..length)
            .map(<[u8]>::to_vec)
            .ok_or_else(|| format!("body cut short: {} of {length} bytes", body.len()))?
    } else {
        body.to_vec()
    };
    Ok(Response {
        status,
        status_line: status_line.to_owned(),
        body,
    })
}

/// Joins the chunks of a `Transfer-Encoding: chunked` body.
fn decode_chunked(mut data: &[u8]) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    loop {
        let line_end = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("chunk size line cut short")?;
        let line = std::str::from_utf8(&data[..line_end]).map_err(|_| "bad chunk size line")?;
        // Chunk extensions (`;name=value`) carry nothing we need.
        let hex = line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(hex, 16).map_err(|_| format!("bad chunk size {hex:?}"))?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Ok(body);
        }
        let chunk = data.get(..size).ok_or("chunk cut short")?;
        body.extend_from_slice(chunk);
        data = data
            .get(size..)
            .and_then(|rest| rest.strip_prefix(b"\r\n"))
            .ok_or("chunk not followed by CRLF")?;
    }
}
