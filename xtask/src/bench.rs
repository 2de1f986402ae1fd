//! `cargo xtask bench tracer`: what dropgate's kernel program costs per drop, side by side
//! with an empty program on the same hook (the floor) and a `bpftrace` one-liner that
//! counts `kfree_skb` by reason, and how fast a UDP flood into a forwarding-off router
//! goes with each of them attached (and with none).
//!
//! Per-event cost is the kernel's own accounting (`kernel.bpf_stats_enabled=1`:
//! `run_time_ns / run_cnt` of the programs, read with bpftool before and after each
//! flood). The flood runs between two network namespaces the bench creates and deletes;
//! the router has `ip_forward=0`, so every datagram is freed in `ip_error`, one
//! `kfree_skb` each. Rounds are interleaved so that a machine getting busier or quieter
//! affects every contender alike. This is a benchmark, not a test: it asserts nothing
//! about time; it prints the table and records it under "Tracer" in BENCHMARKS.md.
//! `DROPGATE_BIN=path` measures that binary instead of a fresh release build.

use std::{
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use crate::{cmd, setup};

/// Packets per flood (the issue asks for at least a million).
const PACKETS: u64 = 1_000_000;
/// Each contender floods this many times, interleaved with the others.
const ROUNDS: usize = 3;
/// Upper bound on one flood, so a stalled machine cannot hang the bench.
const FLOOD_SECONDS: u32 = 60;

const SENDER_ADDR: &str = "10.240.0.2";
const ROUTER_ADDR: &str = "10.240.0.1";
/// Behind the router, which does not forward: every datagram dies in `ip_error`.
const TARGET: &str = "172.31.240.2:9";
const TARGET_NET: &str = "172.31.240.0/24";

pub fn bench(what: &str, footprint_only: bool) -> Result<()> {
    if footprint_only && what != "tracer" {
        bail!("--footprint is a part of the tracer bench: `cargo xtask bench tracer --footprint`");
    }
    match what {
        "tracer" if footprint_only => footprint(),
        "tracer" => tracer().and_then(|()| footprint()),
        "gateway" => crate::bench_gateway::run(),
        "gateway-otlp" => crate::bench_gateway::run_otlp(),
        "hostile" => crate::bench_hostile::run(),
        other => bail!("unknown bench {other:?}; known: tracer, gateway, gateway-otlp, hostile"),
    }
}

/// The hook a program runs on; the floor is measured on each.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Hook {
    TpBtf,
    Tracepoint,
}

impl Hook {
    fn name(self) -> &'static str {
        match self {
            Self::TpBtf => "tp_btf",
            Self::Tracepoint => "tracepoint",
        }
    }
}

/// What is attached to `kfree_skb` while the flood runs.
#[derive(Clone, Copy)]
enum Contender {
    Nothing,
    EmptyTpBtf,
    EmptyTracepoint,
    Dropgate(Hook),
    BpftraceByReason,
}

const CONTENDERS: [Contender; 6] = [
    Contender::Nothing,
    Contender::EmptyTpBtf,
    Contender::EmptyTracepoint,
    Contender::Dropgate(Hook::TpBtf),
    Contender::Dropgate(Hook::Tracepoint),
    Contender::BpftraceByReason,
];

const BPFTRACE_EMPTY: &str = "tracepoint:skb:kfree_skb {}";
const BPFTRACE_BY_REASON: &str = "tracepoint:skb:kfree_skb { @[args->reason] = count(); }";

impl Contender {
    fn label(self) -> &'static str {
        match self {
            Self::Nothing => "no program",
            Self::EmptyTpBtf => "empty program (floor; raw bpf())",
            Self::EmptyTracepoint => "empty program (floor; `bpftrace -e '…{}'`)",
            Self::Dropgate(_) => "dropgate run",
            Self::BpftraceByReason => "`bpftrace` count by reason",
        }
    }

    fn hook(self) -> Option<Hook> {
        match self {
            Self::Nothing => None,
            Self::EmptyTpBtf | Self::Dropgate(Hook::TpBtf) => Some(Hook::TpBtf),
            Self::EmptyTracepoint | Self::Dropgate(Hook::Tracepoint) | Self::BpftraceByReason => {
                Some(Hook::Tracepoint)
            }
        }
    }

    fn is_floor(self) -> bool {
        matches!(self, Self::EmptyTpBtf | Self::EmptyTracepoint)
    }
}

