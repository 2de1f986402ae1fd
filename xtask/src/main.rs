//! Project tasks, run as `cargo xtask <task>`: one entry point for setting up a fresh
//! Debian machine, running dropgate, and running every test, so that the README's two
//! commands and CI do exactly the same thing.

mod bench;
mod bench_footprint;
mod bench_gateway;
mod bench_hostile;
mod cmd;
mod dist;
mod fuzz;
mod kernels;
mod run;
mod setup;
mod test;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "dropgate's project tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building and testing need (idempotent): nightly rust-src,
    /// bpf-linker built against the nightly's own LLVM, and Debian packages.
    Setup,
    /// Set up if needed, build, and run `dropgate run` (tracer + gateway) as root.
    Run {
        /// Arguments passed to `dropgate run` (default: --web.listen-address 127.0.0.1:9091).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Set up if needed, then run every test: unit, integration, and the privileged
    /// end-to-end tests in network namespaces (these need root).
    Test {
        /// Only run tests whose name contains this filter.
        filter: Option<String>,
    },
    /// Build what ships, into target/dist: static (musl) binaries for x86_64 and
    /// aarch64, a .deb for each, and an OCI image for each; then check them.
    Dist {
        /// Only this architecture (x86_64 or aarch64).
        arch: Option<String>,
    },
    /// Install the amd64 .deb on a freshly bootstrapped Debian 12 booted with systemd
    /// under qemu: active, /metrics, the incident's drops, stop, purge.
    /// `DROPGATE_DEB=path` tests that package instead of building one.
    TestInstall,
    /// Boot Debian's 5.10, 6.1, 6.12 and 7.x kernels under qemu and prove the tracer on
    /// each, and on this machine's kernel: exact counts, the right hook and reason.
    /// `DROPGATE_BIN=path` tests that binary instead of building one.
    TestKernels,
    /// Run a benchmark (as root) and record its table in BENCHMARKS.md; `tracer`: the
    /// kernel program's cost per drop next to an empty program and bpftrace; `gateway`:
    /// dropgate gateway next to Debian's pushgateway (needs no root), then the OTLP rows;
    /// `gateway-otlp`: only the OTLP rows (text, OTLP protobuf and OTLP/JSON pushes of
    /// the same data); `hostile`: the hostile-request corpus against both (time, memory
    /// growth, answer).
    Bench {
        /// What to benchmark: `tracer`, `gateway`, `gateway-otlp` or `hostile`.
        what: String,
        /// With `tracer`: only the footprint table (threads, memory and idle CPU of
        /// `dropgate run` with 0, 100 and 1,000 extra namespaces, and how fast a new one
        /// is named), not the per-drop cost.
        #[arg(long)]
        footprint: bool,
    },
    /// Fuzz the gateway's parsers (text, protobuf, push paths and the path filter, body
    /// decoding, persistence file, web config) with cargo-fuzz on nightly for a bounded
    /// time each; a crash, a unit over 5 s or over 1 GiB of memory fails.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Only this target (text_parser, protobuf_decoder, path_labels, body_decoder,
        /// persistence_decoder, web_config, btf_reader, netlink_framing).
        target: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.task {
        Task::Setup => setup::setup(),
        Task::Run { args } => run::run(&args),
        Task::Test { filter } => test::test(filter.as_deref()),
        Task::Dist { arch } => dist::dist_task(arch.as_deref()),
        Task::TestInstall => dist::test_install_task(),
        Task::TestKernels => kernels::test_kernels_task(),
        Task::Bench { what, footprint } => bench::bench(&what, footprint),
        Task::Fuzz { seconds, target } => fuzz::fuzz(seconds, target.as_deref()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
