//! The gateway's configuration: a plain struct that the binary fills from its command
//! line (flag names follow the pushgateway's, see the field docs), so that nothing in
//! the gateway depends on clap.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use crate::build_info::BuildInfo;
use crate::codec::limits;

/// Default body limit: 16 MiB, after `Content-Encoding` decoding, and the same for the
/// bytes on the wire. A push of 100,000 series in text format is about 6 MiB, so this
/// leaves room for any sane push while bounding what one request can make us hold.
pub const DEFAULT_BODY_LIMIT: usize = 16 * 1024 * 1024;

/// Default `--persistence.interval`, as upstream: 5 minutes.
pub const DEFAULT_PERSISTENCE_INTERVAL: Duration = Duration::from_mins(5);

/// Default listen port, as upstream.
pub const DEFAULT_PORT: u16 = 9091;

/// Default `--web.header-read-timeout`: a client on a slow link sends a request head in
/// well under a second; ten bound what a connection that sends nothing can hold.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Default `--web.request-timeout`: a 16 MiB push over a slow link fits in a minute.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_mins(1);

/// Default `--web.max-connections`: far more than the scrapers and batch jobs of one
/// site, and well under the usual 1,024 open files per process.
pub const DEFAULT_MAX_CONNECTIONS: usize = 512;

/// Default `--push.max-labels-per-series`, grouping labels included: real series have
/// a dozen; this only stops a push that would make every scrape carry junk.
pub const DEFAULT_MAX_LABELS_PER_SERIES: usize = 128;

/// Default `--push.max-series-per-push`: batch jobs push hundreds; a push of this many
/// is about 6 MiB of text, still under the body limit.
pub const DEFAULT_MAX_SERIES_PER_PUSH: usize = 100_000;

/// Everything [`crate::server::serve`] needs to know.
// Each bool is one of upstream's on/off command-line switches.
#[allow(clippy::struct_excessive_bools)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayConfig {
    /// `--web.listen-address` (upstream's default `:9091`, i.e. every address; see
    /// [`parse_listen_address`]).
    pub listen_address: SocketAddr,
    /// `--web.route-prefix`: prepended to every route; `""` or `/` for none (see
    /// [`normalize_route_prefix`], applied by the server).
    pub route_prefix: String,
    /// `--persistence.file`: where the store is saved; `None` keeps it in memory only.
    pub persistence_file: Option<PathBuf>,
    /// `--persistence.interval`: the file is written at most once per interval after a
    /// change, and always on shutdown.
    pub persistence_interval: Duration,
    /// `--web.enable-admin-api`: serve `PUT /api/v1/admin/wipe` (404 otherwise).
    pub enable_admin_api: bool,
    /// `--web.enable-lifecycle`: `PUT`/`POST /-/quit` shuts down (403 otherwise).
    pub enable_lifecycle: bool,
    /// `--push.disable-consistency-check`: accepted for compatibility. Pushes are then
    /// answered `202 Accepted` like upstream, but still checked: the check costs time
    /// in proportion to the push here, and it is what keeps `/metrics` valid (fix 1).
    pub disable_consistency_check: bool,
    /// Largest request body accepted, on the wire and after decoding; 413 above it.
    pub body_limit: usize,
    /// More `flags` for `/api/v1/status` (e.g. `log.level`), beside the ones derived
    /// from the fields above.
    pub extra_status_flags: BTreeMap<String, String>,
    /// `--web.config.file`: exporter-toolkit web config (TLS, basic auth, headers),
    /// re-read when it changes; `None`: plain HTTP, no authentication.
    pub web_config_file: Option<PathBuf>,
    /// `--web.deny-path`: regular expressions of paths answered 404, besides the
    /// default `^/(debug|pprof)` (see [`crate::web::filter`]).
    pub deny_paths: Vec<String>,
    /// `--web.allow-push-from`: networks that may push, delete, wipe and quit; empty:
    /// any. Scrapes are open to all.
    pub allow_push_from: Vec<String>,
    /// `--web.header-read-timeout`: time for the TLS handshake and each request head.
    pub header_read_timeout: Duration,
    /// `--web.request-timeout`: time to read a request and answer it (408 after).
    pub request_timeout: Duration,
    /// `--web.max-connections`: connections served at once (429 past it).
    pub max_connections: usize,
    /// `--push.max-labels-per-series`: labels of one pushed series, grouping labels
    /// included (400 past it).
    pub max_labels_per_series: usize,
    /// `--push.max-series-per-push`: series in one push (400 past it).
    pub max_series_per_push: usize,
    /// `--push.max-label-name-bytes`: bytes of one label name (400 past it).
    pub max_label_name_bytes: usize,
    /// `--push.max-label-value-bytes`: bytes of one label value (400 past it).
    pub max_label_value_bytes: usize,
    /// `--push.max-buckets-per-series`: buckets or quantiles of one series (400 past it).
    pub max_buckets_per_series: usize,
    /// `--push.max-grouping-key-bytes`: names and decoded values of a URL's grouping
    /// labels (400 past it).
    pub max_grouping_key_bytes: usize,
    /// `--push.max-render-factor`: rendered bytes a push may take per byte of its
    /// request (400 past it; see [`crate::codec::limits`]).
    pub max_render_factor: usize,
    /// `--push.ttl`: a group not pushed to for this long is removed (zero: never,
    /// unless a push asks with `Dropgate-Push-TTL`).
    pub push_ttl: Duration,
    /// `--push.enable-utf8-names` (upstream 1.11): metric and label names may be any
    /// UTF-8 (quoted in the text format, `U__`-escaped in the push path); off, pushes
    /// with such names are refused as upstream 1.9 refuses them. See [`crate::names`].
    pub enable_utf8_names: bool,
    /// The running build, for `/api/v1/status` and `dropgate_build_info`.
    pub build_info: BuildInfo,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            listen_address: SocketAddr::from((Ipv6Addr::UNSPECIFIED, DEFAULT_PORT)),
            route_prefix: String::new(),
            persistence_file: None,
            persistence_interval: DEFAULT_PERSISTENCE_INTERVAL,
            enable_admin_api: false,
            enable_lifecycle: false,
            disable_consistency_check: false,
            body_limit: DEFAULT_BODY_LIMIT,
            extra_status_flags: BTreeMap::new(),
            web_config_file: None,
            deny_paths: Vec::new(),
            allow_push_from: Vec::new(),
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_labels_per_series: DEFAULT_MAX_LABELS_PER_SERIES,
            max_series_per_push: DEFAULT_MAX_SERIES_PER_PUSH,
            max_label_name_bytes: limits::DEFAULT_MAX_LABEL_NAME_BYTES,
            max_label_value_bytes: limits::DEFAULT_MAX_LABEL_VALUE_BYTES,
            max_buckets_per_series: limits::DEFAULT_MAX_BUCKETS_PER_SERIES,
            max_grouping_key_bytes: limits::DEFAULT_MAX_GROUPING_KEY_BYTES,
            max_render_factor: limits::DEFAULT_MAX_RENDER_FACTOR,
            push_ttl: Duration::ZERO,
            enable_utf8_names: false,
            build_info: BuildInfo::default(),
        }
    }
}

