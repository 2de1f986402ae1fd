//! The command line. clap stays in this file: it is turned at once into plain config
//! values (`gateway::config::GatewayConfig`, [`TraceConfig`]) that nothing else needs
//! clap to read. Flag names follow the pushgateway's where they overlap, so a migration
//! is a change of binary name.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum};

use tracer_common::{DROP_CACHE_SLOTS, MAX_DROP_CACHE_SLOTS, MAX_DROP_KEYS};

use crate::loader::HookChoice;

#[derive(Parser, Debug)]
#[command(
    name = "dropgate",
    version,
    long_version = crate::build_info::LONG_VERSION,
    about = "Traces every packet the kernel drops, names the cause, and serves the metrics with a Pushgateway-compatible gateway",
    long_about = None
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Tracer and gateway in one process: drop metrics and pushed metrics on one
    /// /metrics (needs root, or CAP_BPF + CAP_PERFMON + CAP_NET_ADMIN).
    Run {
        #[command(flatten)]
        gateway: GatewayArgs,
        #[command(flatten)]
        trace: TraceArgs,
    },
    /// The gateway alone: a drop-in for the Prometheus Pushgateway (no privileges).
    Gateway {
        #[command(flatten)]
        gateway: GatewayArgs,
    },
    /// Check this host for what drops its traffic, trace for a while, and print the
    /// verdict, the evidence and the fix. Exit code: 0 healthy, 1 problem found, 2 could
    /// not check everything.
    Diagnose(DiagnoseArgs),
    /// Prove the probe on this kernel: in a namespace of its own, drop frames on the
    /// ip_error path and compare the count with the kernel's InAddrErrors. One JSON line.
    Selftest {
        /// Kernel hook to prove.
        #[arg(long = "trace.hook", value_enum, default_value_t = HookArg::Auto)]
        hook: HookArg,
        /// Frames to drop.
        #[arg(long, default_value_t = 100)]
        packets: u32,
        /// Hand the probe a wrong sk_buff offset, to show the check can fail.
        #[arg(long, hide = true)]
        corrupt_offset: bool,
        /// Kernel modules (files, `:`-separated, in load order, the last one ipip) to
        /// load after the probe is attached; the drops of ipip's fallback tunnel must
        /// then be named after ipip's own function. For the kernel matrix's guests
        /// only: this loads modules into the running kernel.
        #[arg(long, hide = true, value_delimiter = ':')]
        late_modules: Vec<std::path::PathBuf>,
        /// Kernel modules (files, `:`-separated, in load order) that make conntrack
        /// work; then a table of 16 is filled in a namespace of the self-test's own and
        /// its drops, counters and diagnose finding checked. Kernel matrix guests only:
        /// it changes the machine-wide nf_conntrack_max (and refuses elsewhere).
        #[arg(long, hide = true, value_delimiter = ':')]
        conntrack_modules: Vec<std::path::PathBuf>,
    },
    /// Copy every group of a running pushgateway into a running dropgate (a migration
    /// without losing the last pushes). Exit code 1 if any group failed.
    Import {
        /// The pushgateway's URL, with its route prefix if it has one.
        #[arg(long, value_name = "URL")]
        from: String,
        /// dropgate's URL, with its route prefix if it has one.
        #[arg(long, value_name = "URL", default_value = "http://127.0.0.1:9091")]
        to: String,
    },
    /// Write the man page or a shell's completion script to stdout, generated from
    /// these definitions (for packages: `cargo xtask dist`).
    #[command(hide = true)]
    Generate {
        /// What to write.
        #[arg(value_enum)]
        what: Generated,
    },
    /// Print every sampled drop as it happens, one line each (or JSON lines).
    Watch {
        #[command(flatten)]
        filter: WatchFilter,
        /// One JSON object per line instead of text.
        #[arg(long)]
        json: bool,
        /// Samples per second and CPU taken in the kernel.
        #[arg(long = "trace.samples-per-sec", default_value_t = 10_000)]
        samples_per_sec: u32,
        /// Kernel hook.
        #[arg(long = "trace.hook", value_enum, default_value_t = HookArg::Auto)]
        hook: HookArg,
        /// Docker Engine API, to name containers; empty: off.
        #[arg(long = "docker-host", default_value = "unix:///var/run/docker.sock")]
        docker_host: String,
        #[command(flatten)]
        classes: ClassArgs,
    },
}

