//! Who is behind a dropped packet's destination: the bridge whose subnet holds the
//! address, and, when a Docker engine answers, the container, its compose service and
//! its network.
//!
//! Enrichment never fails a sample: anything unknown is left out. The bridges of the
//! drop's namespace are read at once from what the namespace loop keeps of its link and
//! address events (see `netlink_loop`); the Docker engine's networks and containers come
//! from a cache that a background thread fills through its HTTP API over the unix socket
//! (hyper's client: see `http_client`): again whenever the engine's event stream tells
//! of a container or network change or a lookup misses (at most once a second), and
//! every minute in any case. A host with a thousand containers is not asked for all of
//! them every few seconds.

mod docker;
pub mod rtnetlink;

use std::{
    collections::HashMap,
    net::IpAddr,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use serde::Serialize;

use self::{docker::DockerView, rtnetlink::BridgeSubnet};

/// How often the caches are refreshed when nothing asks for it, while the engine's
/// event stream is open.
const REFRESH_EVERY: Duration = Duration::from_mins(1);
/// The same without an event stream (no engine yet, or it does not answer `/events`).
const REFRESH_WITHOUT_EVENTS_EVERY: Duration = Duration::from_secs(5);
/// A miss refreshes sooner, but never more often than this.
const MISS_REFRESH_AT_MOST_EVERY: Duration = Duration::from_secs(1);
/// A Docker engine that stops answering keeps its names this long (a busy engine may
/// miss a refresh or two); then they are forgotten.
const DOCKER_NAMES_OUTLIVE_THE_ENGINE_BY: Duration = Duration::from_secs(30);

/// Why a refresh found nothing; never surfaces in a sample, only in debug logs.
#[derive(Debug, thiserror::Error)]
pub enum EnrichError {
    /// The Docker host is not a `unix:///path` address (the only kind supported).
    #[error("Docker host `{0}` is not supported: use unix:///path/to/docker.sock")]
    UnsupportedDockerHost(String),
    /// Connecting to, writing to or reading from the Docker socket failed.
    #[error("Docker API at {path}: {source}")]
    DockerIo {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The Docker API answered, but not with a complete, successful HTTP response.
    #[error("Docker API at {path}, GET {uri}: {what}")]
    DockerHttp {
        path: PathBuf,
        uri: &'static str,
        what: String,
    },
    /// The Docker API's JSON is not what its documentation describes.
    #[error("Docker API, GET {uri}: unexpected JSON: {source}")]
    DockerJson {
        uri: &'static str,
        source: serde_json::Error,
    },
    /// An rtnetlink dump inside a namespace failed.
    #[error("rtnetlink in namespace {namespace}: {source}")]
    Netlink {
        namespace: String,
        source: std::io::Error,
    },
}

/// What is known about a destination address.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Destination {
    /// The bridge (in the drop's namespace) whose subnet holds the address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bridge: Option<String>,
    /// The Docker network of that subnet.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// The container with that address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// Its `com.docker.compose.service` label.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
}

impl Destination {
    #[must_use]
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// An IP network: an address and a prefix length, e.g. `172.17.0.0/16`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Subnet {
    addr: IpAddr,
    prefix: u8,
}

impl Subnet {
    /// `addr/prefix`; `None` when the prefix is longer than the address.
    #[must_use]
    pub fn new(addr: IpAddr, prefix: u8) -> Option<Self> {
        let bits = match addr {
            IpAddr::V4(_) => 32,
            IpAddr::V6(_) => 128,
        };
        (prefix <= bits).then_some(Self { addr, prefix })
    }

    /// Parses `172.17.0.0/16` or `fd00::/64` (Docker's IPAM notation).
    #[must_use]
    pub fn parse(text: &str) -> Option<Self> {
        let (addr, prefix) = text.trim().split_once('/')?;
        Self::new(addr.parse().ok()?, prefix.parse().ok()?)
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// The network address as written: `172.17.0.0/16`.
    #[must_use]
    pub fn network(&self) -> String {
        format!("{}/{}", self.addr, self.prefix)
    }

    /// Whether `addr` lies in this subnet (an IPv4 address is never in an IPv6 subnet).
    #[must_use]
    pub fn contains(&self, addr: IpAddr) -> bool {
        // Host bits to ignore; a shift by the full width (prefix 0) leaves no mask.
        let host_bits = |width: u32| width - u32::from(self.prefix).min(width);
        match (self.addr, addr) {
            (IpAddr::V4(net), IpAddr::V4(a)) => {
                let mask = u32::MAX.checked_shl(host_bits(32)).unwrap_or(0);
                u32::from(net) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(a)) => {
                let mask = u128::MAX.checked_shl(host_bits(128)).unwrap_or(0);
                u128::from(net) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

/// The caches samples are answered from.
#[derive(Debug, Default)]
struct Cache {
    /// Bridge subnets by namespace inode.
    bridges: HashMap<u32, Vec<BridgeSubnet>>,
    docker: DockerView,
}

impl Cache {
    /// What the caches say about `addr` seen from namespace `netns`.
    fn lookup(&self, netns: u32, addr: IpAddr) -> Destination {
        // The most specific subnet wins, as in routing.
        let bridge = self
            .bridges
            .get(&netns)
            .into_iter()
            .flatten()
            .filter(|b| b.subnet.contains(addr))
            .max_by_key(|b| b.subnet.prefix())
            .map(|b| b.bridge.clone());
        let endpoint = self.docker.endpoints.get(&addr);
        let network = endpoint.map(|e| e.network.as_str()).or_else(|| {
            self.docker
                .networks
                .iter()
                .filter_map(|(name, net)| {
                    let longest = net
                        .subnets
                        .iter()
                        .filter(|s| s.contains(addr))
                        .map(Subnet::prefix)
                        .max()?;
                    Some((longest, name.as_str()))
                })
                .max()
                .map(|(_, name)| name)
        });
        // Another namespace may reuse Docker's subnets with a bridge of its own: the
        // engine's names only apply where its bridge is the one that owns the address.
        let network_bridge = network
            .and_then(|name| self.docker.networks.get(name))
            .and_then(|net| net.bridge.as_deref());
        if let (Some(seen), Some(docker)) = (bridge.as_deref(), network_bridge) {
            if seen != docker {
                return Destination {
                    bridge,
                    ..Destination::default()
                };
            }
        }
        Destination {
            bridge,
            network: network.map(str::to_owned),
            container: endpoint.map(|e| e.container.clone()),
            service: endpoint.and_then(|e| e.service.clone()),
        }
    }
}

/// State shared by the enricher and its refresher thread.
struct Shared {
    cache: Mutex<Cache>,
    /// When a miss last asked for an early refresh.
    last_nudge: Mutex<Option<Instant>>,
    /// Whether the engine's event stream is open: then it tells of every change, and a
    /// miss is no reason to ask the engine again.
    docker_events: std::sync::atomic::AtomicBool,
}

/// Looks destinations up; cheap to call per sample (answers come from caches).
///
/// A background thread refreshes the caches; it ends by itself once the enricher is
/// dropped (at the latest after a refresh in progress, i.e. a few seconds).
pub struct Enricher {
    shared: Arc<Shared>,
    /// Asks the refresher for an early refresh; capacity 1, so requests coalesce.
    nudge: tokio::sync::mpsc::Sender<()>,
    docker: bool,
    bridges: BridgeSource,
}

impl Enricher {
    /// `bridges` gives the bridge subnets of a namespace by inode (the namespace
    /// loop's); `docker_host` is the Docker Engine API address (`unix:///path`), `None`
    /// for no Docker lookups.
    pub fn new(bridges: BridgeSource, docker_host: Option<&str>) -> Self {
        let docker = match docker_host.map(docker_socket).transpose() {
            Ok(socket) => socket,
            Err(err) => {
                tracing::debug!("no container names: {err}");
                None
            }
        };
        let shared = Arc::new(Shared {
            cache: Mutex::new(Cache::default()),
            last_nudge: Mutex::new(None),
            docker_events: std::sync::atomic::AtomicBool::new(false),
        });
        let (nudge, nudges) = tokio::sync::mpsc::channel(1);
        let has_docker = docker.is_some();
        let refresher = Refresher {
            shared: Arc::downgrade(&shared),
            docker,
            docker_up: None,
            docker_answered: None,
        };
        let spawned = std::thread::Builder::new()
            .name("dropgate-enrich".into())
            .spawn(move || refresher.run(nudges));
        if let Err(err) = spawned {
            tracing::warn!("cannot start the enrichment thread, samples stay unnamed: {err}");
        }
        Self {
            shared,
            nudge,
            docker: has_docker,
            bridges,
        }
    }

    /// What is known about `addr` as seen from the namespace with inode `netns`.
    pub fn destination(&self, netns: u32, addr: IpAddr) -> Destination {
        let bridges = (self.bridges)(netns);
        let mut cache = self.shared.cache.lock().expect("enrichment cache lock");
        cache.bridges.insert(netns, bridges);
        let found = cache.lookup(netns, addr);
        drop(cache);
        // Bridges come from the namespace loop, fresh with every lookup. A destination
        // that is no container (most drops: other hosts, the host's own addresses) asks
        // the engine again only while no event stream says when something changed.
        if self.docker
            && found.container.is_none()
            && !self
                .shared
                .docker_events
                .load(std::sync::atomic::Ordering::Relaxed)
        {
            self.ask_for_refresh();
        }
        found
    }

    /// Asks the refresher to run soon; at most once per `MISS_REFRESH_AT_MOST_EVERY`.
    fn ask_for_refresh(&self) {
        let mut last = self.shared.last_nudge.lock().expect("nudge lock");
        if last.is_some_and(|at| at.elapsed() < MISS_REFRESH_AT_MOST_EVERY) {
            return;
        }
        *last = Some(Instant::now());
        // Full: a refresh is already due. Disconnected: the refresher could not start.
        let _ = self.nudge.try_send(());
    }
}

/// The bridge subnets of the namespace with this inode, as they are now.
pub type BridgeSource = Arc<dyn Fn(u32) -> Vec<BridgeSubnet> + Send + Sync>;

/// The background side: fills the cache from the namespace loop and the Docker API.
struct Refresher {
    shared: std::sync::Weak<Shared>,
    docker: Option<PathBuf>,
    /// Whether the last Docker query worked; logs only when this changes.
    docker_up: Option<bool>,
    /// When the engine last answered.
    docker_answered: Option<Instant>,
}

impl Refresher {
    /// Serves refreshes on a runtime of this thread's own (the Docker calls and the
    /// event stream are hyper's) until the enricher is dropped.
    fn run(self, nudges: tokio::sync::mpsc::Receiver<()>) {
        match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(runtime) => runtime.block_on(self.serve(nudges)),
            Err(err) => tracing::warn!("cannot start the enrichment thread's runtime: {err}"),
        }
    }

    async fn serve(mut self, mut nudges: tokio::sync::mpsc::Receiver<()>) {
        let mut events: Option<docker::Events> = None;
        loop {
            let started = tokio::time::Instant::now();
            // Opened before the query, so that no change after it goes untold.
            if events.is_none() {
                if let Some(socket) = &self.docker {
                    events = docker::Events::open(socket)
                        .await
                        .inspect_err(|err| tracing::debug!("no Docker events: {err}"))
                        .ok();
                }
            }
            let docker = self.docker_view().await;
            let Some(shared) = self.shared.upgrade() else {
                return;
            };
            shared
                .docker_events
                .store(events.is_some(), std::sync::atomic::Ordering::Relaxed);
            {
                let mut cache = shared.cache.lock().expect("enrichment cache lock");
                // Filled again by each lookup, from the namespace loop: only keep it
                // from growing with namespaces long gone.
                cache.bridges.clear();
                if let Some(docker) = docker {
                    cache.docker = docker;
                }
            }
            drop(shared);
            let every = if events.is_some() {
                REFRESH_EVERY
            } else {
                REFRESH_WITHOUT_EVENTS_EVERY
            };
            let told = async {
                match events.as_mut() {
                    Some(stream) => stream.next().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                nudge = nudges.recv() => {
                    if nudge.is_none() {
                        return;
                    }
                }
                open = told => {
                    if !open {
                        events = None;
                        if let Some(shared) = self.shared.upgrade() {
                            shared
                                .docker_events
                                .store(false, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                }
                () = tokio::time::sleep_until(started + every) => {}
            }
            // However many misses and events: at most one refresh a second.
            tokio::time::sleep_until(started + MISS_REFRESH_AT_MOST_EVERY).await;
        }
    }

    /// The engine's networks and containers; `None` to keep the cached view (no engine
    /// configured, or it missed an answer but did answer recently), an empty view once
    /// it has been silent for long (a vanished engine takes its names with it).
    async fn docker_view(&mut self) -> Option<DockerView> {
        let socket = self.docker.as_deref()?;
        match docker::query(socket).await {
            Ok(view) => {
                if self.docker_up != Some(true) {
                    tracing::debug!(
                        socket = %socket.display(),
                        containers = view.endpoints.len(),
                        "Docker API answers: naming containers"
                    );
                }
                self.docker_up = Some(true);
                self.docker_answered = Some(Instant::now());
                Some(view)
            }
            Err(err) => {
                if self.docker_up != Some(false) {
                    tracing::debug!("no container names: {err}");
                }
                self.docker_up = Some(false);
                let recently = self
                    .docker_answered
                    .is_some_and(|at| at.elapsed() < DOCKER_NAMES_OUTLIVE_THE_ENGINE_BY);
                (!recently).then(DockerView::default)
            }
        }
    }
}

/// The socket path of a `unix:///path` Docker host.
fn docker_socket(host: &str) -> Result<PathBuf, EnrichError> {
    host.strip_prefix("unix://")
        .filter(|path| path.starts_with('/'))
        .map(PathBuf::from)
        .ok_or_else(|| EnrichError::UnsupportedDockerHost(host.to_owned()))
}

impl Serialize for Subnet {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.network())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::enrich::docker::{DockerNetwork, Endpoint};

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("test address")
    }

    fn subnet(text: &str) -> Subnet {
        Subnet::parse(text).expect("test subnet")
    }

    #[test]
    fn subnets_contain_their_addresses_only() {
        let cases = [
            ("docker default v4", "172.17.0.0/16", "172.17.0.2", true),
            ("last address", "172.17.0.0/16", "172.17.255.255", true),
            ("next network", "172.17.0.0/16", "172.18.0.1", false),
            (
                "host bits in the network",
                "172.17.0.1/16",
                "172.17.9.9",
                true,
            ),
            ("/32 itself", "10.0.0.1/32", "10.0.0.1", true),
            ("/32 neighbour", "10.0.0.1/32", "10.0.0.2", false),
            ("/0 holds all v4", "0.0.0.0/0", "203.0.113.7", true),
            ("v6 /64", "fd00:1::/64", "fd00:1::2", true),
            ("v6 other /64", "fd00:1::/64", "fd00:2::2", false),
            ("/0 holds all v6", "::/0", "2001:db8::1", true),
            ("v4 in v6 subnet", "::/0", "10.0.0.1", false),
            ("v6 in v4 subnet", "0.0.0.0/0", "::1", false),
        ];
        for (name, net, addr, expected) in cases {
            assert_eq!(subnet(net).contains(ip(addr)), expected, "{name}");
        }
    }

    #[test]
    fn subnet_notation_is_checked() {
        let cases = [
            ("no prefix", "172.17.0.0"),
            ("v4 prefix too long", "172.17.0.0/33"),
            ("v6 prefix too long", "fd00::/129"),
            ("not an address", "docker0/16"),
            ("empty", ""),
        ];
        for (name, text) in cases {
            assert_eq!(Subnet::parse(text), None, "{name}");
        }
        assert_eq!(
            subnet(" fd00::/128 ").prefix(),
            128,
            "whitespace is trimmed"
        );
    }

    #[test]
    fn docker_host_must_be_a_unix_socket() {
        assert_eq!(
            docker_socket("unix:///var/run/docker.sock").expect("unix socket"),
            PathBuf::from("/var/run/docker.sock")
        );
        for host in [
            "tcp://127.0.0.1:2375",
            "unix://relative.sock",
            "/var/run/docker.sock",
        ] {
            assert!(
                matches!(
                    docker_socket(host),
                    Err(EnrichError::UnsupportedDockerHost(_))
                ),
                "{host} is not supported"
            );
        }
    }

    fn cache_with_docker0(netns: u32, bridge: &str) -> Cache {
        let endpoint = |container: &str, service: Option<&str>, network: &str| Endpoint {
            container: container.into(),
            service: service.map(str::to_owned),
            network: network.into(),
        };
        let docker = DockerView {
            networks: HashMap::from([
                (
                    "bridge".to_owned(),
                    DockerNetwork {
                        bridge: Some("docker0".into()),
                        subnets: vec![subnet("172.17.0.0/16")],
                    },
                ),
                (
                    "shop_default".to_owned(),
                    DockerNetwork {
                        bridge: Some("br-9a8b7c6d5e4f".into()),
                        subnets: vec![subnet("172.18.0.0/16"), subnet("fd00:18::/64")],
                    },
                ),
            ]),
            endpoints: HashMap::from([
                (ip("172.17.0.2"), endpoint("web", None, "bridge")),
                (
                    ip("172.18.0.3"),
                    endpoint("shop-api-1", Some("api"), "shop_default"),
                ),
            ]),
        };
        let mut cache = Cache {
            docker,
            ..Cache::default()
        };
        cache.bridges.insert(
            netns,
            vec![
                BridgeSubnet {
                    bridge: bridge.into(),
                    subnet: subnet("172.17.0.0/16"),
                },
                BridgeSubnet {
                    bridge: "br-9a8b7c6d5e4f".into(),
                    subnet: subnet("172.18.0.0/16"),
                },
                BridgeSubnet {
                    bridge: "narrow".into(),
                    subnet: subnet("172.18.5.0/24"),
                },
            ],
        );
        cache
    }

    #[test]
    fn lookups_combine_bridges_and_docker() {
        let cache = cache_with_docker0(42, "docker0");
        let cases = [
            (
                "container on the default bridge",
                42,
                "172.17.0.2",
                Destination {
                    bridge: Some("docker0".into()),
                    network: Some("bridge".into()),
                    container: Some("web".into()),
                    service: None,
                },
            ),
            (
                "compose service",
                42,
                "172.18.0.3",
                Destination {
                    bridge: Some("br-9a8b7c6d5e4f".into()),
                    network: Some("shop_default".into()),
                    container: Some("shop-api-1".into()),
                    service: Some("api".into()),
                },
            ),
            (
                "free address of a docker network",
                42,
                "172.17.0.99",
                Destination {
                    bridge: Some("docker0".into()),
                    network: Some("bridge".into()),
                    ..Destination::default()
                },
            ),
            (
                "longest prefix wins; its bridge is not Docker's",
                42,
                "172.18.5.5",
                Destination {
                    bridge: Some("narrow".into()),
                    ..Destination::default()
                },
            ),
            (
                "from a container's namespace (no bridges there)",
                7,
                "172.17.0.2",
                Destination {
                    network: Some("bridge".into()),
                    container: Some("web".into()),
                    ..Destination::default()
                },
            ),
            (
                "outside every subnet",
                42,
                "10.0.0.1",
                Destination::default(),
            ),
        ];
        for (name, netns, addr, expected) in cases {
            assert_eq!(cache.lookup(netns, ip(addr)), expected, "{name}");
        }
    }

    #[test]
    fn another_namespace_with_dockers_subnet_is_not_docker() {
        let cache = cache_with_docker0(42, "lab0");
        assert_eq!(
            cache.lookup(42, ip("172.17.0.2")),
            Destination {
                bridge: Some("lab0".into()),
                ..Destination::default()
            },
            "lab0 owns the address there, not Docker's docker0"
        );
    }

    #[test]
    fn unknown_addresses_stay_unnamed_without_an_engine() {
        let enricher = Enricher::new(
            Arc::new(|_| Vec::new()),
            Some("unix:///nonexistent/docker.sock"),
        );
        for _ in 0..100 {
            assert!(
                enricher.destination(1, ip("192.0.2.1")).is_empty(),
                "no bridge owns a documentation address, no engine answers"
            );
        }
    }
}
