//! `cargo xtask test-kernels`: the kernel matrix. dropgate claims to work on whatever
//! kernel a data centre runs; this proves it on every test run.
//!
//! Debian's current 5.10, 6.1, 6.12 and 7.x kernels are fetched into a cache outside
//! the repository and booted under qemu with a minimal initramfs holding the static
//! dropgate binary (`cargo xtask dist`'s, as users get it); Debian 12's arm64 kernel is
//! booted under qemu-system-aarch64 with the aarch64 binary and an arm64 busybox. In each guest `dropgate selftest` loads the probe (tp_btf, then the classic
//! tracepoint), makes the kernel drop frames in `ip_error` with forwarding off, and
//! checks the probe's count against the kernel's own `InAddrErrors` and the reason name
//! against the kernel's BTF; here the reason is also checked against what that kernel
//! must say. The same self-test runs on this machine's kernel when we are root. One run
//! hands the probe a wrong offset and must fail, so a pass means something.
//!
//! On the x86_64 guests one more run fills a conntrack table of 16 (`nf_conntrack_max`
//! is machine-wide, so it is only ever changed in a guest): the refused connections
//! must be traced one for one with conntrack's own `drop` counter, and `diagnose`'s
//! rules must name the full table (a second table shows that run).
//!
//! A kernel that cannot be fetched is reported as such and is never a pass; with
//! `DROPGATE_E2E=require` (CI) it fails the matrix. `DROPGATE_KERNELS` (suites,
//! `,`-separated; `arm64` for the arm64 guest, `host` for this machine) runs only
//! those, for development; unset, everything runs.

pub mod fetch;
mod guest;
mod initramfs;

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use crate::cmd;
use guest::RunOutput;

/// One kernel of the matrix: the Debian suite whose current kernel it is, the version
/// series that kernel must be, and the reason name its `ip_error` drops must carry.
struct KernelSpec {
    suite: &'static str,
    series: &'static str,
    reason: &'static str,
}

const MATRIX: [KernelSpec; 4] = [
    // 5.10's kfree_skb has no reason at all.
    KernelSpec {
        suite: "bullseye",
        series: "5.10",
        reason: "unknown",
    },
    KernelSpec {
        suite: "bookworm",
        series: "6.1",
        reason: "IP_INADDRERRORS",
    },
    KernelSpec {
        suite: "trixie",
        series: "6.12",
        reason: "IP_INADDRERRORS",
    },
    KernelSpec {
        suite: "trixie-backports",
        series: "7",
        reason: "IP_INADDRERRORS",
    },
];

/// The arm64 guest: Debian 12's kernel, the release most arm64 servers run.
const ARM64: KernelSpec = KernelSpec {
    suite: "bookworm",
    series: "6.1",
    reason: "IP_INADDRERRORS",
};

/// The suite whose kernel also runs the deliberately broken case.
const BROKEN_ON: &str = "bookworm";

/// Frames each self-test injects.
const PACKETS: &str = "--packets=100";