/// `--trace.class`, shared by every command that classifies drops.
#[derive(Args, Debug, Default, Clone)]
pub struct ClassArgs {
    /// Classify drops of REASON (or `*`) in LOCATION (a function, or a prefix ending in
    /// `*`) as CLASS (transit, refused, local), over the built-in table; repeatable,
    /// the most specific line wins. E.g. `NO_SOCKET@__udp4_lib_rcv=local`.
    #[arg(long = "trace.class", value_name = "REASON[@LOCATION]=CLASS", value_parser = class_rule)]
    pub class: Vec<crate::drop_class::Rule>,
}

impl ClassArgs {
    /// The table with these lines on top.
    #[must_use]
    pub fn classifier(&self) -> crate::drop_class::Classifier {
        crate::drop_class::Classifier::new(self.class.clone())
    }
}

fn class_rule(text: &str) -> Result<crate::drop_class::Rule, String> {
    text.parse()
}

/// What `dropgate generate` writes.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Generated {
    /// dropgate(1), in roff.
    Man,
    /// bash completion.
    Bash,
    /// zsh completion.
    Zsh,
    /// fish completion.
    Fish,
}

/// Writes `what` for the command line defined here, so the packaged man page and
/// completions can never disagree with the flags the binary parses.
pub fn generate(what: Generated, out: &mut dyn std::io::Write) -> std::io::Result<()> {
    use clap::CommandFactory as _;
    use clap_complete::Shell;
    let mut command = Cli::command();
    let shell = match what {
        Generated::Man => return clap_mangen::Man::new(command).render(out),
        Generated::Bash => Shell::Bash,
        Generated::Zsh => Shell::Zsh,
        Generated::Fish => Shell::Fish,
    };
    clap_complete::generate(shell, &mut command, "dropgate", out);
    Ok(())
}

/// Options of `diagnose`.
#[derive(Args, Debug)]
pub struct DiagnoseArgs {
    /// How long to watch counters and trace drops. Send the failing traffic meanwhile.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// The report as JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// Diagnose this network namespace (a name in /run/netns, or a path) instead of
    /// dropgate's own, e.g. a Docker host running in a namespace.
    #[arg(long)]
    pub netns: Option<String>,
    /// Kernel hook for the live trace.
    #[arg(long = "trace.hook", value_enum, default_value_t = HookArg::Auto)]
    pub hook: HookArg,
    /// Docker Engine API, to name containers; empty: off.
    #[arg(long = "docker-host", default_value = "unix:///var/run/docker.sock")]
    pub docker_host: String,
    #[command(flatten)]
    pub classes: ClassArgs,
    /// Reproduce a connection from another host: from a short-lived namespace attached
    /// by a veth that enters like outside traffic, connect and trace where it dies.
    /// Alone: every published port (DNAT rules); or PORT[/tcp|/udp], ADDR:PORT[/proto].
    /// Repeatable. Never changes the firewall; nothing is left behind.
    #[arg(long, value_name = "PORT|ADDR:PORT", num_args = 0..=1, default_missing_value = "published")]
    pub probe: Vec<crate::diagnose::probe::ProbeSpec>,
}

/// Which drops `watch` prints; every given filter must match.
#[derive(Args, Debug, Default, Clone)]
pub struct WatchFilter {
    /// Drop reason, e.g. IP_INADDRERRORS (case-insensitive).
    #[arg(long)]
    pub reason: Option<String>,
    /// Dropping function, e.g. ip_error.
    #[arg(long)]
    pub location: Option<String>,
    /// Source or destination address.
    #[arg(long)]
    pub host: Option<std::net::IpAddr>,
    /// Source or destination port.
    #[arg(long)]
    pub port: Option<u16>,
    /// Protocol: tcp, udp, icmp, icmpv6, arp, ...
    #[arg(long)]
    pub proto: Option<String>,
    /// Network namespace name (as printed) or inode.
    #[arg(long)]
    pub netns: Option<String>,
    /// Interface name.
    #[arg(long)]
    pub interface: Option<String>,
    /// Also print drops of class `local` (socket housekeeping, not traffic loss).
    #[arg(long)]
    pub all: bool,
}

