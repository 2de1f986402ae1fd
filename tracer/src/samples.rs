//! Per-packet drop samples: read from the kernel's ring buffer, named, and handed to
//! whoever listens (`dropgate watch`, `/api/v1/drops`).
//!
//! Samples are the detail, not the truth: the kernel rate-limits them and the ring can
//! overflow, and both are counted (`dropgate_samples_suppressed_total`,
//! `dropgate_events_lost_total`). The counts in `dropgate_packets_dropped_total` never
//! depend on them.

use std::{
    collections::VecDeque,
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use aya::maps::{MapData, RingBuf};
use serde::Serialize;
use tokio::{io::unix::AsyncFd, sync::broadcast};
use tracer_common::{direction, DropSample};

use crate::{
    collector::{protocol_name, ReasonNames, View},
    drop_class::DropClass,
    enrich::{Destination, Enricher},
    kallsyms::Kallsyms,
    netns::Names,
};

/// Which side of the packet's path a sample's interface is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// The interface the packet came in on (`skb_iif`, or a received frame's device).
    Ingress,
    /// The interface the packet was going out of (the device on the transmit path).
    Egress,
}

impl Direction {
    /// The kernel program's `DropSample::direction`; `None` when no interface is known.
    #[must_use]
    pub fn from_sample(raw: u8) -> Option<Self> {
        match raw {
            direction::INGRESS => Some(Self::Ingress),
            direction::EGRESS => Some(Self::Egress),
            _ => None,
        }
    }

    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Ingress => "ingress",
            Self::Egress => "egress",
        }
    }
}

/// A sampled drop with every number turned into a name.
#[derive(Clone, Debug, Serialize)]
pub struct DropEvent {
    /// Wall-clock time of the drop, RFC 3339 with microseconds.
    pub time: String,
    pub netns: String,
    pub interface: String,
    /// Whether `interface` is where the packet came in or where it was going out;
    /// `null` when no interface is known.
    pub direction: Option<Direction>,
    pub protocol: &'static str,
    pub src: Option<IpAddr>,
    pub sport: u16,
    pub dst: Option<IpAddr>,
    pub dport: u16,
    pub reason: String,
    pub location: String,
    /// What the drop means for traffic (transit, refused, local).
    pub class: DropClass,
    pub len: u32,
    /// Who is behind `dst` (bridge, Docker network, container, compose service).
    #[serde(skip_serializing_if = "Destination::is_empty")]
    pub target: Destination,
}

impl DropEvent {
    /// One line, like tcpdump or pwru print:
    /// `time netns iface(direction) proto src:port > dst:port reason location class`.
    #[must_use]
    pub fn line(&self) -> String {
        let endpoint = |addr: Option<IpAddr>, port: u16| match (addr, port) {
            (None, _) => "-".to_owned(),
            (Some(IpAddr::V6(a)), 0) => format!("[{a}]"),
            (Some(IpAddr::V6(a)), p) => format!("[{a}]:{p}"),
            (Some(a), 0) => a.to_string(),
            (Some(a), p) => format!("{a}:{p}"),
        };
        let interface = match self.direction {
            Some(direction) => format!("{}({})", self.interface, direction.name()),
            None => self.interface.clone(),
        };
        let mut line = format!(
            "{} {} {} {} {} > {} {} {} {}",
            self.time,
            self.netns,
            interface,
            self.protocol,
            endpoint(self.src, self.sport),
            endpoint(self.dst, self.dport),
            self.reason,
            self.location,
            self.class
        );
        let target = &self.target;
        for (key, value) in [
            ("container", &target.container),
            ("service", &target.service),
            ("network", &target.network),
            ("bridge", &target.bridge),
        ] {
            if let Some(value) = value {
                let _ = write!(line, " {key}={value}");
            }
        }
        line
    }
}

/// Turns raw samples into events: the name tables and the clock offset.
pub struct Namer {
    pub reasons: Arc<ReasonNames>,
    pub kallsyms: Arc<Kallsyms>,
    pub names: Arc<Names>,
    pub view: Arc<View>,
    pub enricher: Arc<Enricher>,
    /// Wall-clock time at monotonic zero, to date `bpf_ktime_get_ns()` stamps.
    boot_time: SystemTime,
}

impl Namer {
    #[must_use]
    pub fn new(
        reasons: Arc<ReasonNames>,
        kallsyms: Arc<Kallsyms>,
        names: Arc<Names>,
        view: Arc<View>,
        enricher: Arc<Enricher>,
    ) -> Self {
        Self {
            reasons,
            kallsyms,
            names,
            view,
            enricher,
            boot_time: SystemTime::now() - monotonic_now(),
        }
    }

