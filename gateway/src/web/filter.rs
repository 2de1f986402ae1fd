//! Which requests the gateway refuses before any route sees them: denied paths (404,
//! as the seed's nginx answered) and writes from networks outside
//! `--web.allow-push-from` (403).
//!
//! Rules match the normal form of the path ([`super::path::normalise`]), both with
//! and without the route prefix, case-insensitively: the router is case-sensitive,
//! so `/DEBUG` reaches nothing today, but a rule that says "deny /debug" should keep
//! meaning that whatever is mounted later. The default rule, `^/(debug|pprof)`, always
//! applies; `--web.deny-path` adds rules to it. A push path is matched a third way, as
//! the group it writes, decoded by the very function the push handler uses.

use std::net::{IpAddr, Ipv4Addr};

use axum::http::Method;
use regex_lite::{Regex, RegexBuilder};

use super::path::{normalise, strip_route_prefix};
use crate::grouping::GroupingKey;
use crate::names::NameRules;

/// The rule that is always on: what the seed's nginx denied.
pub const DEFAULT_DENY_PATH: &str = "^/(debug|pprof)";

/// A filter setting that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    /// A `--web.deny-path` is not a valid regular expression.
    #[error("--web.deny-path {pattern:?} is not a valid regular expression: {reason}")]
    DenyPath {
        /// The pattern given.
        pattern: String,
        /// What the regex compiler said.
        reason: String,
    },
    /// A `--web.allow-push-from` is not `address/prefix-length` or an address.
    #[error("--web.allow-push-from {text:?} is not a network: use an address or address/prefix-length, e.g. 10.0.0.0/8, 127.0.0.1 or ::1/128")]
    Network {
        /// What was given.
        text: String,
    },
}

/// The compiled deny rules and the route prefix they are matched under.
#[derive(Debug, Clone)]
pub struct PathFilter {
    rules: Vec<Regex>,
    /// As the router has it (upstream's form, which may hold `//` or end in `/`).
    route_prefix: String,
    /// In normal form, to compare with normal paths (`""` for none).
    normal_prefix: String,
    /// The push handler's name rules, so that a `U__` label is read as it reads it.
    names: NameRules,
}

impl PathFilter {
    /// The default rule plus `extra` ones; `route_prefix` as normalised by
    /// [`crate::config::normalize_route_prefix`].
    pub fn new(extra: &[String], route_prefix: &str) -> Result<Self, FilterError> {
        // The default rule is checked by `default_denied`, not by a regex: it is on every
        // request, and regex-lite's matcher cost ~50 µs per push against four path forms.
        let rules = extra
            .iter()
            .map(String::as_str)
            .map(compile_rule)
            .collect::<Result<_, _>>()?;
        let normal_prefix = match normalise(route_prefix) {
            root if root == "/" => String::new(),
            normal => normal,
        };
        Ok(Self {
            rules,
            route_prefix: route_prefix.to_owned(),
            normal_prefix,
            names: NameRules::Legacy,
        })
    }

    /// The filter reading push paths under `names`, as the push handler does.
    #[must_use]
    pub fn with_names(mut self, names: NameRules) -> Self {
        self.names = names;
        self
    }

    /// Whether a request for `raw_path` (as received) must be answered 404.
    ///
    /// A push path is also matched as the group it writes ([`GroupingKey::to_push_path`]
    /// of the key the push handler takes from the same function), so `@base64`, `;`
    /// and percent-encoding cannot name a denied group in a form the rules miss.
    #[must_use]
    pub fn is_denied(&self, raw_path: &str) -> bool {
        let normal = normalise(raw_path);
        let under_prefix = strip_route_prefix(&normal, &self.normal_prefix);
        let pushed = self.pushed_group(raw_path);
        let denied =
            |path: &str| default_denied(path) || self.rules.iter().any(|r| r.is_match(path));
        denied(&normal)
            || under_prefix.is_some_and(denied)
            || pushed
                .as_ref()
                .is_some_and(|(bare, prefixed)| denied(bare) || denied(prefixed))
    }

    /// The group a push or delete to `raw_path` would write, as a plain push path
    /// without and with the route prefix; `None` for other paths and for invalid
    /// keys (the handler refuses those with 400, writing nothing). Paths without the
    /// prefix are read too, though the router does not route them: a rule should not
    /// depend on that.
    fn pushed_group(&self, raw_path: &str) -> Option<(String, String)> {
        let key = GroupingKey::of_request_path(raw_path, &self.route_prefix, self.names)
            .or_else(|| GroupingKey::of_request_path(raw_path, "", self.names))?
            .ok()?;
        let bare = key.to_push_path();
        let prefixed = format!("{}{bare}", self.normal_prefix);
        Some((bare, prefixed))
    }

