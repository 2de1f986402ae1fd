//! `Content-Encoding` decoding of push bodies, bounded in size.
//!
//! Like the Go pushgateway (`decodeRequest` in its `main.go`), `gzip` and `snappy` (the
//! framed stream format of `snappy.NewReader`) are decoded, compared case-insensitively,
//! and any other encoding passes the body through untouched. Unlike Go, which decodes
//! while parsing (and lets a corrupt tail that falls on a line start go unnoticed), the
//! whole body is decoded first, so every corruption is an error, and the decoded size is
//! bounded so that a small compressed body cannot expand without limit.

use std::io::Read;

use bytes::Bytes;
use flate2::read::MultiGzDecoder;

/// Length of the fixed part of a gzip member header.
const GZIP_HEADER_LEN: usize = 10;

/// Why a body could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// The decoded body is larger than the configured limit (answer 413).
    #[error("request body larger than {limit} bytes")]
    TooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// A `gzip` body is empty (Go's text for this case).
    #[error("EOF")]
    GzipEmpty,
    /// A `gzip` body does not start with a gzip header.
    #[error("gzip: invalid header")]
    GzipHeader,
    /// A `gzip` body ends before its stream does.
    #[error("unexpected EOF")]
    GzipTruncated,
    /// A `gzip` body has corrupt compressed data or a wrong checksum.
    #[error("gzip: corrupt body: {detail}")]
    GzipCorrupt {
        /// What the decompressor reported.
        detail: String,
    },
    /// A `snappy` body is not a valid snappy framed stream.
    #[error("snappy: corrupt input")]
    SnappyCorrupt,
    /// A `snappy` body uses a reserved, unskippable chunk type.
    #[error("snappy: unsupported input")]
    SnappyUnsupported,
}

/// Decodes `body` according to `content_encoding`, bounded by `limit` decoded bytes.
///
/// `None` and unknown encodings return the body as is (still checked against `limit`).
pub fn decode(
    content_encoding: Option<&str>,
    body: Bytes,
    limit: usize,
) -> Result<Bytes, BodyError> {
    let encoding = content_encoding.map(str::trim).unwrap_or_default();
    if encoding.eq_ignore_ascii_case("gzip") {
        check_gzip_header(&body)?;
        let decoded = read_bounded(MultiGzDecoder::new(&body[..]), body.len(), limit).map_err(
            |err| match err {
                ReadError::TooLarge => BodyError::TooLarge { limit },
                ReadError::Io(err) if err.kind() == std::io::ErrorKind::UnexpectedEof => {
                    BodyError::GzipTruncated
                }
                ReadError::Io(err) => BodyError::GzipCorrupt {
                    detail: err.to_string(),
                },
            },
        )?;
        Ok(Bytes::from(decoded))
    } else if encoding.eq_ignore_ascii_case("snappy") {
        let decoded = read_bounded(snap::read::FrameDecoder::new(&body[..]), body.len(), limit)
            .map_err(|err| match err {
                ReadError::TooLarge => BodyError::TooLarge { limit },
                ReadError::Io(err) => snappy_error(&err),
            })?;
        Ok(Bytes::from(decoded))
    } else if body.len() > limit {
        Err(BodyError::TooLarge { limit })
    } else {
        Ok(body)
    }
}

/// The checks Go's `gzip.NewReader` makes before any data is read, with its texts.
fn check_gzip_header(body: &[u8]) -> Result<(), BodyError> {
    if body.is_empty() {
        return Err(BodyError::GzipEmpty);
    }
    if body.len() < GZIP_HEADER_LEN {
        return Err(BodyError::GzipTruncated);
    }
    // Magic bytes, then compression method 8 (deflate), the only one gzip defines.
    if body[..3] != [0x1f, 0x8b, 8] {
        return Err(BodyError::GzipHeader);
    }
    Ok(())
}

fn snappy_error(err: &std::io::Error) -> BodyError {
    let unsupported = err
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<snap::Error>())
        .is_some_and(|inner| matches!(inner, snap::Error::UnsupportedChunkType { .. }));
    if unsupported {
        BodyError::SnappyUnsupported
    } else {
        BodyError::SnappyCorrupt
    }
}

enum ReadError {
    TooLarge,
    Io(std::io::Error),
}