/// One self-test run: its arguments and what must come of it.
struct Case {
    name: &'static str,
    args: [&'static str; 2],
    /// The hook the probe must end up on.
    hook: &'static str,
    /// The run is the broken one: it must report a failure.
    must_fail: bool,
}

const CASES: [Case; 2] = [
    Case {
        name: "auto",
        args: ["--trace.hook=auto", PACKETS],
        hook: "tp_btf/kfree_skb",
        must_fail: false,
    },
    Case {
        name: "tracepoint",
        args: ["--trace.hook=tracepoint", PACKETS],
        hook: "tracepoint/skb/kfree_skb",
        must_fail: false,
    },
];

/// Loads ipip after the probe (modules from the kernel's own package, in the guest's
/// initramfs) and drops packets in it: they must be named after ipip's function, which
/// the symbol table read at start does not know. Guests only: modules are never loaded
/// into the machine's own kernel. Its `--late-modules` argument is added per kernel.
const LATE_MODULE: Case = Case {
    name: "module loaded after start",
    args: ["--trace.hook=auto", PACKETS],
    hook: "tp_btf/kfree_skb",
    must_fail: false,
};

/// Fills a conntrack table in the guest (x86_64 guests: they get this machine's `nft`);
/// its `--conntrack-modules` argument is added per kernel.
const CONNTRACK: Case = Case {
    name: "conntrack table full",
    args: ["--trace.hook=auto", PACKETS],
    hook: "tp_btf/kfree_skb",
    must_fail: false,
};

/// Where the build machine's `nft` is (package nftables, installed by setup).
const NFT: &str = "/usr/sbin/nft";

const BROKEN: Case = Case {
    name: "broken offset",
    args: ["--corrupt-offset", PACKETS],
    hook: "tp_btf/kfree_skb",
    must_fail: true,
};

/// Upper bound for one boot with its self-tests (TCG on a slow CI machine).
const BOOT_TIMEOUT: Duration = Duration::from_mins(5);

/// `cargo xtask test-kernels`: set up, build the static binaries (unless
/// `DROPGATE_BIN` and `DROPGATE_BIN_AARCH64` name them), and run the matrix.
pub fn test_kernels_task() -> Result<()> {
    crate::setup::setup()?;
    let given = |variable: &str, arch: &str| match std::env::var_os(variable) {
        Some(binary) => Ok(PathBuf::from(binary)),
        None => crate::dist::static_binary_for(arch),
    };
    test_kernels(
        &given("DROPGATE_BIN", "x86_64")?,
        &given("DROPGATE_BIN_AARCH64", "aarch64")?,
    )
}

/// Runs the matrix with the static `binary` as the x86_64 guests' (and this
/// machine's) dropgate, and `aarch64` as the arm64 guest's.
pub fn test_kernels(binary: &Path, aarch64: &Path) -> Result<()> {
    let started = Instant::now();
    let required = std::env::var("DROPGATE_E2E").is_ok_and(|v| v == "require");
    if let Err(missing) = check_tools() {
        if required {
            return Err(missing.context("DROPGATE_E2E=require forbids skipping the kernel matrix"));
        }
        eprintln!("xtask: SKIPPING the kernel matrix: {missing:#}");
        return Ok(());
    }
    let out = cmd::target_dir().join("kernel-matrix");
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let initrd = out.join("initramfs.cpio.gz");
    initramfs::build(binary, Path::new(initramfs::BUSYBOX), &initrd, &[])
        .context("building the guests' initramfs")?;

    let selected = Selection::from_env();
    let mut rows = Vec::new();
    for spec in MATRIX.iter().filter(|spec| selected.has(spec.suite)) {
        let x86_64 = Guest {
            machine: &guest::X86_64,
            binary,
            busybox: Path::new(initramfs::BUSYBOX),
        };
        rows.extend(kernel_rows(spec, &x86_64, &initrd, &out));
    }
    if selected.has("arm64") {
        rows.extend(arm64_rows(aarch64, &out));
    }
    if selected.has("host") {
        rows.extend(host_rows(binary));
    }

    println!("{}", table(&rows));
    println!("{}", conntrack_table(&rows));
    let failed = rows
        .iter()
        .filter(|row| matches!(row.verdict, Verdict::Fail(_)))
        .count();
    let missing = rows
        .iter()
        .filter(|row| matches!(row.verdict, Verdict::NotFetched(_) | Verdict::Skipped(_)))
        .count();
    eprintln!(
        "xtask: kernel matrix done in {:.0}s (consoles in {})",
        started.elapsed().as_secs_f64(),
        out.display()
    );
    if failed > 0 {
        bail!("kernel matrix: {failed} of {} runs failed", rows.len());
    }
    if missing > 0 {
        if required {
            bail!("kernel matrix: {missing} runs not done (not fetched or skipped), and DROPGATE_E2E=require forbids that");
        }
        eprintln!("xtask: kernel matrix INCOMPLETE: {missing} runs not done (see the table)");
    }
    Ok(())
}

/// The kernels `DROPGATE_KERNELS` names; all without it.
struct Selection(Option<Vec<String>>);

impl Selection {
    fn from_env() -> Self {
        let names = std::env::var("DROPGATE_KERNELS").ok().map(|value| {
            value
                .split(',')
                .map(|name| name.trim().to_owned())
                .filter(|name| !name.is_empty())
                .collect::<Vec<_>>()
        });
        if let Some(names) = &names {
            eprintln!(
                "xtask: DROPGATE_KERNELS: only {} (a partial matrix)",
                names.join(", ")
            );
        }
        Self(names)
    }