    /// Whether a request changes state (push, delete, wipe, quit) rather than reads:
    /// anything but `GET`/`HEAD`/`OPTIONS`, and any method on the admin and lifecycle
    /// paths. Such requests are what `--web.allow-push-from` restricts.
    #[must_use]
    pub fn is_write(&self, method: &Method, raw_path: &str) -> bool {
        if !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
            return true;
        }
        let normal = normalise(raw_path);
        let path = strip_route_prefix(&normal, &self.normal_prefix).unwrap_or(&normal);
        let lower = path.to_ascii_lowercase();
        lower.starts_with("/api/v1/admin") || lower.starts_with("/-/quit")
    }
}

/// [`DEFAULT_DENY_PATH`] (`^/(debug|pprof)`, case-insensitive) without a regex engine.
fn default_denied(path: &str) -> bool {
    path.get(..6).is_some_and(|head| {
        head.eq_ignore_ascii_case("/debug") || head.eq_ignore_ascii_case("/pprof")
    })
}

/// Checks a `--web.deny-path` pattern (for the command line, before the server starts).
pub fn check_deny_path(pattern: &str) -> Result<(), FilterError> {
    compile_rule(pattern).map(drop)
}

fn compile_rule(pattern: &str) -> Result<Regex, FilterError> {
    RegexBuilder::new(pattern)
        .case_insensitive(true)
        .build()
        .map_err(|error| FilterError::DenyPath {
            pattern: pattern.to_owned(),
            reason: error.to_string(),
        })
}

/// One network of `--web.allow-push-from`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network {
    address: IpAddr,
    prefix_len: u8,
}

impl Network {
    /// Parses `address/prefix-length` or a bare address (one host). Host bits beyond
    /// the prefix are ignored, as Go's `net.ParseCIDR` does.
    pub fn parse(text: &str) -> Result<Self, FilterError> {
        let error = || FilterError::Network {
            text: text.to_owned(),
        };
        let (address, prefix) = match text.trim().split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text.trim(), None),
        };
        let address: IpAddr = address.parse().map_err(|_| error())?;
        let max = if address.is_ipv4() { 32 } else { 128 };
        let prefix_len = match prefix {
            Some(prefix) => prefix
                .parse::<u8>()
                .ok()
                .filter(|len| *len <= max)
                .ok_or_else(error)?,
            None => max,
        };
        Ok(Self {
            address: canonical(address),
            prefix_len: if address.is_ipv4() || is_mapped_v4(address) {
                // A mapped ::ffff:a.b.c.d/n is the v4 network a.b.c.d/(n-96).
                prefix_len.saturating_sub(if address.is_ipv4() { 0 } else { 96 })
            } else {
                prefix_len
            },
        })
    }

    /// Whether `peer` is in this network (IPv4-mapped IPv6 peers count as IPv4, which
    /// is how a v4 client looks to a socket bound to `[::]`).
    #[must_use]
    pub fn contains(&self, peer: IpAddr) -> bool {
        match (self.address, canonical(peer)) {
            (IpAddr::V4(net), IpAddr::V4(peer)) => {
                prefix_eq(&net.octets(), &peer.octets(), self.prefix_len)
            }
            (IpAddr::V6(net), IpAddr::V6(peer)) => {
                prefix_eq(&net.octets(), &peer.octets(), self.prefix_len)
            }
            _ => false,
        }
    }
}

impl std::fmt::Display for Network {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.address, self.prefix_len)
    }
}

fn is_mapped_v4(address: IpAddr) -> bool {
    matches!(address, IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some())
}

fn canonical(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map_or(IpAddr::V6(v6), |v4: Ipv4Addr| IpAddr::V4(v4)),
        v4 @ IpAddr::V4(_) => v4,
    }
}

/// Whether the first `bits` bits of `a` and `b` are equal.
fn prefix_eq(a: &[u8], b: &[u8], bits: u8) -> bool {
    let bits = usize::from(bits);
    let (whole, rest) = (bits / 8, bits % 8);
    if a[..whole] != b[..whole] {
        return false;
    }
    if rest == 0 {
        return true;
    }
    let mask = 0xff_u8 << (8 - rest);
    a[whole] & mask == b[whole] & mask
}

/// Who may send writes: everyone when empty.
#[derive(Debug, Clone, Default)]
pub struct PushAllowList {
    networks: Vec<Network>,
}