/// Reads `reader` to the end, failing as soon as more than `limit` bytes come out.
fn read_bounded(reader: impl Read, encoded_len: usize, limit: usize) -> Result<Vec<u8>, ReadError> {
    // Compressed metrics text typically expands about 5-10 times.
    let mut out = Vec::with_capacity(encoded_len.saturating_mul(8).min(limit));
    let cap = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
    reader
        .take(cap)
        .read_to_end(&mut out)
        .map_err(ReadError::Io)?;
    if out.len() > limit {
        return Err(ReadError::TooLarge);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    const TEXT: &[u8] = b"# TYPE m gauge\nm{a=\"b\"} 1\n";

    /// A named case: encoding header, body, and the decoded bytes or error text.
    type Case<'a, T> = (&'a str, Option<&'a str>, Vec<u8>, T);

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(data).expect("writing to a Vec");
        encoder.finish().expect("finishing into a Vec")
    }

    fn snappy(data: &[u8]) -> Vec<u8> {
        let mut encoder = snap::write::FrameEncoder::new(Vec::new());
        encoder.write_all(data).expect("writing to a Vec");
        encoder.into_inner().expect("flushing into a Vec")
    }

    #[test]
    fn decodes_each_encoding() {
        let mut two_members = gzip(b"m 1\n");
        two_members.extend_from_slice(&gzip(b"n 2\n"));
        let table: Vec<Case<&[u8]>> = vec![
            ("no header", None, TEXT.to_vec(), TEXT),
            ("identity", Some("identity"), TEXT.to_vec(), TEXT),
            ("unknown passes through", Some("br"), TEXT.to_vec(), TEXT),
            ("gzip", Some("gzip"), gzip(TEXT), TEXT),
            ("gzip in capitals", Some("GZIP"), gzip(TEXT), TEXT),
            (
                "gzip members concatenated",
                Some("gzip"),
                two_members,
                b"m 1\nn 2\n",
            ),
            ("snappy framed", Some("snappy"), snappy(TEXT), TEXT),
            ("snappy empty", Some("snappy"), Vec::new(), b""),
        ];
        for (name, encoding, body, want) in table {
            let decoded = decode(encoding, Bytes::from(body), 1 << 20).expect(name);
            assert_eq!(&decoded[..], want, "{name}");
        }
    }

    #[test]
    fn bad_bodies_answer_with_go_texts() {
        let mut bad_crc = gzip(TEXT);
        let crc_at = bad_crc.len() - 8;
        bad_crc[crc_at] ^= 0xff;
        let gz = gzip(TEXT);
        let table: Vec<Case<&str>> = vec![
            (
                "gzip of plain text",
                Some("gzip"),
                TEXT.to_vec(),
                "gzip: invalid header",
            ),
            ("gzip empty", Some("gzip"), Vec::new(), "EOF"),
            (
                "gzip shorter than a header",
                Some("gzip"),
                gz[..5].to_vec(),
                "unexpected EOF",
            ),
            (
                "gzip cut off",
                Some("gzip"),
                gz[..gz.len() - 4].to_vec(),
                "unexpected EOF",
            ),
            (
                "gzip bad checksum",
                Some("gzip"),
                bad_crc,
                "gzip: corrupt body: ",
            ),
            (
                "snappy of plain text",
                Some("snappy"),
                TEXT.to_vec(),
                "snappy: corrupt input",
            ),
            (
                "snappy block format",
                Some("snappy"),
                snap::raw::Encoder::new()
                    .compress_vec(TEXT)
                    .expect("compressing a small input"),
                "snappy: corrupt input",
            ),
        ];
        for (name, encoding, body, want) in table {
            let err = decode(encoding, Bytes::from(body), 1 << 20).expect_err(name);
            assert!(err.to_string().starts_with(want), "{name}: {err}");
        }
    }

    #[test]
    fn limit_bounds_the_decoded_size() {
        let big = vec![b'a'; 10_000];
        let table: Vec<(&str, Option<&str>, Vec<u8>)> = vec![
            ("identity", None, big.clone()),
            ("gzip bomb", Some("gzip"), gzip(&big)),
            ("snappy", Some("snappy"), snappy(&big)),
        ];
        for (name, encoding, body) in table {
            let err = decode(encoding, Bytes::from(body.clone()), 9_999).expect_err(name);
            assert!(
                matches!(err, BodyError::TooLarge { limit: 9_999 }),
                "{name}: {err}"
            );
            let ok = decode(encoding, Bytes::from(body), 10_000).expect("exactly at the limit");
            assert_eq!(ok.len(), 10_000, "{name}: whole body at the limit");
        }
    }
}