    #[must_use]
    pub fn event(&self, sample: &DropSample) -> DropEvent {
        let time = self.boot_time + Duration::from_nanos(sample.timestamp_ns);
        let (src, dst) = addresses(sample);
        let reason = self.reasons.name(sample.reason);
        let location = self.kallsyms.name_at(sample.location);
        let protocol = protocol_name(sample.ethertype, sample.l4_proto);
        DropEvent {
            time: humantime::format_rfc3339_micros(time).to_string(),
            netns: self.names.namespace(sample.netns),
            interface: self.names.interface(sample.netns, sample.ifindex),
            direction: Direction::from_sample(sample.direction),
            protocol,
            src,
            sport: sample.sport,
            dst,
            dport: sample.dport,
            class: self.view.classes.class(&reason, &location, protocol),
            reason,
            location,
            len: sample.len,
            target: dst
                .map(|addr| self.enricher.destination(sample.netns, addr))
                .unwrap_or_default(),
        }
    }
}

fn addresses(sample: &DropSample) -> (Option<IpAddr>, Option<IpAddr>) {
    match sample.ethertype {
        0x0800 => {
            let v4 = |b: &[u8; 16]| IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]));
            (Some(v4(&sample.saddr)), Some(v4(&sample.daddr)))
        }
        0x86dd => (
            Some(IpAddr::V6(Ipv6Addr::from(sample.saddr))),
            Some(IpAddr::V6(Ipv6Addr::from(sample.daddr))),
        ),
        _ => (None, None),
    }
}

/// `CLOCK_MONOTONIC`, the clock of `bpf_ktime_get_ns()`.
fn monotonic_now() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into valid memory we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// The most recent events and a feed of new ones; shared by the reader and consumers.
pub struct SampleHub {
    recent: Mutex<VecDeque<Arc<DropEvent>>>,
    capacity: usize,
    feed: broadcast::Sender<Arc<DropEvent>>,
}

impl SampleHub {
    #[must_use]
    pub fn new(capacity: usize) -> Self {
        // Deep enough for a burst at the kernel's full sampling rate on a few CPUs.
        let (feed, _) = broadcast::channel(16 * 1024);
        Self {
            recent: Mutex::new(VecDeque::with_capacity(capacity)),
            capacity,
            feed,
        }
    }

    pub fn publish(&self, event: DropEvent) {
        let event = Arc::new(event);
        {
            let mut recent = self.recent.lock().expect("recent lock");
            if recent.len() == self.capacity {
                recent.pop_front();
            }
            if self.capacity > 0 {
                recent.push_back(Arc::clone(&event));
            }
        }
        // No subscriber is fine: then nobody is watching.
        let _ = self.feed.send(event);
    }

    /// Up to `limit` most recent events, newest last.
    pub fn recent(&self, limit: usize) -> Vec<Arc<DropEvent>> {
        let recent = self.recent.lock().expect("recent lock");
        recent
            .iter()
            .skip(recent.len().saturating_sub(limit))
            .cloned()
            .collect()
    }

    /// New events from now on. A slow subscriber misses events (and is told how many).
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<DropEvent>> {
        self.feed.subscribe()
    }
}

/// How often the reader looks into the ring without being woken, while it lingers.
const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// How long the reader keeps polling after it last found samples.
///
/// The probe wakes the reader only for the first sample of a CPU's one-second sampling
/// window and every 64th after it (see tracer-ebpf's `send_sample`); the others are
/// submitted silently. Every silent sample is therefore submitted less than a second
/// (plus one clock tick, which ends a window) after a waking one, and a waking sample
/// that found unread samples before it is found together with them. Polling for this
/// long after the last find thus picks up every silent sample; after that the reader
/// sleeps until the kernel wakes it: an idle host costs no wake-ups at all.
const LINGER: Duration = Duration::from_millis(1500);

/// Copies every sample in `ring` into `batch`. Raw samples are copied out first, and
/// named later: naming may block briefly (namespace entry).
fn take_samples(ring: &mut RingBuf<MapData>, batch: &mut Vec<DropSample>) {
    while let Some(item) = ring.next() {
        if item.len() >= std::mem::size_of::<DropSample>() {
            // SAFETY: the kernel wrote a DropSample (same #[repr(C)] definition) at the
            // start of this record; read_unaligned copes with any alignment.
            batch.push(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<DropSample>()) });
        }
    }
}