    fn has(&self, name: &str) -> bool {
        self.0
            .as_ref()
            .is_none_or(|names| names.iter().any(|n| n == name))
    }
}

fn check_tools() -> Result<()> {
    for tool in [guest::X86_64.qemu, guest::AARCH64.qemu, initramfs::BUSYBOX] {
        if cmd::stdout_of(Command::new("which").arg(tool)).is_none() {
            bail!("{tool} not found; `cargo xtask setup` as root installs qemu-system-x86, qemu-system-arm and busybox-static");
        }
    }
    fetch::check_tools()
}

/// One line of the table.
struct Row {
    kernel: String,
    case: &'static str,
    boot: Option<Duration>,
    measured: Option<Measured>,
    verdict: Verdict,
}

enum Verdict {
    Pass,
    /// The broken case failed, as it must.
    FailedAsItMust,
    Fail(String),
    NotFetched(String),
    Skipped(String),
}

/// The self-test's report, as far as the table shows it.
struct Measured {
    kernel: String,
    hook: String,
    /// How the probe read packet bytes; older self-tests did not say.
    reads: String,
    reason: String,
    expected_reason: String,
    count: u64,
    in_addr_errors_delta: u64,
    exact: bool,
    load_ms: u64,
    /// Where the late-module run's drops were named, and how many at ipip's function.
    late_module: Option<(String, u64)>,
    /// The conntrack run's part.
    conntrack: Option<ConntrackMeasured>,
    pass: bool,
}

/// The conntrack part of a self-test's report (see `tracer/src/selftest/conntrack.rs`).
struct ConntrackMeasured {
    max: u64,
    count: u64,
    refused: u64,
    traced_as: String,
    traced: u64,
    /// Drops added outside the test's namespace meanwhile (where to look on a failure).
    elsewhere: String,
    stat_drop: u64,
    stat_early_drop: u64,
    stat_insert_failed: u64,
    finding: Option<String>,
    fix: Option<String>,
    pass: bool,
}

impl ConntrackMeasured {
    fn parse(value: &serde_json::Value) -> Result<Self> {
        let number = |key: &str| {
            value[key]
                .as_u64()
                .with_context(|| format!("the conntrack result lacks `{key}`: {value}"))
        };
        Ok(Self {
            max: number("max")?,
            count: number("count")?,
            refused: number("refused")?,
            traced_as: value["traced_as"].as_str().unwrap_or("-").to_owned(),
            traced: number("traced")?,
            elsewhere: value["elsewhere"].as_str().unwrap_or("").to_owned(),
            stat_drop: number("stat_drop")?,
            stat_early_drop: number("stat_early_drop")?,
            stat_insert_failed: number("stat_insert_failed")?,
            finding: value["finding"].as_str().map(str::to_owned),
            fix: value["fix"].as_str().map(str::to_owned),
            pass: value["pass"]
                .as_bool()
                .with_context(|| format!("the conntrack result lacks `pass`: {value}"))?,
        })
    }
}

impl Measured {
    fn parse(json: &str) -> Result<Self> {
        let value: serde_json::Value =
            serde_json::from_str(json).with_context(|| format!("bad result line: {json}"))?;
        let text = |key: &str| {
            value[key]
                .as_str()
                .map(str::to_owned)
                .with_context(|| format!("result line lacks `{key}`: {json}"))
        };
        let number = |key: &str| {
            value[key]
                .as_u64()
                .with_context(|| format!("result line lacks `{key}`: {json}"))
        };
        let flag = |key: &str| {
            value[key]
                .as_bool()
                .with_context(|| format!("result line lacks `{key}`: {json}"))
        };
        Ok(Self {
            kernel: text("kernel")?,
            hook: text("hook")?,
            reads: value["reads"].as_str().unwrap_or("-").to_owned(),
            reason: text("reason")?,
            expected_reason: text("expected_reason")?,
            count: number("count")?,
            in_addr_errors_delta: number("in_addr_errors_delta")?,
            exact: flag("exact")?,
            load_ms: number("load_ms")?,
            late_module: value["late_module_location"].as_str().map(|location| {
                (
                    location.to_owned(),
                    value["late_module_count"].as_u64().unwrap_or(0),
                )
            }),
            conntrack: value
                .get("conntrack")
                .map(ConntrackMeasured::parse)
                .transpose()?,
            pass: flag("pass")?,
        })
    }
}

/// The arm64 guest: its own initramfs (aarch64 dropgate, arm64 busybox) and kernel.
fn arm64_rows(binary: &Path, out: &Path) -> Vec<Row> {
    let initrd = out.join("initramfs-arm64.cpio.gz");
    let built = fetch::busybox(ARM64.suite, guest::AARCH64.deb_arch)
        .and_then(|busybox| initramfs::build(binary, &busybox, &initrd, &[]).map(|()| busybox));
    match built {
        Ok(busybox) => kernel_rows(
            &ARM64,
            &Guest {
                machine: &guest::AARCH64,
                binary,
                busybox: &busybox,
            },
            &initrd,
            out,
        ),
        Err(err) => vec![Row {
            kernel: format!("{}.x ({} arm64)", ARM64.series, ARM64.suite),
            case: "-",
            boot: None,
            measured: None,
            verdict: Verdict::NotFetched(format!("{err:#}")),
        }],
    }
}

/// Fetches and boots one kernel; its rows, or one "not fetched" row.
/// What a guest of one architecture runs: its machine, dropgate and busybox (the
/// late-module run builds an initramfs of its own from them).
struct Guest<'a> {
    machine: &'a guest::Machine,
    binary: &'a Path,
    busybox: &'a Path,
}

