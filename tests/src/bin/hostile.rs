//! `hostile`: sends the hostile-request corpus (`src/hostile.rs`) to `dropgate gateway`
//! (`$DROPGATE_BIN`, else the workspace's debug build) and to Debian's pushgateway, each
//! case to a fresh process of each with default flags, and prints a Markdown table:
//! request, size on the wire, and for each server the time to the answer, the growth of
//! resident memory and the answer. `cargo xtask bench hostile` runs it.
//!
//! A server that passes [`MEMORY_CAP_KIB`] resident is killed (shown as `killed`): the
//! peer has no limits, and the machine may be shared.

use std::fmt::Write as _;
use std::process::ExitCode;

use dropgate_tests::gateway::{Server, TempDir, PUSHGATEWAY};
use dropgate_tests::hostile::{corpus, measure, Cost};

/// Resident size at which a server is killed, KiB.
const MEMORY_CAP_KIB: u64 = 2 * 1024 * 1024;

fn cell(cost: &Cost) -> String {
    let growth = if cost.capped {
        format!("killed at {} MiB", MEMORY_CAP_KIB / 1024)
    } else {
        format!("{:.1} MiB", cost.growth_kib as f64 / 1024.0)
    };
    let answer = match cost.status {
        Some(status) => format!("{status}"),
        None => "none".to_owned(),
    };
    format!(
        "{:.0} ms | {growth} | {answer}",
        cost.elapsed.as_secs_f64() * 1e3
    )
}

fn main() -> ExitCode {
    if !std::path::Path::new(PUSHGATEWAY).exists() {
        eprintln!("hostile: {PUSHGATEWAY} not found; apt-get install prometheus-pushgateway");
        return ExitCode::FAILURE;
    }
    let mut table = String::from(
        "| request | size on the wire | dropgate time | dropgate memory growth | dropgate answer \
         | pushgateway time | pushgateway memory growth | pushgateway answer |\n\
         |---|---:|---:|---:|---|---:|---:|---|\n",
    );
    for case in corpus() {
        eprintln!("hostile: {}", case.name);
        let ours = {
            let server = Server::dropgate(&[]);
            measure(&server, &case.request, MEMORY_CAP_KIB)
        };
        let theirs = {
            let dir = TempDir::new("hostile-peer");
            let server = Server::pushgateway(&dir.path().join("store"), &[]);
            measure(&server, &case.request, MEMORY_CAP_KIB)
        };
        let _ = writeln!(
            table,
            "| {} | {} B | {} | {} |",
            case.name,
            ours.wire_bytes,
            cell(&ours),
            cell(&theirs)
        );
    }
    print!("{table}");
    ExitCode::SUCCESS
}