/// A listen address that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// Not `host:port`, `[v6]:port` or `:port` with a numeric host.
    #[error("invalid listen address {address:?}: use host:port with an IP address, e.g. 127.0.0.1:9091, [::1]:9091 or :9091 for every address")]
    ListenAddress {
        /// What was given.
        address: String,
    },
}

impl GatewayConfig {
    /// Which names pushes may use.
    #[must_use]
    pub fn name_rules(&self) -> crate::names::NameRules {
        crate::names::NameRules::new(self.enable_utf8_names)
    }

    /// The limits the push parsers enforce.
    #[must_use]
    pub fn push_limits(&self) -> limits::PushLimits {
        limits::PushLimits {
            max_series: self.max_series_per_push,
            max_labels_per_series: self.max_labels_per_series,
            max_label_name_bytes: self.max_label_name_bytes,
            max_label_value_bytes: self.max_label_value_bytes,
            max_buckets_per_series: self.max_buckets_per_series,
            max_decoded_factor: self.max_render_factor,
        }
    }

    /// The `flags` object of `/api/v1/status`, named as upstream names its flags.
    #[must_use]
    pub fn status_flags(&self) -> BTreeMap<String, String> {
        let mut flags = BTreeMap::new();
        let mut set = |name: &str, value: String| {
            flags.insert(name.to_owned(), value);
        };
        set("web.listen-address", self.listen_address.to_string());
        set("web.route-prefix", self.route_prefix.clone());
        set("web.telemetry-path", "/metrics".to_owned());
        set(
            "persistence.file",
            self.persistence_file
                .as_ref()
                .map(|path| path.display().to_string())
                .unwrap_or_default(),
        );
        set(
            "persistence.interval",
            go_duration(self.persistence_interval),
        );
        set("web.enable-admin-api", self.enable_admin_api.to_string());
        set("web.enable-lifecycle", self.enable_lifecycle.to_string());
        set(
            "push.disable-consistency-check",
            self.disable_consistency_check.to_string(),
        );
        flags.extend(self.extra_status_flags.clone());
        flags
    }
}

/// Parses a listen address like upstream's flag: `host:port`, `[v6]:port`, or `:port`
/// for every address (dual-stack `[::]`). Host names are not resolved.
pub fn parse_listen_address(address: &str) -> Result<SocketAddr, ConfigError> {
    let error = || ConfigError::ListenAddress {
        address: address.to_owned(),
    };
    if let Some(port) = address.strip_prefix(':') {
        let port = port.parse::<u16>().map_err(|_| error())?;
        return Ok(SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)));
    }
    address.parse().map_err(|_| error())
}