impl PushAllowList {
    /// Parses every `--web.allow-push-from`.
    pub fn parse(texts: &[String]) -> Result<Self, FilterError> {
        Ok(Self {
            networks: texts
                .iter()
                .map(|text| Network::parse(text))
                .collect::<Result<_, _>>()?,
        })
    }

    /// Whether `peer` may send writes (`None`: the peer is unknown, e.g. a test
    /// without a socket, and then only an empty list allows).
    #[must_use]
    pub fn allows(&self, peer: Option<IpAddr>) -> bool {
        self.networks.is_empty()
            || peer.is_some_and(|peer| self.networks.iter().any(|net| net.contains(peer)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The table of bypass attempts shared with the guard and end-to-end tests.
    pub(crate) const BYPASS_ATTEMPTS: &str = include_str!("../../tests/data/bypass-attempts.tsv");

    /// The hand-written default rule says what the regex it stands for says.
    #[test]
    fn the_default_rule_matches_like_its_regex() {
        let regex = compile_rule(DEFAULT_DENY_PATH).expect("the default rule compiles");
        let paths = [
            "/debug",
            "/DEBUG/pprof",
            "/pprof",
            "/PpRoF/heap",
            "/debugger",
            "/debu",
            "/",
            "",
            "/metrics",
            "/x/debug",
            "/pprofx",
            "/déb",
            "/pprö",
            "debug",
            "//debug",
        ];
        for path in paths {
            assert_eq!(default_denied(path), regex.is_match(path), "{path:?}");
        }
        for line in BYPASS_ATTEMPTS.lines().filter(|l| !l.starts_with('#')) {
            let path = normalise(line.split_once('\t').map_or(line, |(_, p)| p));
            assert_eq!(default_denied(&path), regex.is_match(&path), "{path:?}");
        }
    }

    #[test]
    fn every_bypass_attempt_is_denied() {
        let filter = PathFilter::new(&[], "/pg").expect("default rules compile");
        let attempts: Vec<(&str, &str)> = BYPASS_ATTEMPTS
            .lines()
            .filter(|line| !line.starts_with('#') && !line.is_empty())
            .map(|line| line.split_once('\t').expect("name<TAB>path"))
            .collect();
        assert!(attempts.len() >= 25, "the table must stay large");
        for (name, path) in attempts {
            assert!(
                filter.is_denied(path),
                "case {name}: {path:?} was let through"
            );
        }
    }

    /// The push table shared with the guard and socket tests, and the rules it is
    /// written against (listed in its header).
    const PUSH_BYPASS_ATTEMPTS: &str = include_str!("../../tests/data/push-bypass-attempts.tsv");
    const PUSH_RULES: [&str; 3] = ["^/metrics/job/secret(/|$)", "/team/red(/|$)", "evil"];

    fn push_rules() -> Vec<String> {
        PUSH_RULES.map(str::to_owned).to_vec()
    }

    #[test]
    fn every_push_bypass_attempt_is_denied() {
        let filter = PathFilter::new(&push_rules(), "/pg").expect("rules compile");
        let attempts: Vec<(&str, &str)> = PUSH_BYPASS_ATTEMPTS
            .lines()
            .filter(|line| !line.starts_with('#') && !line.is_empty())
            .map(|line| line.split_once('\t').expect("name<TAB>path"))
            .collect();
        assert!(attempts.len() >= 25, "the table must stay large");
        let through: Vec<String> = attempts
            .iter()
            .filter(|(_, path)| !filter.is_denied(path))
            .map(|(name, path)| format!("{name}: {path}"))
            .collect();
        assert!(through.is_empty(), "let through:\n{}", through.join("\n"));
    }

    /// Since pushgateway 1.7 a prefix keeps all but one trailing slash (`/pg//` → routes
    /// under `/pg/`, e.g. `/pg//metrics`); the rules still see every spelling.
    #[test]
    fn a_prefix_with_a_slash_left_at_its_end_is_matched_in_normal_form() {
        let prefix = crate::config::normalize_route_prefix("/pg//");
        assert_eq!(prefix, "/pg/");
        let filter = PathFilter::new(&push_rules(), &prefix).expect("rules compile");
        for denied in [
            "/pg//debug/pprof",
            "/pg/debug/pprof/heap",
            "/pg//metrics/job/secret",
            "/pg//metrics/job@base64/c2VjcmV0",
            "/pg//metrics/job/x/team/red",
        ] {
            assert!(filter.is_denied(denied), "{denied} let through");
        }
        for allowed in ["/pg//metrics", "/pg//metrics/job/ok", "/pg//-/healthy"] {
            assert!(!filter.is_denied(allowed), "{allowed} denied");
        }
        assert!(filter.is_write(&Method::GET, "/pg//api/v1/admin/wipe"));
    }

    #[test]
    fn push_rules_deny_only_what_they_name() {
        let filter = PathFilter::new(&push_rules(), "/pg").expect("rules compile");
        for path in [
            "/pg/metrics/job/public",
            "/pg/metrics/job/secretary",
            "/pg/metrics/job/x/team/blue",
            "/pg/metrics/job/x/team@base64/Ymx1ZQ",
            // The job "a/team/red" (base64): a value, not a label team="red".
            "/pg/metrics/job@base64/YS90ZWFtL3JlZA",
            "/pg/metrics",
        ] {
            assert!(!filter.is_denied(path), "{path:?} was denied");
        }
    }

    #[test]
    fn ordinary_paths_pass() {
        let filter = PathFilter::new(&[], "").expect("default rules compile");
        for path in [
            "/metrics",
            "/metrics/job/debug",
            "/metrics/job/x/instance/pprof",
            "/metrics/job/a%2Fdebug",
            "/-/ready",
            "/api/v1/status",
            "/",
        ] {
            assert!(!filter.is_denied(path), "{path:?} was denied");
        }
    }

    #[test]
    fn extra_rules_add_to_the_default() {
        let filter = PathFilter::new(&["^/api/v1/metrics$".to_owned()], "").expect("rules compile");
        assert!(filter.is_denied("/api/v1/%6detrics"));
        assert!(filter.is_denied("/debug"));
        assert!(!filter.is_denied("/api/v1/status"));
        assert!(PathFilter::new(&["(".to_owned()], "").is_err());
    }

    #[test]
    fn writes_are_classified() {
        let filter = PathFilter::new(&[], "/pg").expect("default rules compile");
        let table = [
            ("push", Method::PUT, "/pg/metrics/job/x", true),
            ("post", Method::POST, "/pg/metrics/job/x", true),
            ("delete", Method::DELETE, "/pg/metrics/job/x", true),
            ("odd method", Method::PATCH, "/pg/metrics", true),
            ("scrape", Method::GET, "/pg/metrics", false),
            ("head", Method::HEAD, "/pg/-/ready", false),
            ("options", Method::OPTIONS, "/pg/api/v1/status", false),
            ("admin read", Method::GET, "/pg/api/v1/admin/wipe", true),
            ("encoded quit", Method::GET, "/pg/-/%71uit", true),
            (
                "admin options",
                Method::OPTIONS,
                "/pg/api/v1/ADMIN/wipe",
                true,
            ),
        ];
        for (name, method, path, want) in table {
            assert_eq!(filter.is_write(&method, path), want, "case {name}");
        }
    }

    #[test]
    fn networks() {
        let ip = |s: &str| s.parse::<IpAddr>().expect("test address");
        let table = [
            ("v4 /8", "10.0.0.0/8", "10.1.2.3", true),
            ("v4 /8 outside", "10.0.0.0/8", "11.0.0.1", false),
            ("v4 /0", "0.0.0.0/0", "192.0.2.1", true),
            ("host bits ignored", "10.1.2.3/16", "10.1.99.1", true),
            ("bare address", "127.0.0.1", "127.0.0.1", true),
            ("bare address other", "127.0.0.1", "127.0.0.2", false),
            ("odd prefix", "192.168.0.0/23", "192.168.1.7", true),
            ("odd prefix outside", "192.168.0.0/23", "192.168.2.1", false),
            ("mapped peer", "127.0.0.0/8", "::ffff:127.0.0.1", true),
            ("mapped network", "::ffff:10.0.0.0/104", "10.9.9.9", true),
            ("v6", "2001:db8::/32", "2001:db8::1", true),
            ("v6 outside", "2001:db8::/32", "2001:db9::1", false),
            ("v6 loopback", "::1", "::1", true),
            ("v4 net, v6 peer", "0.0.0.0/0", "::1", false),
        ];
        for (name, net, peer, want) in table {
            let network = Network::parse(net).expect("valid network");
            assert_eq!(network.contains(ip(peer)), want, "case {name}");
        }
        for bad in [
            "",
            "10.0.0.0/33",
            "::/129",
            "ten/8",
            "10.0.0.0/",
            "10.0.0.0/-1",
        ] {
            assert!(Network::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn allow_list() {
        let list = PushAllowList::parse(&["10.0.0.0/8".to_owned()]).expect("valid");
        assert!(!list.allows(Some(IpAddr::V4(Ipv4Addr::LOCALHOST))));
        assert!(list.allows(Some("10.0.0.1".parse().expect("ip"))));
        assert!(!list.allows(None));
        assert!(PushAllowList::default().allows(None));
    }
}