impl WatchFilter {
    /// Whether `event` passes every filter given.
    #[must_use]
    pub fn matches(&self, event: &crate::samples::DropEvent) -> bool {
        let eq = |want: &Option<String>, have: &str| {
            want.as_ref().is_none_or(|w| w.eq_ignore_ascii_case(have))
        };
        (self.all || event.class != crate::drop_class::DropClass::Local)
            && eq(&self.reason, &event.reason)
            && eq(&self.location, &event.location)
            && eq(&self.proto, event.protocol)
            && eq(&self.netns, &event.netns)
            && eq(&self.interface, &event.interface)
            && self
                .host
                .is_none_or(|h| event.src == Some(h) || event.dst == Some(h))
            && self
                .port
                .is_none_or(|p| event.sport == p || event.dport == p)
    }
}

// Each bool is one of upstream's on/off command-line switches.
#[allow(clippy::struct_excessive_bools)]
#[derive(Args, Debug)]
pub struct GatewayArgs {
    /// Address to listen on, `host:port` or `:port` (all interfaces).
    #[arg(long = "web.listen-address", default_value = ":9091", value_parser = listen_address)]
    pub listen_address: SocketAddr,
    /// Prefix for all routes, e.g. `/pushgateway` behind a path-routing proxy.
    #[arg(long = "web.route-prefix", default_value = "")]
    pub route_prefix: String,
    /// Enable `/api/v1/admin/*` (wipe).
    #[arg(long = "web.enable-admin-api")]
    pub enable_admin_api: bool,
    /// Enable `/-/quit` (shut down over HTTP).
    #[arg(long = "web.enable-lifecycle")]
    pub enable_lifecycle: bool,
    /// File to persist pushed metrics in; absent or empty: keep them in memory only.
    #[arg(long = "persistence.file", value_parser = any_path)]
    pub persistence_file: Option<PathBuf>,
    /// Write the persistence file at most this often after a change (and on shutdown).
    #[arg(long = "persistence.interval", default_value = "5m", value_parser = parse_duration)]
    pub persistence_interval: Duration,
    /// Accept pushes without checking them against the stored metrics (not recommended).
    #[arg(long = "push.disable-consistency-check")]
    pub disable_consistency_check: bool,
    /// Largest accepted request body, in bytes (after decompression); larger ones get 413.
    #[arg(long = "web.max-body-bytes", default_value_t = gateway::config::DEFAULT_BODY_LIMIT)]
    pub max_body_bytes: usize,
    /// exporter-toolkit web config (TLS, basic auth, headers); re-read when it changes.
    #[arg(long = "web.config.file", value_parser = any_path)]
    pub web_config_file: Option<PathBuf>,
    /// Also answer 404 for paths matching this regex (repeatable; case-insensitive,
    /// matched on the decoded, normalised path). `^/(debug|pprof)` is always denied.
    #[arg(long = "web.deny-path", value_name = "REGEX", value_parser = deny_path)]
    pub deny_paths: Vec<String>,
    /// Accept pushes, deletes, wipe and quit only from this network (repeatable, e.g.
    /// 10.0.0.0/8); scrapes stay open. Default: from anywhere.
    #[arg(long = "web.allow-push-from", value_name = "CIDR", value_parser = network)]
    pub allow_push_from: Vec<String>,
    /// Time for the TLS handshake and each request head (408 and close after it).
    #[arg(long = "web.header-read-timeout", default_value = "10s", value_parser = parse_duration)]
    pub header_read_timeout: Duration,
    /// Time to read a request and answer it (408 after it).
    #[arg(long = "web.request-timeout", default_value = "1m", value_parser = parse_duration)]
    pub request_timeout: Duration,
    /// Connections served at once; more are answered 429.
    #[arg(long = "web.max-connections", default_value_t = gateway::config::DEFAULT_MAX_CONNECTIONS)]
    pub max_connections: usize,
    /// Labels of one pushed series, grouping labels included; more: 400.
    #[arg(long = "push.max-labels-per-series", default_value_t = gateway::config::DEFAULT_MAX_LABELS_PER_SERIES)]
    pub max_labels_per_series: usize,
    /// Series in one push; more: 400.
    #[arg(long = "push.max-series-per-push", default_value_t = gateway::config::DEFAULT_MAX_SERIES_PER_PUSH)]
    pub max_series_per_push: usize,
    /// Bytes of one pushed label name; longer: 400.
    #[arg(long = "push.max-label-name-bytes", default_value_t = gateway::codec::limits::DEFAULT_MAX_LABEL_NAME_BYTES)]
    pub max_label_name_bytes: usize,
    /// Bytes of one pushed label value; longer: 400.
    #[arg(long = "push.max-label-value-bytes", default_value_t = gateway::codec::limits::DEFAULT_MAX_LABEL_VALUE_BYTES)]
    pub max_label_value_bytes: usize,
    /// Buckets or quantiles of one pushed series; more: 400.
    #[arg(long = "push.max-buckets-per-series", default_value_t = gateway::codec::limits::DEFAULT_MAX_BUCKETS_PER_SERIES)]
    pub max_buckets_per_series: usize,
    /// Bytes of a push URL's grouping labels (names and decoded values); more: 400.
    #[arg(long = "push.max-grouping-key-bytes", default_value_t = gateway::codec::limits::DEFAULT_MAX_GROUPING_KEY_BYTES)]
    pub max_grouping_key_bytes: usize,
    /// Bytes a push may take in the exposition per byte of its request (1 MiB always
    /// allowed); more: 400.
    #[arg(long = "push.max-render-factor", default_value_t = gateway::codec::limits::DEFAULT_MAX_RENDER_FACTOR)]
    pub max_render_factor: usize,
    /// Remove a group not pushed to for this long (0: never). A push may ask for its
    /// group's own with the `Dropgate-Push-TTL` header (`0`: never).
    #[arg(long = "push.ttl", default_value = "0", value_parser = parse_duration)]
    pub push_ttl: Duration,
    /// Allow any UTF-8 in metric and label names (as pushgateway 1.11): quoted names in
    /// the text format, `U__`-escaped label names in the push path; scrapes see them
    /// escaped as their `Accept` asks (`underscores` when it does not say).
    #[arg(long = "push.enable-utf8-names")]
    pub enable_utf8_names: bool,
}