/// Upstream's `computeRoutePrefix` as of 1.7 (the seed's 1.9): `""` and `/` mean none;
/// otherwise a `/` is put in front if missing and ONE trailing `/` is cut, nothing else
/// (`gw/` → `/gw`, `/gw//` → `/gw/`, `//gw` stays; 1.5.1 trimmed every slash). The
/// routes are this string followed by `/metrics` etc., exactly as upstream registers
/// them; the deny filter compares paths in normal form and normalises the prefix too.
#[must_use]
pub fn normalize_route_prefix(prefix: &str) -> String {
    if prefix.is_empty() || prefix == "/" {
        return String::new();
    }
    let prefix = if prefix.starts_with('/') {
        prefix.to_owned()
    } else {
        format!("/{prefix}")
    };
    prefix.strip_suffix('/').unwrap_or(&prefix).to_owned()
}

/// Parses a Go-style duration as the pushgateway's flags take them: `300ms`, `5s`,
/// `5m`, `1h`, `1h30m`, or `0`. Also read from push headers, so a value too large for
/// a `Duration` is an error, never a panic.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("`{text}` is not a duration; use e.g. 30s, 5m, 1h30m");
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .ok_or_else(bad)?;
        let (number, tail) = rest.split_at(digits);
        let value: f64 = number.parse().map_err(|_| bad())?;
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let seconds = match unit {
            "ms" => value / 1000.0,
            "s" => value,
            "m" => value * 60.0,
            "h" => value * 3600.0,
            _ => return Err(bad()),
        };
        total = Duration::try_from_secs_f64(seconds)
            .ok()
            .and_then(|part| total.checked_add(part))
            .ok_or_else(|| format!("`{text}` is too long a duration"))?;
        rest = tail;
    }
    Ok(total)
}

/// A duration as Go's `time.Duration.String` writes it (`5m0s`, `1h0m0s`, `1.5s`,
/// `300ms`), for `/api/v1/status`.
#[must_use]
pub fn go_duration(duration: Duration) -> String {
    let nanos = duration.as_nanos();
    if nanos == 0 {
        return "0s".to_owned();
    }
    if nanos < 1_000_000_000 {
        let (unit, per) = if nanos < 1_000 {
            ("ns", 1)
        } else if nanos < 1_000_000 {
            ("µs", 1_000)
        } else {
            ("ms", 1_000_000)
        };
        return format!("{}{unit}", decimal(nanos, per));
    }
    let total_secs = duration.as_secs();
    let (hours, minutes) = (total_secs / 3600, total_secs / 60 % 60);
    let seconds = decimal(
        u128::from(total_secs % 60) * 1_000_000_000 + u128::from(duration.subsec_nanos()),
        1_000_000_000,
    );
    let mut out = String::new();
    if hours > 0 {
        let _ = write!(out, "{hours}h");
    }
    if hours > 0 || minutes > 0 {
        let _ = write!(out, "{minutes}m");
    }
    let _ = write!(out, "{seconds}s");
    out
}

/// `value / per` with the fraction's trailing zeros dropped.
fn decimal(value: u128, per: u128) -> String {
    let whole = value / per;
    let fraction = value % per;
    if fraction == 0 {
        return whole.to_string();
    }
    let width = per.ilog10() as usize;
    let digits = format!("{fraction:0width$}");
    format!("{whole}.{}", digits.trim_end_matches('0'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses() {
        let table: &[(&str, Option<&str>)] = &[
            ("every address", Some(":9091")),
            ("v4", Some("127.0.0.1:19091")),
            ("v6", Some("[::1]:9091")),
            ("no port", None),
            ("host name", None),
            ("bad port", None),
        ];
        let inputs = [
            ":9091",
            "127.0.0.1:19091",
            "[::1]:9091",
            "127.0.0.1",
            "localhost:9091",
            ":99999",
        ];
        for ((name, want), input) in table.iter().zip(inputs) {
            let got = parse_listen_address(input).ok().map(|a| a.to_string());
            let want = want.map(|w| match w {
                ":9091" => "[::]:9091".to_owned(),
                other => other.to_owned(),
            });
            assert_eq!(got, want, "{name}");
        }
    }

    #[test]
    fn route_prefixes_like_upstream() {
        for (input, want) in [
            ("", ""),
            ("/", ""),
            ("gw", "/gw"),
            ("/gw/", "/gw"),
            ("gw/", "/gw"),
            // Since 1.7 only one trailing slash goes, and leading ones stay.
            ("//a/b//", "//a/b/"),
            ("/gw//", "/gw/"),
            ("//", "/"),
        ] {
            assert_eq!(normalize_route_prefix(input), want, "{input:?}");
        }
    }

    #[test]
    fn durations_like_go() {
        let table = [
            (Duration::from_mins(5), "5m0s"),
            (Duration::from_hours(1), "1h0m0s"),
            (Duration::from_secs(90), "1m30s"),
            (Duration::from_millis(1500), "1.5s"),
            (Duration::from_millis(300), "300ms"),
            (Duration::ZERO, "0s"),
        ];
        for (duration, want) in table {
            assert_eq!(go_duration(duration), want);
        }
    }
}