fn kernel_rows(spec: &KernelSpec, guest: &Guest, initrd: &Path, out: &Path) -> Vec<Row> {
    let Guest {
        machine,
        binary,
        busybox,
    } = *guest;
    let name = format!("{}.x ({} {})", spec.series, spec.suite, machine.deb_arch);
    let kernel = match fetch::kernel(spec.suite, spec.series, machine.deb_arch) {
        Ok(kernel) => kernel,
        Err(err) => {
            return vec![Row {
                kernel: name,
                case: "-",
                boot: None,
                measured: None,
                verdict: Verdict::NotFetched(format!("{err:#}")),
            }]
        }
    };
    let KernelRuns {
        cases,
        extras,
        conntrack_trouble,
    } = cases_for(spec, machine, &kernel);
    let own_initrd = out.join(format!(
        "initramfs-{}-{}.cpio.gz",
        spec.suite, machine.deb_arch
    ));
    let initrd = if extras.is_empty() {
        initrd
    } else {
        if let Err(err) = initramfs::build(binary, busybox, &own_initrd, &extras) {
            return vec![Row {
                kernel: format!("{} ({})", kernel.release, spec.suite),
                case: "-",
                boot: None,
                measured: None,
                verdict: Verdict::Fail(format!("building its initramfs: {err:#}")),
            }];
        }
        &own_initrd
    };
    let runs: Vec<Vec<&str>> = cases
        .iter()
        .map(|(case, argument)| {
            let mut run = case.args.to_vec();
            run.extend(argument.as_deref());
            run
        })
        .collect();
    let log = out.join(format!("{}-{}.console", spec.suite, machine.deb_arch));
    eprintln!("xtask: booting {} under qemu", kernel.release);
    let started = Instant::now();
    let boot = guest::boot(machine, &kernel.vmlinuz, initrd, &runs, BOOT_TIMEOUT, &log);
    eprintln!(
        "xtask: {} done in {:.1}s",
        kernel.release,
        started.elapsed().as_secs_f64()
    );
    let (outputs, to_userland, trouble) = match boot {
        Ok(boot) => {
            let trouble = if boot.timed_out {
                format!(
                    "no result within {}s; console in {}",
                    BOOT_TIMEOUT.as_secs(),
                    log.display()
                )
            } else {
                format!("the guest ended early; console in {}", log.display())
            };
            (boot.runs, boot.to_userland, trouble)
        }
        Err(err) => (Vec::new(), None, format!("{err:#}")),
    };
    let mut outputs = outputs.into_iter();
    cases
        .into_iter()
        .map(|(case, _)| {
            let (measured, verdict) = match outputs.next() {
                Some(output) => judge(case, Some(spec.reason), &output),
                None => (None, Verdict::Fail(trouble.clone())),
            };
            Row {
                kernel: format!("{} ({})", kernel.release, spec.suite),
                case: case.name,
                boot: to_userland,
                measured,
                verdict,
            }
        })
        .chain(conntrack_trouble.map(|why| Row {
            kernel: format!("{} ({})", kernel.release, spec.suite),
            case: CONNTRACK.name,
            boot: None,
            measured: None,
            verdict: Verdict::Fail(format!("not run: {why}")),
        }))
        .collect()
}