impl GatewayArgs {
    /// The gateway's plain configuration.
    #[must_use]
    pub fn into_config(self) -> gateway::config::GatewayConfig {
        gateway::config::GatewayConfig {
            listen_address: self.listen_address,
            route_prefix: self.route_prefix,
            persistence_file: self.persistence_file.filter(|p| !p.as_os_str().is_empty()),
            persistence_interval: self.persistence_interval,
            enable_admin_api: self.enable_admin_api,
            enable_lifecycle: self.enable_lifecycle,
            disable_consistency_check: self.disable_consistency_check,
            body_limit: self.max_body_bytes,
            web_config_file: self.web_config_file.filter(|p| !p.as_os_str().is_empty()),
            deny_paths: self.deny_paths,
            allow_push_from: self.allow_push_from,
            header_read_timeout: self.header_read_timeout,
            request_timeout: self.request_timeout,
            max_connections: self.max_connections,
            max_labels_per_series: self.max_labels_per_series,
            max_series_per_push: self.max_series_per_push,
            max_label_name_bytes: self.max_label_name_bytes,
            max_label_value_bytes: self.max_label_value_bytes,
            max_buckets_per_series: self.max_buckets_per_series,
            max_grouping_key_bytes: self.max_grouping_key_bytes,
            max_render_factor: self.max_render_factor,
            push_ttl: self.push_ttl,
            enable_utf8_names: self.enable_utf8_names,
            build_info: crate::build_info::BUILD,
            ..gateway::config::GatewayConfig::default()
        }
    }
}