/// What one contender accumulated over its rounds.
#[derive(Default)]
struct Tally {
    run_time_ns: u64,
    run_cnt: u64,
    packets: u64,
    rates: Vec<f64>,
}

impl Tally {
    fn ns_per_event(&self) -> Option<f64> {
        (self.run_cnt > 0).then(|| self.run_time_ns as f64 / self.run_cnt as f64)
    }

    /// The best round: other work on the machine only ever slows a flood down, so the
    /// fastest round is the one least disturbed.
    fn best_rate(&self) -> f64 {
        self.rates.iter().copied().fold(0.0, f64::max)
    }
}

fn tracer() -> Result<()> {
    setup::setup()?;
    if !cmd::is_root() {
        bail!("the tracer bench loads BPF programs and creates namespaces: run it as root");
    }
    for tool in ["bpftool", "bpftrace", "ip"] {
        if cmd::stdout_of(Command::new("which").arg(tool)).is_none() {
            bail!("{tool} not found; `cargo xtask setup` installs it");
        }
    }
    // `DROPGATE_BIN=path` benchmarks that binary instead of building one (as
    // `cargo xtask test-kernels` does), e.g. to compare two builds of the probe.
    let dropgate = if let Some(path) = std::env::var_os("DROPGATE_BIN") {
        PathBuf::from(path)
    } else {
        cmd::build_dropgate(true)?
    };
    cmd::run(
        cmd::cargo()
            .args(["build", "--release", "--package", "dropgate-tests"])
            .args(["--bin", "flood"]),
    )?;
    let bin = cmd::target_dir().join("release");
    let tools = Tools {
        dropgate,
        flood: bin.join("flood"),
        log: bin.join("bench-tracer.log"),
    };

    let lab = Lab::create()?;
    let _stats = BpfStats::enable()?;
    let mut tallies: Vec<Tally> = CONTENDERS.iter().map(|_| Tally::default()).collect();
    for round in 1..=ROUNDS {
        for (contender, tally) in CONTENDERS.iter().zip(&mut tallies) {
            eprintln!(
                "xtask: bench round {round}/{ROUNDS}: {} {}",
                contender.label(),
                contender.hook().map_or("", Hook::name)
            );
            measure(*contender, &lab, &tools, tally)
                .with_context(|| format!("measuring {}", contender.label()))?;
        }
    }
    drop(lab);

    publish("Tracer", &report(&tallies)?)
}

/// The footprint table of [`crate::bench_footprint`], under "Tracer footprint".
fn footprint() -> Result<()> {
    if !cmd::is_root() {
        bail!("the footprint bench runs `dropgate run` and creates namespaces: run it as root");
    }
    // Resident memory depends on the allocator and the linking: measure the binary users
    // install (static, musl, mimalloc), unless `DROPGATE_BIN` names another.
    let dropgate = if let Some(path) = std::env::var_os("DROPGATE_BIN") {
        PathBuf::from(path)
    } else {
        crate::dist::static_binary_for(std::env::consts::ARCH)?
    };
    let log = cmd::target_dir().join("bench-footprint.log");
    let report = crate::bench_footprint::run(&dropgate, &log)
        .with_context(|| format!("footprint bench; dropgate's stderr is in {}", log.display()))?;
    publish("Tracer footprint", &report)
}

/// Prints a bench's report and puts it under `heading` in BENCHMARKS.md.
pub(crate) fn publish(heading: &str, report: &str) -> Result<()> {
    println!("{report}");
    let path = cmd::workspace_root().join("BENCHMARKS.md");
    write_section(&path, heading, report)?;
    eprintln!(
        "xtask: wrote the table under \"{heading}\" in {}",
        path.display()
    );
    Ok(())
}