/// The runs of one kernel; an x86_64 guest without a conntrack run is a failure, as
/// every x86_64 kernel of the matrix can do it.
fn cases_for(spec: &KernelSpec, machine: &guest::Machine, kernel: &fetch::Kernel) -> KernelRuns {
    let mut cases: Vec<(&Case, Option<String>)> = CASES.iter().map(|case| (case, None)).collect();
    if spec.suite == BROKEN_ON {
        cases.push((&BROKEN, None));
    }
    // The module runs go last, conntrack after ipip: the modules they load stay for the
    // rest of the boot.
    let mut extras = Vec::new();
    match late_module_argument(&kernel.late_modules) {
        Some(argument) => {
            extras.extend(initramfs::in_folder(
                initramfs::LATE_MODULES_DIR,
                &kernel.late_modules,
            ));
            cases.push((&LATE_MODULE, Some(argument)));
        }
        None => eprintln!(
            "xtask: {} has no ipip module (built in?): no late-module run",
            kernel.release
        ),
    }
    let mut trouble = None;
    match conntrack_extras(machine, kernel) {
        Ok(Some((files, argument))) => {
            extras.extend(files);
            cases.push((&CONNTRACK, Some(argument)));
        }
        Ok(None) => eprintln!(
            "xtask: no conntrack run on {} {}: the guest gets this machine's x86_64 nft",
            kernel.release, machine.deb_arch
        ),
        Err(why) => trouble = Some(format!("{why:#}")),
    }
    KernelRuns {
        cases,
        extras,
        conntrack_trouble: trouble,
    }
}

