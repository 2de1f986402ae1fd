//! Network namespaces made by a test and removed when it ends, also when it fails.
//!
//! Everything a topology creates (veths, bridges, addresses, iptables and nft rules,
//! sysctls) lives inside its namespaces, so deleting them undoes all of it and the
//! machine's own namespace is never touched. Names carry the test's pid so that two
//! runs never collide.

use std::process::{Command, Output};

/// One named network namespace (`ip netns add`), deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    /// Creates `dg-<role>-<pid>`; a stale one of the same name is replaced.
    pub fn create(role: &str) -> Self {
        let name = format!("dg-{role}-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        run_ok(
            Command::new("ip").args(["netns", "add", &name]),
            "ip netns add",
        );
        let ns = Self { name };
        ns.sh("ip link set lo up");
        ns
    }

    /// `ip netns exec <ns> sh -c <script>`; panics with the output if it fails.
    pub fn sh(&self, script: &str) -> String {
        let out = self.sh_output(script);
        assert!(
            out.status.success(),
            "in netns {}: `{script}` failed ({}): {}{}",
            self.name,
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Like [`Netns::sh`] but returns the output whatever the exit status.
    pub fn sh_output(&self, script: &str) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.name, "sh", "-c", script])
            .output()
            .expect("run ip netns exec")
    }

    /// A command that runs inside this namespace.
    #[must_use]
    pub fn command(&self, program: &str) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name, program]);
        command
    }

    /// The inode of the namespace, as the kernel reports it in drop events.
    #[must_use]
    pub fn inode(&self) -> u64 {
        use std::os::unix::fs::MetadataExt as _;
        std::fs::metadata(format!("/run/netns/{}", self.name))
            .expect("namespace file exists")
            .ino()
    }

    /// A counter from this namespace's `/proc/net/snmp`, e.g. ("Ip", "InAddrErrors").
    #[must_use]
    pub fn snmp(&self, group: &str, field: &str) -> u64 {
        let text = self.sh("cat /proc/net/snmp");
        snmp_value(&text, group, field)
            .unwrap_or_else(|| panic!("no {group}:{field} in /proc/net/snmp of {}", self.name))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
            .map(|out| {
                for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    let _ = Command::new("kill").args(["-KILL", pid]).status();
                }
            });
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Reads `field` of `group` from `/proc/net/snmp` text (a header line, then a value line).
#[must_use]
pub fn snmp_value(text: &str, group: &str, field: &str) -> Option<u64> {
    let prefix = format!("{group}:");
    let mut lines = text.lines().filter(|l| l.starts_with(&prefix));
    let header = lines.next()?;
    let values = lines.next()?;
    let index = header.split_whitespace().position(|h| h == field)?;
    values.split_whitespace().nth(index)?.parse().ok()
}