struct Tools {
    dropgate: PathBuf,
    flood: PathBuf,
    /// stderr of the programs under test, for when one fails to start.
    log: PathBuf,
}

/// One round of one contender: attach, flood, read the kernel's accounting, detach.
fn measure(contender: Contender, lab: &Lab, tools: &Tools, tally: &mut Tally) -> Result<()> {
    let attached = Attached::start(contender, tools)?;
    let programs = attached.programs()?;
    let before = run_stats(&programs)?;
    let flood = lab.flood(&tools.flood)?;
    let after = run_stats(&programs)?;
    attached.stop();
    tally.run_time_ns += after.0.saturating_sub(before.0);
    tally.run_cnt += after.1.saturating_sub(before.1);
    tally.packets += flood.sent;
    tally.rates.push(flood.rate);
    Ok(())
}

/// Sum of `run_time_ns` and `run_cnt` over `programs`, from `bpftool prog show`.
fn run_stats(programs: &[u64]) -> Result<(u64, u64)> {
    let mut total = (0, 0);
    for id in programs {
        let json = cmd::stdout_of(Command::new("bpftool").args([
            "prog",
            "show",
            "id",
            &id.to_string(),
            "--json",
        ]))
        .with_context(|| format!("bpftool prog show id {id} failed: the program went away"))?;
        // bpftool omits the fields while they are zero.
        total.0 += json_number(&json, "run_time_ns").unwrap_or(0);
        total.1 += json_number(&json, "run_cnt").unwrap_or(0);
    }
    Ok(total)
}

/// The number after `"key":` in bpftool's JSON (which has no nesting for these keys).
fn json_number(json: &str, key: &str) -> Option<u64> {
    let (_, rest) = json.split_once(&format!("\"{key}\":"))?;
    rest.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// Cargo's target directory, as the builds above used it.
/// The sender and router namespaces, deleted on drop (also when the bench fails).
struct Lab {
    sender: String,
    router: String,
}

struct Flood {
    sent: u64,
    rate: f64,
}

impl Lab {
    fn create() -> Result<Self> {
        let pid = std::process::id();
        let lab = Self {
            sender: format!("dg-bench-snd-{pid}"),
            router: format!("dg-bench-rtr-{pid}"),
        };
        for ns in [&lab.sender, &lab.router] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
            cmd::run(Command::new("ip").args(["netns", "add", ns]))?;
        }
        let (s, r) = (lab.sender.as_str(), lab.router.as_str());
        for args in [
            format!("-n {r} link add rtr0 type veth peer name snd0 netns {s}"),
            format!("-n {r} addr add {ROUTER_ADDR}/24 dev rtr0"),
            format!("-n {r} link set rtr0 up"),
            format!("-n {r} link set lo up"),
            format!("-n {s} addr add {SENDER_ADDR}/24 dev snd0"),
            format!("-n {s} link set snd0 up"),
            format!("-n {s} link set lo up"),
            format!("-n {s} route add {TARGET_NET} via {ROUTER_ADDR}"),
            format!("netns exec {r} sysctl -qw net.ipv4.ip_forward=0"),
            // Resolve the router's MAC once, so no flood waits on ARP.
            format!("netns exec {s} ping -q -c 1 -W 2 {ROUTER_ADDR}"),
        ] {
            cmd::run(
                Command::new("ip")
                    .args(args.split_whitespace())
                    .stdout(Stdio::null()),
            )?;
        }
        Ok(lab)
    }

    fn flood(&self, flood: &Path) -> Result<Flood> {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.sender])
            .arg(flood)
            .args([
                TARGET,
                "--count",
                &PACKETS.to_string(),
                "--seconds",
                &FLOOD_SECONDS.to_string(),
            ])
            .output()
            .context("running the flood sender")?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            bail!(
                "flood failed ({}): {stdout}{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let field = |name: &str| {
            stdout
                .split_whitespace()
                .find_map(|f| f.strip_prefix(name))
                .and_then(|v| v.parse::<f64>().ok())
                .with_context(|| format!("flood printed no {name}: {stdout}"))
        };
        Ok(Flood {
            sent: field("sent=")? as u64,
            rate: field("rate=")?,
        })
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in [&self.sender, &self.router] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// `kernel.bpf_stats_enabled=1` while alive; the previous value is restored on drop.
struct BpfStats {
    previous: String,
}