/// What [`cases_for`] gives.
struct KernelRuns {
    /// Each case with the argument this kernel adds to it.
    cases: Vec<(&'static Case, Option<String>)>,
    /// Files its initramfs needs beyond the common ones.
    extras: Vec<initramfs::Extra>,
    /// Why an x86_64 guest has no conntrack run.
    conntrack_trouble: Option<String>,
}

/// The files and the argument of the conntrack run; `None` for the arm64 guest, which
/// would need an arm64 `nft` (the guests get this machine's).
fn conntrack_extras(
    machine: &guest::Machine,
    kernel: &fetch::Kernel,
) -> Result<Option<(Vec<initramfs::Extra>, String)>> {
    if machine.deb_arch != guest::X86_64.deb_arch {
        return Ok(None);
    }
    if kernel.conntrack_modules.is_empty() {
        bail!("its package has none of the conntrack modules");
    }
    let mut files = initramfs::program_with_libraries(Path::new(NFT))
        .context("copying nft (package nftables) into the guest")?;
    files.extend(initramfs::in_folder(
        initramfs::CONNTRACK_MODULES_DIR,
        &kernel.conntrack_modules,
    ));
    let names: Vec<String> = kernel
        .conntrack_modules
        .iter()
        .filter_map(|path| path.file_name())
        .map(|name| {
            format!(
                "{}/{}",
                initramfs::CONNTRACK_MODULES_DIR,
                name.to_string_lossy()
            )
        })
        .collect();
    Ok(Some((
        files,
        format!("--conntrack-modules={}", names.join(":")),
    )))
}

/// `--late-modules=/lib/late/tunnel4.ko:...` for the guest, or `None` without modules.
fn late_module_argument(modules: &[PathBuf]) -> Option<String> {
    let names: Vec<String> = modules
        .iter()
        .filter_map(|path| path.file_name())
        .map(|name| format!("{}/{}", initramfs::LATE_MODULES_DIR, name.to_string_lossy()))
        .collect();
    (!names.is_empty()).then(|| format!("--late-modules={}", names.join(":")))
}

/// The self-test on this machine's own kernel (it runs in a namespace of its own, so
/// the machine's sysctls and traffic are untouched); needs root.
fn host_rows(binary: &Path) -> Vec<Row> {
    let release = cmd::stdout_of(Command::new("uname").arg("-r")).unwrap_or_default();
    let kernel = format!("{release} (this machine)");
    CASES
        .iter()
        .map(|case| {
            let (measured, verdict) = if cmd::is_root() {
                match Command::new(binary)
                    .arg("selftest")
                    .args(case.args)
                    .output()
                {
                    Ok(output) => {
                        let mut lines: Vec<String> = String::from_utf8_lossy(&output.stdout)
                            .lines()
                            .chain(String::from_utf8_lossy(&output.stderr).lines())
                            .map(str::to_owned)
                            .collect();
                        let code = output.status.code().unwrap_or(-1);
                        lines.push(format!("{} {code}", initramfs::EXIT_MARKER));
                        let run = guest::parse_console(&lines).pop().unwrap_or_default();
                        judge(case, None, &run)
                    }
                    Err(err) => (
                        None,
                        Verdict::Fail(format!("cannot run {}: {err}", binary.display())),
                    ),
                }
            } else {
                (None, Verdict::Skipped("needs root".into()))
            };
            Row {
                kernel: kernel.clone(),
                case: case.name,
                boot: None,
                measured,
                verdict,
            }
        })
        .collect()
}

/// Whether a run did what `case` requires. `reason` is what the kernel must report;
/// `None` takes the self-test's own expectation (from the kernel's BTF).
fn judge(case: &Case, reason: Option<&str>, run: &RunOutput) -> (Option<Measured>, Verdict) {
    let Some(json) = &run.result else {
        let why = run
            .errors
            .first()
            .cloned()
            .unwrap_or_else(|| format!("no result line (exit code {:?})", run.exit_code));
        return (None, Verdict::Fail(why));
    };
    let measured = match Measured::parse(json) {
        Ok(measured) => measured,
        Err(err) => return (None, Verdict::Fail(format!("{err:#}"))),
    };
    let verdict = if case.must_fail {
        if !measured.pass && run.exit_code == Some(1) {
            Verdict::FailedAsItMust
        } else {
            Verdict::Fail("the broken probe was not caught: the matrix cannot fail".into())
        }
    } else {
        let mut problems = Vec::new();
        if !measured.pass || run.exit_code != Some(0) {
            problems.push(format!("self-test failed (exit code {:?})", run.exit_code));
        }
        if measured.hook != case.hook {
            problems.push(format!("hook {} instead of {}", measured.hook, case.hook));
        }
        // A kernel with the kfunc that ends up on helper reads lost the cheap path
        // silently (its verifier refused the rewritten call): that is a failure here.
        let reads = expected_reads(&measured.kernel);
        if measured.reads != reads {
            problems.push(format!("reads with {} instead of {reads}", measured.reads));
        }
        let reason = reason.unwrap_or(&measured.expected_reason);
        if measured.reason != reason {
            problems.push(format!("reason {} instead of {reason}", measured.reason));
        }
        if let Some((location, count)) = &measured.late_module {
            if !location.split('+').any(|name| name == "ipip_tunnel_xmit") {
                problems.push(format!(
                    "the module's drops were named {location}, not ipip_tunnel_xmit ({count} there)"
                ));
            }
        }
        if case.name == CONNTRACK.name {
            match &measured.conntrack {
                None => problems.push("no conntrack result".into()),
                Some(ct) if !ct.pass => problems.push(format!(
                    "conntrack: {} refused, {} traced (elsewhere: {}), drop +{}, count {} of {}, finding: {} \
                     (it must name the numbers, the traced drops and the nf_conntrack_max fix)",
                    ct.refused,
                    ct.traced,
                    if ct.elsewhere.is_empty() { "none" } else { &ct.elsewhere },
                    ct.stat_drop,
                    ct.count,
                    ct.max,
                    ct.finding.as_deref().unwrap_or("none")
                )),
                Some(_) => {}
            }
        }
        if problems.is_empty() {
            Verdict::Pass
        } else {
            Verdict::Fail(problems.join("; "))
        }
    };
    (Some(measured), verdict)
}

/// How a kernel's self-test must read packet bytes: `bpf_rdonly_cast` exists from 6.2.
fn expected_reads(kernel: &str) -> &'static str {
    let mut numbers = kernel
        .split(|c: char| !c.is_ascii_digit())
        .map(|n| n.parse::<u32>().unwrap_or(0));
    let version = (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0));
    if version >= (6, 2) {
        "bpf_rdonly_cast"
    } else {
        "bpf_probe_read_kernel"
    }
}