/// Reads the ring buffer until the task is dropped, publishing every sample.
pub async fn read_samples(
    ring: RingBuf<MapData>,
    namer: Namer,
    hub: Arc<SampleHub>,
) -> std::io::Result<()> {
    // SAFETY: the RingBuf owns its map's descriptor, keeps it open and unchanged for its
    // whole life, and the AsyncFd owns the RingBuf.
    let mut fd = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
        .map_err(std::io::Error::from)?;
    // Samples may have come before the reader was registered: look once, then linger.
    let mut linger_until = Some(tokio::time::Instant::now() + LINGER);
    loop {
        let mut batch = Vec::new();
        let lingering = linger_until.filter(|until| tokio::time::Instant::now() < *until);
        let guard = match lingering {
            Some(_) => tokio::time::timeout(POLL_INTERVAL, fd.readable_mut())
                .await
                .ok(),
            None => Some(fd.readable_mut().await),
        };
        match guard {
            Some(guard) => {
                let mut guard = guard?;
                take_samples(guard.get_inner_mut(), &mut batch);
                guard.clear_ready();
            }
            None => take_samples(fd.get_mut(), &mut batch),
        }
        if !batch.is_empty() {
            linger_until = Some(tokio::time::Instant::now() + LINGER);
        }
        for (i, sample) in batch.iter().enumerate() {
            let event = namer.event(sample);
            // Only the namespaces asked for (`--trace.netns`, diagnose's own): others'
            // samples would push theirs out of the recent ones.
            if namer.view.reports(&event.netns) {
                hub.publish(event);
            }
            // Let consumers run during a long burst instead of overrunning them.
            if i % 256 == 255 {
                tokio::task::yield_now().await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(src: Option<IpAddr>, sport: u16, dst: Option<IpAddr>, dport: u16) -> DropEvent {
        DropEvent {
            time: "2026-11-25T10:00:00.000001Z".into(),
            netns: "host".into(),
            interface: "eth0".into(),
            direction: Some(Direction::Ingress),
            protocol: "tcp",
            src,
            sport,
            dst,
            dport,
            reason: "IP_INADDRERRORS".into(),
            location: "ip_error".into(),
            class: DropClass::Transit,
            len: 60,
            target: Destination::default(),
        }
    }

    #[test]
    fn lines_read_like_tcpdump() {
        let v4 = event(
            Some("10.0.0.2".parse().expect("ip")),
            40000,
            Some("172.18.0.2".parse().expect("ip")),
            80,
        );
        assert_eq!(
            v4.line(),
            "2026-11-25T10:00:00.000001Z host eth0(ingress) tcp 10.0.0.2:40000 > 172.18.0.2:80 IP_INADDRERRORS ip_error transit"
        );
        let mut outgoing = v4.clone();
        outgoing.direction = Some(Direction::Egress);
        assert!(
            outgoing.line().contains(" host eth0(egress) tcp "),
            "{}",
            outgoing.line()
        );
        let mut unknown = v4.clone();
        unknown.direction = None;
        assert!(
            unknown.line().contains(" host eth0 tcp "),
            "{}",
            unknown.line()
        );
        let v6 = event(
            Some("fe80::1".parse().expect("ip")),
            0,
            Some("ff02::2".parse().expect("ip")),
            0,
        );
        assert!(
            v6.line().contains(" [fe80::1] > [ff02::2] "),
            "{}",
            v6.line()
        );
        let none = event(None, 0, None, 0);
        assert!(none.line().contains(" - > - "), "{}", none.line());
        let mut docker = v4.clone();
        docker.target.container = Some("pushgateway-1".into());
        docker.target.service = Some("pushgateway".into());
        assert!(
            docker
                .line()
                .ends_with("ip_error transit container=pushgateway-1 service=pushgateway"),
            "{}",
            docker.line()
        );
    }

    #[test]
    fn addresses_follow_the_ethertype() {
        let mut sample = DropSample {
            ethertype: 0x0800,
            ..DropSample::default()
        };
        sample.saddr[..4].copy_from_slice(&[10, 0, 0, 1]);
        sample.daddr[..4].copy_from_slice(&[10, 0, 0, 2]);
        assert_eq!(
            addresses(&sample),
            (
                Some("10.0.0.1".parse().expect("ip")),
                Some("10.0.0.2".parse().expect("ip"))
            )
        );
        sample.ethertype = 0x0806;
        assert_eq!(addresses(&sample), (None, None));
    }

    #[test]
    fn the_hub_keeps_the_newest() {
        let hub = SampleHub::new(2);
        for port in 1..=3 {
            hub.publish(event(None, port, None, 0));
        }
        let recent: Vec<u16> = hub.recent(10).iter().map(|e| e.sport).collect();
        assert_eq!(recent, vec![2, 3]);
        assert_eq!(hub.recent(1).len(), 1);
    }
}