const BPF_STATS_SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";

impl BpfStats {
    fn enable() -> Result<Self> {
        let previous = fs::read_to_string(BPF_STATS_SYSCTL)
            .with_context(|| format!("reading {BPF_STATS_SYSCTL}"))?
            .trim()
            .to_owned();
        fs::write(BPF_STATS_SYSCTL, "1").with_context(|| format!("enabling {BPF_STATS_SYSCTL}"))?;
        Ok(Self { previous })
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        if let Err(err) = fs::write(BPF_STATS_SYSCTL, &self.previous) {
            eprintln!(
                "xtask: could not restore kernel.bpf_stats_enabled={}: {err}",
                self.previous
            );
        }
    }
}

/// A contender while attached; detached when stopped or dropped.
enum Attached {
    Nothing,
    /// dropgate or bpftrace: the programs are those whose fds the process holds.
    Process(Child),
    Empty(empty_tp_btf::Program),
}

impl Attached {
    fn start(contender: Contender, tools: &Tools) -> Result<Self> {
        let mut command = match contender {
            Contender::Nothing => return Ok(Self::Nothing),
            Contender::EmptyTpBtf => return Ok(Self::Empty(empty_tp_btf::Program::attach()?)),
            Contender::EmptyTracepoint => bpftrace(BPFTRACE_EMPTY),
            Contender::BpftraceByReason => bpftrace(BPFTRACE_BY_REASON),
            Contender::Dropgate(hook) => {
                let port = std::net::TcpListener::bind("127.0.0.1:0")
                    .and_then(|l| l.local_addr())
                    .context("finding a free port for dropgate's listener")?
                    .port();
                let mut command = Command::new(&tools.dropgate);
                command.args([
                    "run",
                    "--web.listen-address",
                    &format!("127.0.0.1:{port}"),
                    "--trace.hook",
                    match hook {
                        Hook::TpBtf => "tp-btf",
                        Hook::Tracepoint => "tracepoint",
                    },
                ]);
                command
            }
        };
        let log = fs::File::create(&tools.log)
            .with_context(|| format!("creating {}", tools.log.display()))?;
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {command:?}"))?;
        let mut attached = Self::Process(child);
        attached.wait_attached().with_context(|| {
            format!(
                "{command:?} did not attach; its stderr is in {}",
                tools.log.display()
            )
        })?;
        Ok(attached)
    }