/// The matrix as a Markdown table (the same text goes into BENCHMARKS.md).
fn table(rows: &[Row]) -> String {
    let mut text = String::from(
        "| kernel | case | hook used | packet reads | reason resolved (expected) | probe / InAddrErrors | exact | load | boot to /init | verdict |\n\
         |---|---|---|---|---|---|---|---|---|---|\n",
    );
    for row in rows {
        let (hook, reads, reason, counts, exact, load) = match &row.measured {
            Some(m) => (
                m.hook.as_str(),
                m.reads.as_str(),
                format!("{} ({})", m.reason, m.expected_reason),
                format!("{} / {}", m.count, m.in_addr_errors_delta),
                if m.exact { "yes" } else { "NO" },
                format!("{} ms", m.load_ms),
            ),
            None => ("-", "-", "-".into(), "-".into(), "-", "-".into()),
        };
        let boot = row
            .boot
            .map_or_else(|| "-".into(), |d| format!("{:.1} s", d.as_secs_f64()));
        let verdict = match &row.verdict {
            Verdict::Pass => "pass".to_owned(),
            Verdict::FailedAsItMust => "fails, as it must".to_owned(),
            Verdict::Fail(why) => format!("**FAIL**: {why}"),
            Verdict::NotFetched(why) => format!("**not fetched**: {why}"),
            Verdict::Skipped(why) => format!("skipped: {why}"),
        };
        let _ = writeln!(
            text,
            "| {} | {} | {hook} | {reads} | {reason} | {counts} | {exact} | {load} | {boot} | {verdict} |",
            row.kernel, row.case
        );
    }
    text
}