fn run_ok(command: &mut Command, what: &str) {
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot start: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The incident's shape: `ext` (another host) — veth — `host` (a Docker host: bridge
/// `br0` with the container behind it, DNAT of :9091 to the container's :80) — `ctr`.
pub struct DockerLikeHost {
    pub ext: Netns,
    pub host: Netns,
    pub ctr: Netns,
}

impl DockerLikeHost {
    /// The host's address as `ext` sees it.
    pub const HOST_ADDR: &'static str = "10.231.0.1";
    pub const EXT_ADDR: &'static str = "10.231.0.2";
    pub const BRIDGE_ADDR: &'static str = "172.31.231.1";
    pub const CTR_ADDR: &'static str = "172.31.231.2";
    /// A source address `ext` can send from that the host has no route back to.
    pub const SPOOFED_ADDR: &'static str = "192.0.2.99";
    pub const PUBLISHED_PORT: u16 = 9091;
    pub const CTR_PORT: u16 = 80;
    /// The host-side name of the veth to `ext` (the ingress interface of the drops).
    pub const HOST_UPLINK: &'static str = "vh-ext";

    /// Builds the topology with IPv4 forwarding off in `host`, as on the broken machine.
    pub fn build() -> Self {
        Self::build_as("")
    }

    /// [`Self::build`] with `tag` in the namespace names, for tests that need several
    /// such hosts at once (`dg-host<tag>-<pid>`, ...).
    pub fn build_as(tag: &str) -> Self {
        let ext = Netns::create(&format!("ext{tag}"));
        let host = Netns::create(&format!("host{tag}"));
        let ctr = Netns::create(&format!("ctr{tag}"));
        // Links are created in `host` and moved out, so no name is ever used in the
        // machine's own namespace.
        host.sh(&format!(
            "ip link add {up} type veth peer name ve-ext netns {ext} && \
             ip link add br0 type bridge && \
             ip link add vh-ctr type veth peer name eth0 netns {ctr} && \
             ip link set vh-ctr master br0 && \
             ip addr add {host}/24 dev {up} && ip addr add {br}/24 dev br0 && \
             ip link set {up} up && ip link set br0 up && ip link set vh-ctr up && \
             sysctl -qw net.ipv4.ip_forward=0",
            up = Self::HOST_UPLINK,
            ext = ext.name,
            ctr = ctr.name,
            host = Self::HOST_ADDR,
            br = Self::BRIDGE_ADDR,
        ));
        ext.sh(&format!(
            "ip addr add {ext}/24 dev ve-ext && ip link set ve-ext up",
            ext = Self::EXT_ADDR
        ));
        ctr.sh(&format!(
            "ip addr add {ctr}/24 dev eth0 && ip link set eth0 up && ip route add default via {br}",
            ctr = Self::CTR_ADDR,
            br = Self::BRIDGE_ADDR
        ));
        let topo = Self { ext, host, ctr };
        topo.host.sh(&Self::publishing("-A"));
        topo
    }

    /// Docker's port publishing, added (`-A`) or deleted (`-D`): DNAT in PREROUTING for
    /// traffic from other hosts and in OUTPUT for the host's own (non-loopback) traffic,
    /// and source NAT for the container.
    fn publishing(action: &str) -> String {
        format!(
            "iptables -t nat {a} PREROUTING -p tcp --dport {p} -j DNAT --to-destination {c}:{cp} && \
             iptables -t nat {a} OUTPUT -p tcp -d {h} --dport {p} -j DNAT --to-destination {c}:{cp} && \
             iptables -t nat {a} POSTROUTING -s {c}/24 ! -o br0 -j MASQUERADE",
            a = action,
            p = Self::PUBLISHED_PORT,
            c = Self::CTR_ADDR,
            cp = Self::CTR_PORT,
            h = Self::HOST_ADDR,
        )
    }

    /// Deletes the port publishing [`Self::build`] added (with iptables, iptables-nft
    /// on Debian).
    pub fn unpublish(&self) {
        self.host.sh(&Self::publishing("-D"));
    }

    /// Starts a small HTTP service on the container's port 80.
    pub fn start_http_service(&self) {
        self.ctr.sh(
            "(/usr/bin/python3 -m http.server 80 --bind 0.0.0.0 >/dev/null 2>&1 &) ; sleep 0.5",
        );
    }

    /// Strict reverse-path filtering on the host's uplink, and a source address on
    /// `ext` that the host has no route back to.
    pub fn strict_rp_filter_with_spoofable_source(&self) {
        self.host.sh(&format!(
            "sysctl -qw net.ipv4.conf.all.rp_filter=1 net.ipv4.conf.{}.rp_filter=1",
            Self::HOST_UPLINK
        ));
        self.ext
            .sh(&format!("ip addr add {}/32 dev ve-ext", Self::SPOOFED_ADDR));
    }

    /// Three pings from `ext` with the spoofed source; the output of the spoofed ones.
    /// A normal ping first fills ext's ARP cache: with strict rp_filter the host would
    /// also ignore an ARP request from the spoofed address, and nothing would reach it.
    pub fn ping_with_spoofed_source(&self) -> Output {
        self.ext.sh(&format!("ping -c 1 -W 2 {}", Self::HOST_ADDR));
        self.ext.sh_output(&format!(
            "ping -c 3 -i 0.2 -W 1 -I {} {}",
            Self::SPOOFED_ADDR,
            Self::HOST_ADDR
        ))
    }

    /// Sets `net.ipv4.ip_forward` in `host`.
    pub fn set_forwarding(&self, on: bool) {
        self.host
            .sh(&format!("sysctl -qw net.ipv4.ip_forward={}", u8::from(on)));
    }

    /// curl from `ext` to the published port; the HTTP status, or `None` if it failed.
    #[must_use]
    pub fn curl_from_ext(&self, path: &str, timeout_s: u32) -> Option<u16> {
        curl(&self.ext, Self::HOST_ADDR, path, timeout_s)
    }

    /// curl from inside `host` to its own address and published port.
    #[must_use]
    pub fn curl_from_host(&self, path: &str, timeout_s: u32) -> Option<u16> {
        curl(&self.host, Self::HOST_ADDR, path, timeout_s)
    }
}

fn curl(ns: &Netns, addr: &str, path: &str, timeout_s: u32) -> Option<u16> {
    let out = ns.sh_output(&format!(
        "curl -s -o /dev/null -w '%{{http_code}}' -m {timeout_s} http://{addr}:{}{path}",
        DockerLikeHost::PUBLISHED_PORT
    ));
    let code: u16 = String::from_utf8_lossy(&out.stdout).trim().parse().ok()?;
    (out.status.success() && code != 0).then_some(code)
}

#[cfg(test)]
mod tests {
    use super::snmp_value;

    #[test]
    fn reads_snmp_counters() {
        let text = "Ip: Forwarding DefaultTTL InReceives InHdrErrors InAddrErrors\n\
                    Ip: 2 64 100 0 7\n\
                    Icmp: InMsgs\nIcmp: 3\n";
        assert_eq!(snmp_value(text, "Ip", "InAddrErrors"), Some(7));
        assert_eq!(snmp_value(text, "Ip", "Forwarding"), Some(2));
        assert_eq!(snmp_value(text, "Icmp", "InMsgs"), Some(3));
        assert_eq!(snmp_value(text, "Ip", "Nope"), None);
    }
}