    /// Waits until the process holds a program and an attachment (a BPF link or a perf
    /// event carrying the program).
    fn wait_attached(&mut self) -> Result<()> {
        let Self::Process(child) = self else {
            return Ok(());
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait()? {
                bail!("it exited with {status}");
            }
            let fds = bpf_fds(child.id());
            if !fds.programs.is_empty() && fds.attachments > 0 {
                // The attachment fd exists just before the attach call returns.
                std::thread::sleep(Duration::from_millis(300));
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("no program attached within 30 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn programs(&self) -> Result<Vec<u64>> {
        match self {
            Self::Nothing => Ok(Vec::new()),
            Self::Process(child) => {
                // A process may hold one program through several descriptors (dropgate
                // keeps a duplicate for the kernel's counters): count each program once.
                let mut ids = bpf_fds(child.id()).programs;
                ids.sort_unstable();
                ids.dedup();
                Ok(ids)
            }
            Self::Empty(program) => Ok(vec![program.id()?]),
        }
    }

    fn stop(self) {
        drop(self);
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        let Self::Process(child) = self else {
            return;
        };
        // SIGTERM first: dropgate and bpftrace detach and exit cleanly on it.
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if matches!(child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("xtask: {} did not stop on SIGTERM; killing it", child.id());
        let _ = child.kill();
        let _ = child.wait();
    }
}

fn bpftrace(script: &str) -> Command {
    let mut command = Command::new("bpftrace");
    command.args(["-e", script]);
    command
}

/// BPF program IDs a process holds, and how many attachment fds (links, perf events).
struct BpfFds {
    programs: Vec<u64>,
    attachments: usize,
}

fn bpf_fds(pid: u32) -> BpfFds {
    let mut fds = BpfFds {
        programs: Vec::new(),
        attachments: 0,
    };
    let Ok(entries) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return fds;
    };
    for entry in entries.flatten() {
        let Ok(target) = fs::read_link(entry.path()) else {
            continue;
        };
        match target.to_string_lossy().as_ref() {
            "anon_inode:bpf-prog" => {
                let info = fs::read_to_string(format!(
                    "/proc/{pid}/fdinfo/{}",
                    entry.file_name().to_string_lossy()
                ))
                .unwrap_or_default();
                if let Some(id) = fdinfo_value(&info, "prog_id:") {
                    fds.programs.push(id);
                }
            }
            "anon_inode:bpf_link" | "anon_inode:[perf_event]" => fds.attachments += 1,
            _ => {}
        }
    }
    fds
}

fn fdinfo_value(info: &str, key: &str) -> Option<u64> {
    info.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().parse().ok())
}

/// The empty program on tp_btf, loaded with the bpf() system call directly: bpftrace
/// 0.17 has no tp_btf probes and bpftool cannot attach tracing programs.
mod empty_tp_btf {
    use std::{
        os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        process::Command,
    };

    use anyhow::{bail, Context as _, Result};

    use super::fdinfo_value;

    #[cfg(target_arch = "x86_64")]
    const SYS_BPF: i64 = 321;
    #[cfg(target_arch = "aarch64")]
    const SYS_BPF: i64 = 280;

    const BPF_PROG_LOAD: i64 = 5;
    const BPF_RAW_TRACEPOINT_OPEN: i64 = 17;
    const BPF_PROG_TYPE_TRACING: u32 = 26;
    const BPF_TRACE_RAW_TP: u32 = 23;

    unsafe extern "C" {
        /// glibc's generic system call entry (std links glibc on Linux).
        fn syscall(number: i64, ...) -> i64;
    }

    /// `union bpf_attr` as BPF_PROG_LOAD reads it, up to `attach_prog_fd`.
    #[repr(C)]
    struct ProgLoadAttr {
        prog_type: u32,
        insn_cnt: u32,
        insns: u64,
        license: u64,
        log_level: u32,
        log_size: u32,
        log_buf: u64,
        kern_version: u32,
        prog_flags: u32,
        prog_name: [u8; 16],
        prog_ifindex: u32,
        expected_attach_type: u32,
        prog_btf_fd: u32,
        func_info_rec_size: u32,
        func_info: u64,
        func_info_cnt: u32,
        line_info_rec_size: u32,
        line_info: u64,
        line_info_cnt: u32,
        attach_btf_id: u32,
        attach_prog_fd: u32,
        pad: u32,
    }

    /// `union bpf_attr` as BPF_RAW_TRACEPOINT_OPEN reads it.
    #[repr(C)]
    struct RawTracepointOpenAttr {
        name: u64,
        prog_fd: u32,
        pad: u32,
    }

    /// `r0 = 0; exit`: returns at once.
    const INSNS: [u64; 2] = [0x0000_0000_0000_00b7, 0x0000_0000_0000_0095];
    const LICENSE: &[u8] = b"GPL\0";

    /// The loaded and attached program; closing both fds detaches and unloads it.
    pub struct Program {
        program: OwnedFd,
        _link: OwnedFd,
    }

    impl Program {
        pub fn attach() -> Result<Self> {
            let btf_id = btf_trace_kfree_skb_id()?;
            let mut log = vec![0_u8; 64 * 1024];
            let mut name = [0_u8; 16];
            name[..14].copy_from_slice(b"dg_bench_empty");
            let attr = ProgLoadAttr {
                prog_type: BPF_PROG_TYPE_TRACING,
                insn_cnt: INSNS.len() as u32,
                insns: INSNS.as_ptr() as u64,
                license: LICENSE.as_ptr() as u64,
                log_level: 1,
                log_size: log.len() as u32,
                log_buf: log.as_mut_ptr() as u64,
                kern_version: 0,
                prog_flags: 0,
                prog_name: name,
                prog_ifindex: 0,
                expected_attach_type: BPF_TRACE_RAW_TP,
                prog_btf_fd: 0,
                func_info_rec_size: 0,
                func_info: 0,
                func_info_cnt: 0,
                line_info_rec_size: 0,
                line_info: 0,
                line_info_cnt: 0,
                attach_btf_id: btf_id,
                attach_prog_fd: 0,
                pad: 0,
            };
            // SAFETY: `attr` is a fully initialised bpf_attr prefix (explicit padding)
            // of the size passed; the instruction, license and log buffers it points at
            // live until the call returns, and the kernel writes at most `log_size`
            // bytes into `log`.
            let fd = unsafe {
                syscall(
                    SYS_BPF,
                    BPF_PROG_LOAD,
                    &raw const attr,
                    size_of::<ProgLoadAttr>() as u32,
                )
            };
            if fd < 0 {
                let err = std::io::Error::last_os_error();
                let verifier = String::from_utf8_lossy(&log);
                bail!(
                    "loading the empty tp_btf program: {err}; verifier log: {}",
                    verifier.trim_end_matches('\0').trim()
                );
            }
            // SAFETY: a new fd the kernel just returned, owned by nobody else.
            let program = unsafe { OwnedFd::from_raw_fd(fd as i32) };
            let attr = RawTracepointOpenAttr {
                name: 0,
                prog_fd: program.as_raw_fd() as u32,
                pad: 0,
            };
            // SAFETY: as above, a fully initialised attribute of the size passed.
            let fd = unsafe {
                syscall(
                    SYS_BPF,
                    BPF_RAW_TRACEPOINT_OPEN,
                    &raw const attr,
                    size_of::<RawTracepointOpenAttr>() as u32,
                )
            };
            if fd < 0 {
                bail!(
                    "attaching the empty tp_btf program to kfree_skb: {}",
                    std::io::Error::last_os_error()
                );
            }
            // SAFETY: a new fd the kernel just returned, owned by nobody else.
            let link = unsafe { OwnedFd::from_raw_fd(fd as i32) };
            Ok(Self {
                program,
                _link: link,
            })
        }

        pub fn id(&self) -> Result<u64> {
            let info =
                std::fs::read_to_string(format!("/proc/self/fdinfo/{}", self.program.as_raw_fd()))
                    .context("reading the empty program's fdinfo")?;
            fdinfo_value(&info, "prog_id:").context("no prog_id in the empty program's fdinfo")
        }
    }

    /// BTF type ID of `btf_trace_kfree_skb`, the tracepoint's typed prototype, which a
    /// tp_btf program names as its attach target.
    fn btf_trace_kfree_skb_id() -> Result<u32> {
        let dump = crate::cmd::stdout_of(Command::new("bpftool").args([
            "btf",
            "dump",
            "file",
            "/sys/kernel/btf/vmlinux",
        ]))
        .context("bpftool btf dump file /sys/kernel/btf/vmlinux failed")?;
        // A line like `[38132] TYPEDEF 'btf_trace_kfree_skb' type_id=38133`.
        dump.lines()
            .find(|l| l.contains("TYPEDEF 'btf_trace_kfree_skb'"))
            .and_then(|l| l.strip_prefix('[')?.split(']').next()?.parse().ok())
            .context("no btf_trace_kfree_skb in the kernel's BTF: no tp_btf kfree_skb here")
    }
}

/// The table and the verdicts against the issue's targets, as Markdown.
fn report(tallies: &[Tally]) -> Result<String> {
    let floor = |hook: Hook| {
        CONTENDERS
            .iter()
            .zip(tallies)
            .find(|(c, _)| c.is_floor() && c.hook() == Some(hook))
            .and_then(|(_, t)| t.ns_per_event())
    };
    let baseline = tallies[0].best_rate();
    let kernel = cmd::stdout_of(Command::new("uname").arg("-r")).unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_default();
    let date = cmd::stdout_of(Command::new("date").args(["-u", "+%Y-%m-%d"])).unwrap_or_default();
    let bpftrace = cmd::stdout_of(Command::new("bpftrace").arg("--version")).unwrap_or_default();
    // Other work on the machine moves packets/s far more than ns/event: say how busy it was.
    let load = fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_default();

    let mut out = String::new();
    writeln!(
        out,
        "`cargo xtask bench tracer`, {date}: kernel {kernel}, {cpus} CPUs ({cpu}), {bpftrace};\n\
         load average {load} when the table was made.\n\
         {ROUNDS} interleaved rounds per row of {} UDP datagrams from a sender namespace\n\
         into a router namespace with `ip_forward=0` (each one freed in `ip_error`).\n\
         ns/event: `run_time_ns / run_cnt` with `kernel.bpf_stats_enabled=1`, over all rounds;\n\
         events/packet: program runs per datagram sent (background drops add a little);\n\
         packets/s: the sender's rate, best of the rounds.\n",
        thousands(PACKETS as f64)
    )?;
    writeln!(
        out,
        "| program | hook | ns/event | vs empty (same hook) | events/packet | packets/s | vs no program |"
    )?;
    writeln!(out, "|---|---|---:|---:|---:|---:|---:|")?;
    for (contender, tally) in CONTENDERS.iter().zip(tallies) {
        let hook = contender.hook();
        let cost = tally.ns_per_event();
        let vs_floor = match (cost, hook.and_then(floor)) {
            (Some(cost), Some(floor)) if floor > 0.0 => format!("{:.2}x", cost / floor),
            _ => "—".to_owned(),
        };
        let rate = tally.best_rate();
        writeln!(
            out,
            "| {} | {} | {} | {vs_floor} | {} | {} | {} |",
            contender.label(),
            hook.map_or("—", Hook::name),
            cost.map_or_else(|| "—".to_owned(), |c| format!("{c:.0}")),
            if hook.is_some() && tally.packets > 0 {
                format!("{:.3}", tally.run_cnt as f64 / tally.packets as f64)
            } else {
                "—".to_owned()
            },
            thousands(rate),
            if baseline > 0.0 {
                format!("{:.0} %", rate / baseline * 100.0)
            } else {
                "—".to_owned()
            },
        )?;
    }

    let cost_of = |wanted: fn(Contender) -> bool| {
        CONTENDERS
            .iter()
            .zip(tallies)
            .find(|(c, _)| wanted(**c))
            .and_then(|(_, t)| t.ns_per_event())
    };
    let bpftrace_cost = cost_of(|c| matches!(c, Contender::BpftraceByReason));
    writeln!(out, "\nTargets (issue 5):")?;
    for hook in [Hook::TpBtf, Hook::Tracepoint] {
        let dropgate = match hook {
            Hook::TpBtf => cost_of(|c| matches!(c, Contender::Dropgate(Hook::TpBtf))),
            Hook::Tracepoint => cost_of(|c| matches!(c, Contender::Dropgate(Hook::Tracepoint))),
        };
        let (Some(dropgate), Some(bpftrace), Some(floor)) = (dropgate, bpftrace_cost, floor(hook))
        else {
            continue;
        };
        writeln!(
            out,
            "- dropgate on {h}: {dropgate:.0} ns/event vs bpftrace's {bpftrace:.0} ns: {} \
             (target: ≤ bpftrace); vs the empty {h} program's {floor:.0} ns: {:.2}x, {} (target: ≤ 2x).",
            verdict(dropgate <= bpftrace),
            dropgate / floor,
            verdict(dropgate <= 2.0 * floor),
            h = hook.name(),
        )?;
    }
    Ok(out)
}

pub(crate) fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "**missed**"
    }
}