/// The conntrack runs as a Markdown table of their own (the main one is about
/// `ip_error`): what was traced, conntrack's counters, and the finding.
fn conntrack_table(rows: &[Row]) -> String {
    let mut text = String::from(
        "| kernel | count / max | refused | traced (reason@location) | stat drop / early_drop / insert_failed | finding | first fix | verdict |\n\
         |---|---|---|---|---|---|---|---|\n",
    );
    for row in rows.iter().filter(|row| row.case == CONNTRACK.name) {
        let cells = row
            .measured
            .as_ref()
            .and_then(|m| m.conntrack.as_ref())
            .map_or_else(
                || "- | - | - | - | - | -".to_owned(),
                |ct| {
                    format!(
                        "{} / {} | {} | {} ({}) | {} / {} / {} | {} | `{}`",
                        ct.count,
                        ct.max,
                        ct.refused,
                        ct.traced,
                        ct.traced_as,
                        ct.stat_drop,
                        ct.stat_early_drop,
                        ct.stat_insert_failed,
                        ct.finding.as_deref().unwrap_or("**none**"),
                        ct.fix.as_deref().unwrap_or("-"),
                    )
                },
            );
        let verdict = match &row.verdict {
            Verdict::Pass => "pass".to_owned(),
            Verdict::Fail(why) => format!("**FAIL**: {why}"),
            Verdict::FailedAsItMust | Verdict::NotFetched(_) | Verdict::Skipped(_) => "-".into(),
        };
        let _ = writeln!(text, "| {} | {cells} | {verdict} |", row.kernel);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(json: Option<&str>, exit_code: i32) -> RunOutput {
        RunOutput {
            result: json.map(str::to_owned),
            errors: vec!["dropgate: error: no BTF".into()],
            exit_code: Some(exit_code),
        }
    }

    #[test]
    fn verdicts() {
        let good = r#"{"kernel":"6.12.0-1-amd64","hook":"tp_btf/kfree_skb","reads":"bpf_rdonly_cast","reason":"IP_INADDRERRORS","expected_reason":"IP_INADDRERRORS","count":100,"in_addr_errors_delta":100,"exact":true,"load_ms":80,"pass":true}"#;
        let old_good = r#"{"kernel":"6.1.0-50-amd64","hook":"tp_btf/kfree_skb","reads":"bpf_probe_read_kernel","reason":"IP_INADDRERRORS","expected_reason":"IP_INADDRERRORS","count":100,"in_addr_errors_delta":100,"exact":true,"load_ms":80,"pass":true}"#;
        let lost_kfunc = r#"{"kernel":"6.12.0-1-amd64","hook":"tp_btf/kfree_skb","reads":"bpf_probe_read_kernel","reason":"IP_INADDRERRORS","expected_reason":"IP_INADDRERRORS","count":100,"in_addr_errors_delta":100,"exact":true,"load_ms":80,"pass":true}"#;
        let broken = r#"{"kernel":"6.1.0-50-amd64","hook":"tp_btf/kfree_skb","reads":"bpf_probe_read_kernel","reason":"none","expected_reason":"IP_INADDRERRORS","count":0,"in_addr_errors_delta":100,"exact":false,"load_ms":80,"pass":false}"#;
        let auto = &CASES[0];
        let cases: [(&str, &Case, Option<&str>, RunOutput, &str); 9] = [
            (
                "helper reads before 6.2",
                auto,
                Some("IP_INADDRERRORS"),
                run(Some(old_good), 0),
                "pass",
            ),
            (
                "helper reads on a kernel with the kfunc",
                auto,
                Some("IP_INADDRERRORS"),
                run(Some(lost_kfunc), 0),
                "fail",
            ),
            (
                "passes",
                auto,
                Some("IP_INADDRERRORS"),
                run(Some(good), 0),
                "pass",
            ),
            (
                "own expectation on the host",
                auto,
                None,
                run(Some(good), 0),
                "pass",
            ),
            (
                "wrong reason for this kernel",
                auto,
                Some("unknown"),
                run(Some(good), 0),
                "fail",
            ),
            (
                "wrong hook",
                &CASES[1],
                Some("IP_INADDRERRORS"),
                run(Some(good), 0),
                "fail",
            ),
            (
                "no result line",
                auto,
                Some("IP_INADDRERRORS"),
                run(None, 1),
                "fail",
            ),
            (
                "broken case caught",
                &BROKEN,
                None,
                run(Some(broken), 1),
                "caught",
            ),
            (
                "broken case not caught",
                &BROKEN,
                None,
                run(Some(good), 0),
                "fail",
            ),
        ];
        for (name, case, reason, output, want) in cases {
            let got = match judge(case, reason, &output).1 {
                Verdict::Pass => "pass",
                Verdict::FailedAsItMust => "caught",
                Verdict::Fail(_) => "fail",
                Verdict::NotFetched(_) | Verdict::Skipped(_) => "other",
            };
            assert_eq!(got, want, "case {name}");
        }
    }

    #[test]
    fn conntrack_verdicts() {
        let with = |conntrack: &str, pass: bool| {
            format!(
                r#"{{"kernel":"6.1.0-50-amd64","hook":"tp_btf/kfree_skb","reads":"bpf_probe_read_kernel","reason":"IP_INADDRERRORS","expected_reason":"IP_INADDRERRORS","count":100,"in_addr_errors_delta":100,{conntrack}"exact":true,"load_ms":80,"pass":{pass}}}"#
            )
        };
        let full = r#""conntrack":{"max":16,"count":16,"refused":8,"traced_as":"NETFILTER_DROP@nf_hook_slow","traced":8,"stat_drop":8,"stat_early_drop":0,"stat_insert_failed":0,"finding":"the conntrack table is full (16 of 16): 8 new connections dropped","fix":"sysctl -w net.netfilter.nf_conntrack_max=65536","pass":true},"#;
        let no_finding = r#""conntrack":{"max":16,"count":16,"refused":8,"traced_as":"none","traced":0,"stat_drop":8,"stat_early_drop":0,"stat_insert_failed":0,"finding":null,"fix":null,"pass":false},"#;
        let cases = [
            ("traced and named", with(full, true), 0, "pass"),
            ("no finding", with(no_finding, false), 1, "fail"),
            (
                "the run lacks the conntrack part",
                with("", true),
                0,
                "fail",
            ),
        ];
        for (name, json, exit_code, want) in cases {
            let (measured, verdict) = judge(
                &CONNTRACK,
                Some("IP_INADDRERRORS"),
                &run(Some(&json), exit_code),
            );
            let got = match verdict {
                Verdict::Pass => "pass",
                Verdict::Fail(_) => "fail",
                _ => "other",
            };
            assert_eq!(got, want, "case {name}");
            assert!(measured.is_some(), "case {name}: the result line parses");
        }
        let row = |json: &str| Row {
            kernel: "6.1.0-50-amd64 (bookworm)".into(),
            case: CONNTRACK.name,
            boot: None,
            measured: Measured::parse(json).ok(),
            verdict: Verdict::Pass,
        };
        let text = conntrack_table(&[row(&with(full, true))]);
        assert!(
            text.contains("| 16 / 16 | 8 | 8 (NETFILTER_DROP@nf_hook_slow) | 8 / 0 / 0 |"),
            "{text}"
        );
    }

    #[test]
    fn kfunc_reads_are_expected_from_6_2() {
        for (kernel, want) in [
            ("5.10.0-32-amd64", "bpf_probe_read_kernel"),
            ("6.1.0-50-amd64", "bpf_probe_read_kernel"),
            ("6.2.0", "bpf_rdonly_cast"),
            ("6.12.117+deb13-amd64", "bpf_rdonly_cast"),
            ("7.3.4+deb13-amd64", "bpf_rdonly_cast"),
        ] {
            assert_eq!(expected_reads(kernel), want, "{kernel}");
        }
    }
}