#[derive(Args, Debug)]
pub struct TraceArgs {
    /// Kernel hook: tp_btf (cheaper) with the classic tracepoint as fallback, or one of them.
    #[arg(long = "trace.hook", value_enum, default_value_t = HookArg::Auto)]
    pub hook: HookArg,
    /// Per-packet samples per second and CPU taken in the kernel (0: none). Counts are
    /// exact regardless.
    #[arg(long = "trace.samples-per-sec", default_value_t = 1000)]
    pub samples_per_sec: u32,
    /// Slots per CPU of the in-kernel drop cache (0 or a power of two up to 65536): the
    /// first drop keys get a slot each and are counted there, the cheapest way; the
    /// others go to the hash map behind it. 0 turns it off. Counts are exact either way.
    #[arg(long = "trace.cache-slots", default_value_t = DROP_CACHE_SLOTS, value_parser = parse_cache_slots)]
    pub cache_slots: u32,
    /// Distinct drop keys (namespace, interface, reason, function, protocol) the kernel's
    /// hash map holds at once. Keys of namespaces and interfaces that are gone are
    /// evicted and their counts kept under netns/interface "gone"; drops that find the
    /// table full are only counted in dropgate_tracer_uncounted_total.
    #[arg(long = "trace.max-keys", default_value_t = MAX_DROP_KEYS, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_keys: u32,
    /// How many recent samples `/api/v1/drops` keeps.
    #[arg(long = "trace.recent-samples", default_value_t = 1000)]
    pub recent_samples: usize,
    /// Docker Engine API, to name the container behind a dropped packet; an empty value
    /// turns it off. An unreachable engine is not an error: samples just lack the names.
    #[arg(long = "docker-host", default_value = "unix:///var/run/docker.sock")]
    pub docker_host: String,
    #[command(flatten)]
    pub classes: ClassArgs,
    /// Report only drops in this network namespace (its name as in the `netns` label:
    /// `root` for dropgate's own); repeatable. Default: every namespace.
    #[arg(long = "trace.netns", value_name = "NAME")]
    pub netns: Vec<String>,
    /// How often the findings are recomputed; shorter in tests.
    #[arg(long = "diagnose.interval", default_value = "15s", value_parser = parse_duration, hide = true)]
    pub diagnose_interval: Duration,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum HookArg {
    Auto,
    TpBtf,
    Tracepoint,
}

impl From<HookArg> for HookChoice {
    fn from(arg: HookArg) -> Self {
        match arg {
            HookArg::Auto => HookChoice::Auto,
            HookArg::TpBtf => HookChoice::TpBtf,
            HookArg::Tracepoint => HookChoice::Tracepoint,
        }
    }
}

/// A path that may be empty (`--persistence.file=` turns persistence off, as upstream).
#[allow(clippy::unnecessary_wraps)] // clap's value parsers return a Result
fn any_path(text: &str) -> Result<PathBuf, String> {
    Ok(PathBuf::from(text))
}

fn deny_path(text: &str) -> Result<String, String> {
    gateway::web::filter::check_deny_path(text)
        .map(|()| text.to_owned())
        .map_err(|err| err.to_string())
}

fn network(text: &str) -> Result<String, String> {
    gateway::web::filter::Network::parse(text)
        .map(|_| text.to_owned())
        .map_err(|err| err.to_string())
}

fn listen_address(text: &str) -> Result<SocketAddr, String> {
    gateway::config::parse_listen_address(text).map_err(|err| err.to_string())
}

/// `--trace.cache-slots`: 0 or a power of two, at most `MAX_DROP_CACHE_SLOTS`.
fn parse_cache_slots(text: &str) -> Result<u32, String> {
    let slots: u32 = text
        .parse()
        .map_err(|_| format!("`{text}` is not a number of slots"))?;
    if slots > MAX_DROP_CACHE_SLOTS || slots.count_ones() > 1 {
        return Err(format!(
            "{slots} slots: use 0 (off) or a power of two up to {MAX_DROP_CACHE_SLOTS}, e.g. 256"
        ));
    }
    Ok(slots)
}

/// Go-style durations as the pushgateway takes them: `300ms`, `5s`, `5m`, `1h`, `1h30m`
/// (the gateway's parser, which push headers use too).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    gateway::config::parse_duration(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_keys() {
        let max_keys = |value: &str| {
            Cli::try_parse_from(["dropgate", "run", &format!("--trace.max-keys={value}")])
                .map(|cli| match cli.command {
                    Command::Run { trace, .. } => trace.max_keys,
                    _ => panic!("run subcommand expected"),
                })
                .map_err(|err| err.to_string())
        };
        assert_eq!(max_keys("512"), Ok(512));
        for bad in ["0", "-1", "many"] {
            let err = max_keys(bad).expect_err("refused");
            assert!(err.contains("--trace.max-keys"), "{bad}: {err}");
        }
        let default = Cli::try_parse_from(["dropgate", "run"]).expect("defaults");
        let Command::Run { trace, .. } = default.command else {
            panic!("run subcommand expected");
        };
        assert_eq!(trace.max_keys, MAX_DROP_KEYS);
    }

    #[test]
    fn man_page_and_completions_carry_the_real_flags() {
        let render = |what| {
            let mut out = Vec::new();
            generate(what, &mut out).expect("generating into memory cannot fail");
            String::from_utf8(out).expect("generated text is UTF-8")
        };
        let man = render(Generated::Man);
        assert!(
            man.starts_with(".ie") || man.contains(".TH dropgate 1"),
            "roff: {man:.200}"
        );
        for command in ["run", "gateway", "diagnose", "selftest", "import", "watch"] {
            assert!(man.contains(command), "the man page lists `{command}`");
        }
        assert!(!man.contains("generate"), "the hidden command stays hidden");
        for (shell, marker) in [
            (Generated::Bash, "complete -F"),
            (Generated::Zsh, "#compdef dropgate"),
            (Generated::Fish, "complete -c dropgate"),
        ] {
            let script = render(shell);
            assert!(script.contains(marker), "{shell:?}: {script:.200}");
            for flag in ["web.listen-address", "persistence.file", "trace.hook"] {
                assert!(script.contains(flag), "{shell:?} completes --{flag}");
            }
        }
    }

    #[test]
    fn cache_slots() {
        for (text, want) in [
            ("0", Some(0)),
            ("1", Some(1)),
            ("256", Some(256)),
            ("65536", Some(65536)),
            ("100", None),
            ("131072", None),
            ("-1", None),
            ("many", None),
        ] {
            assert_eq!(
                parse_cache_slots(text).ok(),
                want,
                "--trace.cache-slots {text}"
            );
        }
    }

    #[test]
    fn durations() {
        let cases = [
            ("minutes", "5m", Some(300_000)),
            ("seconds", "30s", Some(30_000)),
            ("millis", "250ms", Some(250)),
            ("compound", "1h30m", Some(5_400_000)),
            ("fraction", "1.5s", Some(1_500)),
            ("zero", "0", Some(0)),
            ("no unit", "5", None),
            ("unknown unit", "5d", None),
            ("empty", "", Some(0)),
        ];
        for (name, text, want) in cases {
            let got = parse_duration(text).ok().map(|d| d.as_millis() as u64);
            assert_eq!(got, want, "case {name}");
        }
    }

    #[test]
    fn watch_filters_must_all_match() {
        let event = crate::samples::DropEvent {
            time: String::new(),
            netns: "host".into(),
            interface: "vh-ext".into(),
            direction: Some(crate::samples::Direction::Ingress),
            protocol: "tcp",
            src: Some("10.0.0.2".parse().expect("ip")),
            sport: 40000,
            dst: Some("172.18.0.2".parse().expect("ip")),
            dport: 80,
            reason: "IP_INADDRERRORS".into(),
            location: "ip_error".into(),
            class: crate::drop_class::DropClass::Transit,
            len: 60,
            target: crate::enrich::Destination::default(),
        };
        let parse = |args: &[&str]| {
            let mut argv = vec!["dropgate", "watch"];
            argv.extend(args);
            let Command::Watch { filter, .. } =
                Cli::try_parse_from(argv).expect("valid flags").command
            else {
                panic!("watch subcommand expected");
            };
            filter
        };
        let cases: [(&str, &[&str], bool); 9] = [
            ("no filter", &[], true),
            ("reason any case", &["--reason", "ip_inaddrerrors"], true),
            ("other reason", &["--reason", "NO_SOCKET"], false),
            ("destination host", &["--host", "172.18.0.2"], true),
            ("source port", &["--port", "40000"], true),
            ("other port", &["--port", "81"], false),
            (
                "protocol and netns",
                &["--proto", "tcp", "--netns", "host"],
                true,
            ),
            (
                "one of two fails",
                &["--proto", "udp", "--netns", "host"],
                false,
            ),
            (
                "location and interface",
                &["--location", "ip_error", "--interface", "vh-ext"],
                true,
            ),
        ];
        for (name, args, want) in cases {
            assert_eq!(parse(args).matches(&event), want, "case {name}");
        }
        // Local drops only with --all, whatever else matches.
        let local = crate::samples::DropEvent {
            reason: "QUEUE_PURGE".into(),
            class: crate::drop_class::DropClass::Local,
            ..event
        };
        assert!(!parse(&[]).matches(&local), "local hidden by default");
        assert!(parse(&["--all"]).matches(&local), "--all shows local");
        assert!(
            !parse(&["--all", "--reason", "NO_SOCKET"]).matches(&local),
            "--all does not turn off the other filters"
        );
    }

    #[test]
    fn class_lines_are_checked_while_parsing() {
        let parsed = Cli::try_parse_from([
            "dropgate",
            "run",
            "--trace.class",
            "NO_SOCKET@__udp4_lib_rcv=local",
            "--trace.netns",
            "root",
        ]);
        let Command::Run { trace, .. } = parsed.expect("valid flags").command else {
            panic!("run subcommand expected");
        };
        assert_eq!(trace.netns, ["root"]);
        assert_eq!(
            trace
                .classes
                .classifier()
                .class("NO_SOCKET", "__udp4_lib_rcv", "udp"),
            crate::drop_class::DropClass::Local
        );
        let err = Cli::try_parse_from(["dropgate", "run", "--trace.class", "NO_SOCKET=gone"])
            .expect_err("an unknown class is refused");
        assert!(
            err.to_string().contains("transit, refused or local"),
            "{err}"
        );
    }

    #[test]
    fn cli_parses_pushgateway_flags() {
        let cli = Cli::try_parse_from([
            "dropgate",
            "gateway",
            "--web.listen-address=127.0.0.1:1",
            "--persistence.file=/tmp/x",
            "--persistence.interval=1m",
            "--web.enable-admin-api",
            "--web.enable-lifecycle",
            "--push.disable-consistency-check",
            "--web.route-prefix=/pg",
        ])
        .expect("pushgateway's flags are accepted");
        let Command::Gateway { gateway } = cli.command else {
            panic!("gateway subcommand expected");
        };
        assert!(
            gateway.enable_admin_api
                && gateway.enable_lifecycle
                && gateway.disable_consistency_check
        );
        assert_eq!(gateway.persistence_interval, Duration::from_mins(1));
        assert_eq!(gateway.route_prefix, "/pg");
    }

    #[test]
    fn hardening_flags_are_checked_at_parse_time() {
        let parse = |args: &[&str]| {
            let mut argv = vec!["dropgate", "gateway"];
            argv.extend(args);
            Cli::try_parse_from(argv).map(|cli| match cli.command {
                Command::Gateway { gateway } => gateway.into_config(),
                _ => panic!("gateway subcommand expected"),
            })
        };
        let config = parse(&[
            "--web.deny-path=^/admin",
            "--web.deny-path=secret",
            "--web.allow-push-from=10.0.0.0/8",
            "--web.allow-push-from=::1",
            "--web.header-read-timeout=500ms",
            "--web.max-connections=8",
            "--push.max-series-per-push=10",
        ])
        .expect("valid hardening flags");
        assert_eq!(config.deny_paths, ["^/admin", "secret"]);
        assert_eq!(config.allow_push_from, ["10.0.0.0/8", "::1"]);
        assert_eq!(config.header_read_timeout, Duration::from_millis(500));
        assert_eq!(config.max_connections, 8);
        assert_eq!(config.max_series_per_push, 10);
        let cases: [(&str, &[&str]); 3] = [
            ("bad regex", &["--web.deny-path=("]),
            ("bad prefix length", &["--web.allow-push-from=10.0.0.0/33"]),
            ("not a network", &["--web.allow-push-from=example.com"]),
        ];
        for (name, args) in cases {
            assert!(parse(args).is_err(), "case {name} was accepted");
        }
    }
}