/// `1234567.8` as `1,234,568`.
pub(crate) fn thousands(value: f64) -> String {
    let digits = format!("{value:.0}");
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Replaces the `## {heading}` section of the Markdown file at `path` (up to the next
/// `## ` heading) with `body`, leaving every other section as it is; creates the file
/// or appends the section when absent.
pub(crate) fn write_section(path: &Path, heading: &str, body: &str) -> Result<()> {
    let existing = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            "# Benchmarks\n\nEach section is written by its `cargo xtask bench <what>`.\n"
                .to_owned()
        }
        Err(err) => return Err(err).with_context(|| format!("reading {}", path.display())),
    };
    fs::write(path, replace_section(&existing, heading, body))
        .with_context(|| format!("writing {}", path.display()))
}

fn replace_section(text: &str, heading: &str, body: &str) -> String {
    let title = format!("## {heading}");
    let section = format!("{title}\n\n{}\n", body.trim_end());
    let lines: Vec<&str> = text.lines().collect();
    let Some(start) = lines.iter().position(|l| l.trim_end() == title) else {
        return format!("{}\n\n{section}", text.trim_end());
    };
    let end = lines[start + 1..]
        .iter()
        .position(|l| l.starts_with("## "))
        .map_or(lines.len(), |i| start + 1 + i);
    let mut out = lines[..start].join("\n");
    if !out.is_empty() {
        out.push('\n');
    }
    out.push_str(&section);
    if end < lines.len() {
        out.push('\n');
        out.push_str(&lines[end..].join("\n"));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{json_number, replace_section, thousands};

    #[test]
    fn replaces_only_its_own_section() {
        let cases = [
            (
                "appends to a file without the section",
                "# Benchmarks\n\n## Gateway\n\nold gateway\n",
                "# Benchmarks\n\n## Gateway\n\nold gateway\n\n## Tracer\n\nnew\n",
            ),
            (
                "replaces a section in the middle",
                "# B\n\n## Tracer\n\nold\nlines\n\n## Gateway\n\ng\n",
                "# B\n\n## Tracer\n\nnew\n\n## Gateway\n\ng\n",
            ),
            (
                "replaces the last section",
                "# B\n\n## Gateway\n\ng\n\n## Tracer\n\nold\n",
                "# B\n\n## Gateway\n\ng\n\n## Tracer\n\nnew\n",
            ),
            (
                "keeps subsections of other sections",
                "## Tracer\n\nold\n### not a section\n## Gateway\n### sub\n",
                "## Tracer\n\nnew\n\n## Gateway\n### sub\n",
            ),
        ];
        for (name, before, after) in cases {
            assert_eq!(replace_section(before, "Tracer", "new\n"), after, "{name}");
        }
    }

    #[test]
    fn reads_bpftool_numbers() {
        let json = r#"{"id":7,"type":"tracing","run_time_ns":123456,"run_cnt":1000,"map_ids":[1]}"#;
        assert_eq!(json_number(json, "run_time_ns"), Some(123_456));
        assert_eq!(json_number(json, "run_cnt"), Some(1000));
        assert_eq!(json_number(json, "recursion_misses"), None);
    }

    #[test]
    fn groups_thousands() {
        for (value, text) in [
            (0.0, "0"),
            (999.4, "999"),
            (1000.0, "1,000"),
            (1_234_567.8, "1,234,568"),
        ] {
            assert_eq!(thousands(value), text);
        }
    }
}
