//! `flood`: sends many small UDP datagrams to one address as fast as one core can, for
//! the exactness test and `cargo xtask bench tracer`.
//!
//! It is meant to run inside a test's own network namespace (`ip netns exec NS flood
//! ...`); the target must be an address in namespaces the caller created (see the
//! traffic rules in kernel.md). The loop is bounded by a packet count *and* a time
//! limit. Datagrams go out in `sendmmsg` batches from a connected socket, so one system
//! call carries up to `--batch` packets and the kernel does no per-packet route lookup.
//!
//! Output, one line on stdout: `sent=N seconds=S rate=R` (packets, wall time of the send
//! loop, packets per second), so callers can parse it.

use std::{
    net::{SocketAddr, UdpSocket},
    os::fd::AsRawFd as _,
    process::ExitCode,
    time::{Duration, Instant},
};

const USAGE: &str = "usage: flood ADDR:PORT [--count N] [--seconds S] [--size BYTES] [--batch K]\n\
    Sends N UDP datagrams of BYTES payload to ADDR:PORT in sendmmsg batches of K,\n\
    stopping after N packets or S seconds, whichever comes first.\n\
    Defaults: --count 1000000 --seconds 30 --size 16 --batch 1024";

/// Largest batch: the kernel caps one sendmmsg at UIO_MAXIOV (1024) messages.
const MAX_BATCH: usize = 1024;
/// Largest payload: keeps every datagram in one small skb (no fragmentation).
const MAX_SIZE: usize = 1400;

struct Options {
    target: SocketAddr,
    count: u64,
    limit: Duration,
    size: usize,
    batch: usize,
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Options, String> {
    let mut target = None;
    let mut count = 1_000_000_u64;
    let mut seconds = 30.0_f64;
    let mut size = 16_usize;
    let mut batch = MAX_BATCH;
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or_else(|| format!("{name} needs a value"));
        match arg.as_str() {
            "--count" => count = parse(&value("--count")?, "--count")?,
            "--seconds" => seconds = parse(&value("--seconds")?, "--seconds")?,
            "--size" => size = parse(&value("--size")?, "--size")?,
            "--batch" => batch = parse(&value("--batch")?, "--batch")?,
            "-h" | "--help" => return Err(String::new()),
            other if other.starts_with('-') => return Err(format!("unknown option {other}")),
            other if target.is_none() => target = Some(parse(other, "ADDR:PORT")?),
            other => return Err(format!("unexpected argument {other}")),
        }
    }
    let target = target.ok_or("ADDR:PORT is missing")?;
    if !(1..=MAX_BATCH).contains(&batch) {
        return Err(format!("--batch must be 1..={MAX_BATCH}"));
    }
    if !(1..=MAX_SIZE).contains(&size) {
        return Err(format!("--size must be 1..={MAX_SIZE}"));
    }
    if !(seconds.is_finite() && seconds > 0.0) {
        return Err("--seconds must be a positive number".into());
    }
    Ok(Options {
        target,
        count,
        limit: Duration::from_secs_f64(seconds),
        size,
        batch,
    })
}

fn parse<T: std::str::FromStr>(text: &str, what: &str) -> Result<T, String> {
    text.parse()
        .map_err(|_| format!("{what}: cannot parse {text:?}"))
}

/// What the send loop achieved.
struct Sent {
    packets: u64,
    elapsed: Duration,
}

/// Sends up to `options.count` datagrams within `options.limit`.
fn flood(options: &Options) -> std::io::Result<Sent> {
    let local: SocketAddr = if options.target.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    }
    .parse()
    .expect("a literal socket address");
    let socket = UdpSocket::bind(local)?;
    socket.connect(options.target)?;
    let fd = socket.as_raw_fd();

    // Every message of a batch points at the same payload: only the count matters.
    let mut payload = vec![0_u8; options.size];
    payload
        .iter_mut()
        .zip(b"dropgate flood ".iter().cycle())
        .for_each(|(byte, text)| *byte = *text);
    let mut iov = libc::iovec {
        iov_base: payload.as_mut_ptr().cast(),
        iov_len: payload.len(),
    };
    // SAFETY: mmsghdr is a plain C struct of integers and pointers; all-zero is a valid
    // value (no name, no control data, no flags).
    let mut messages: Vec<libc::mmsghdr> = vec![unsafe { std::mem::zeroed() }; options.batch];
    for message in &mut messages {
        message.msg_hdr.msg_iov = &raw mut iov;
        message.msg_hdr.msg_iovlen = 1;
    }

    let started = Instant::now();
    let deadline = started + options.limit;
    let mut sent = 0_u64;
    while sent < options.count && Instant::now() < deadline {
        let want = (options.count - sent).min(options.batch as u64) as u32;
        // SAFETY: `messages` holds `batch` >= `want` initialised headers, each pointing
        // at `iov`, which points at `payload`; all three outlive the call, and the kernel
        // writes only each header's `msg_len`.
        let done = unsafe { libc::sendmmsg(fd, messages.as_mut_ptr(), want, 0) };
        if done < 0 {
            let err = std::io::Error::last_os_error();
            match err.raw_os_error() {
                // Transient: a full queue, or an ICMP error reported on the connected
                // socket (it is cleared by being reported). Try again.
                Some(libc::ENOBUFS | libc::EAGAIN | libc::EINTR | libc::ECONNREFUSED) => {}
                _ => return Err(err),
            }
        } else {
            sent += done as u64;
        }
    }
    Ok(Sent {
        packets: sent,
        elapsed: started.elapsed(),
    })
}

fn main() -> ExitCode {
    let options = match parse_args(std::env::args().skip(1)) {
        Ok(options) => options,
        Err(message) => {
            if !message.is_empty() {
                eprintln!("flood: {message}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match flood(&options) {
        Ok(sent) => {
            let seconds = sent.elapsed.as_secs_f64();
            let rate = if seconds > 0.0 {
                sent.packets as f64 / seconds
            } else {
                0.0
            };
            println!("sent={} seconds={seconds:.3} rate={rate:.0}", sent.packets);
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("flood: sending to {}: {err}", options.target);
            ExitCode::FAILURE
        }
    }
}
