//! The `dropgate` binary: parse the command line, set up logging, run one command.

use std::{process::ExitCode, sync::Arc};

use anyhow::Context as _;
use clap::Parser as _;
use tracer::{
    cli::{Cli, Command, DiagnoseArgs, GatewayArgs, WatchFilter},
    loader::LoadOptions,
    tracer::{Attached, Tracer, TracerOptions},
};

/// musl's malloc is slow for the gateway's many small allocations (pushes took twice as
/// long as with glibc's, measured with wrk): the static builds use mimalloc.
#[cfg(target_env = "musl")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit codes, in one place.
mod exit {
    /// Something failed; the message says what.
    pub const FAILURE: u8 = 1;
}

/// mimalloc's defaults keep memory dropgate no longer uses: on Linux it commits whole
/// arenas up front (`arena_eager_commit` = 2, "on systems that overcommit"), and it
/// returns freed pages only 10 ms later and only when the thread allocates again, so
/// what start-up freed (BTF, the symbol table: a peak of about 70 MB) stays resident in
/// an idle process. Measured on the static build: the gateway after 1,000 pushed groups
/// and 300 scrapes held 24.3 MB with the defaults, 11.1 MB without eager commit (the
/// glibc build: 13.5 MB); `dropgate run`, idle after 20 scrapes, 33.2 MB without eager
/// commit and 13.7 MB with immediate purging too. Push and scrape speed: BENCHMARKS.md,
/// "Gateway". Set first thing in `main`, before the allocations that matter.
#[cfg(target_env = "musl")]
fn tune_allocator() {
    // `mi_option_e` of mimalloc.h (v2, as vendored by libmimalloc-sys 0.1.49), which the
    // crate does not name: `mi_option_arena_eager_commit` and `mi_option_purge_delay`.
    const ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;
    const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    // SAFETY: `mi_option_set` only stores a value in mimalloc's option table; no Rust
    // invariant depends on it, and 0 is valid for both ("never", "at once").
    unsafe {
        libmimalloc_sys::mi_option_set(ARENA_EAGER_COMMIT, 0);
        libmimalloc_sys::mi_option_set(PURGE_DELAY, 0);
    }
}

fn main() -> ExitCode {
    #[cfg(target_env = "musl")]
    tune_allocator();
    let cli = Cli::parse();
    {
        use tracing_subscriber::{
            filter::Targets, layer::SubscriberExt as _, util::SubscriberInitExt as _,
        };
        // `RUST_LOG` as a list of `level` and `target=level` (e.g. `info,tracer::netns=debug`):
        // tracing-subscriber's `Targets`, not its `EnvFilter`, whose span and field filters
        // nobody here uses and whose regex engine added half a megabyte to the binary.
        let filter = std::env::var("RUST_LOG")
            .ok()
            .and_then(|directives| directives.parse::<Targets>().ok())
            .unwrap_or_else(|| Targets::new().with_default(tracing::Level::INFO));
        // `fmt()` alone stops at INFO before `filter` is asked: let the filter decide.
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .finish()
            .with(filter)
            .init();
    }
    // Entering another namespace must happen before any thread exists: threads inherit
    // the namespace of the thread that creates them.
    if let Command::Diagnose(args) = &cli.command {
        if let Some(netns) = &args.netns {
            if let Err(err) = tracer::netns::enter(netns) {
                eprintln!("dropgate: error: {err:#}");
                return ExitCode::from(tracer::diagnose::exit::UNCHECKED);
            }
        }
    }
    // Capabilities are per thread and copied into each new one: `run` and `watch` load
    // and attach, then drop what only that needed, while this is the only thread; the
    // runtime's workers and every other thread are started after that.
    let attached = match attach_and_drop_privileges(&cli.command) {
        Ok(attached) => attached,
        Err(err) => {
            eprintln!("dropgate: error: {err:#}");
            return ExitCode::from(exit::FAILURE);
        }
    };
    return_start_up_memory();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("dropgate: error: cannot start the async runtime: {err}");
            return ExitCode::from(exit::FAILURE);
        }
    };
    let outcome = runtime.block_on(run(cli, attached));
    // Everything that must be done (the final save included) is done when `run` returns;
    // a push still parsing on a blocking thread after its request timed out must not
    // hold up the exit past the service manager's stop timeout.
    runtime.shutdown_background();
    match outcome {
        Ok(code) => code,
        Err(err) => {
            eprintln!("dropgate: error: {err:#}");
            ExitCode::from(exit::FAILURE)
        }
    }
}

/// Attaching read the kernel's BTF (over 5 MB) and symbol table and kept only what the
/// tracer uses; glibc's malloc keeps the freed pages in the process unless asked to give
/// them back, and a daemon that runs on every host should not hold them for nothing.
/// (mimalloc, in the static builds, returns freed pages by itself.)
fn return_start_up_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only hands free pages of the allocator back to the kernel; it
    // takes no pointer and no allocation is in use by it.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// The tracer options of `run` and `watch`, and the port `run` listens on.
fn trace_options(command: &Command) -> Option<(TracerOptions, Option<u16>)> {
    match command {
        Command::Run { gateway, trace } => Some((
            TracerOptions {
                load: LoadOptions {
                    hook: trace.hook.into(),
                    samples_per_sec: trace.samples_per_sec,
                    cache_slots: trace.cache_slots,
                    max_keys: trace.max_keys,
                },
                recent_samples: trace.recent_samples,
                docker_host: Some(trace.docker_host.clone()).filter(|h| !h.is_empty()),
                classes: trace.classes.classifier(),
                namespaces: trace.netns.clone(),
            },
            Some(gateway.listen_address.port()),
        )),
        Command::Watch {
            samples_per_sec,
            hook,
            docker_host,
            classes,
            ..
        } => Some((
            TracerOptions {
                load: LoadOptions {
                    hook: (*hook).into(),
                    samples_per_sec: *samples_per_sec,
                    ..LoadOptions::default()
                },
                recent_samples: 0,
                docker_host: Some(docker_host.clone()).filter(|h| !h.is_empty()),
                classes: classes.classifier(),
                namespaces: Vec::new(),
            },
            None,
        )),
        _ => None,
    }
}

/// For `run` and `watch`: the privileged start, then the drop to the kept capabilities.
fn attach_and_drop_privileges(command: &Command) -> anyhow::Result<Option<Attached>> {
    let Some((options, listen_port)) = trace_options(command) else {
        return Ok(None);
    };
    let attached = Tracer::attach(&options)?;
    attached.drop_capabilities(&tracer::privileges::runtime_capabilities(listen_port))?;
    Ok(Some(attached))
}

async fn run(cli: Cli, attached: Option<Attached>) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Gateway { gateway } => serve(gateway, Arc::new(::gateway::source::NoSource))
            .await
            .map(|()| ExitCode::SUCCESS),
        Command::Diagnose(args) => Ok(diagnose(args).await),
        Command::Selftest {
            hook,
            packets,
            corrupt_offset,
            late_modules,
            conntrack_modules,
        } => {
            let report = tracer::selftest::run(&tracer::selftest::SelftestOptions {
                hook: hook.into(),
                packets,
                corrupt_offset,
                late_modules,
                conntrack_modules,
            })?;
            println!("{}", report.line());
            Ok(if report.pass {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(exit::FAILURE)
            })
        }
        Command::Run { gateway, trace } => {
            let tracer = attached
                .context("the tracer was not attached before the runtime started")?
                .start();
            let config = gateway.into_config();
            let prefix = ::gateway::config::normalize_route_prefix(&config.route_prefix);
            let routes = tracer::api::routes(Arc::clone(&tracer.samples), &prefix);
            let (findings, rounds) =
                tracer::diagnose::watch::start(&tracer, trace.diagnose_interval);
            let result = async {
                ::gateway::server::Gateway::bind(config, tracer.metrics(findings))
                    .await?
                    .merge_routes(routes)
                    .run(::gateway::server::shutdown_signal())
                    .await
            }
            .await
            .context("the gateway failed");
            rounds.abort();
            // Detach before saying goodbye, so "stopped" means "gone from the kernel".
            tracer.stop();
            result.map(|()| ExitCode::SUCCESS)
        }
        Command::Import { from, to } => import(from, to).await,
        Command::Generate { what } => {
            tracer::cli::generate(what, &mut std::io::stdout().lock())
                .context("writing to stdout")?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Watch { filter, json, .. } => {
            let tracer = attached
                .context("the tracer was not attached before the runtime started")?
                .start();
            let result = watch(&tracer, &filter, json).await;
            tracer.stop();
            result.map(|()| ExitCode::SUCCESS)
        }
    }
}

/// Runs `diagnose` and prints the report; the exit code says healthy, problem, unchecked.
async fn diagnose(args: DiagnoseArgs) -> ExitCode {
    let report = tracer::diagnose::run(&tracer::diagnose::DiagnoseOptions {
        duration: args.duration,
        hook: args.hook.into(),
        docker_host: Some(args.docker_host).filter(|h| !h.is_empty()),
        classes: args.classes.classifier(),
        probes: args.probe,
    })
    .await;
    if args.json {
        match serde_json::to_string_pretty(&report) {
            Ok(json) => println!("{json}"),
            Err(err) => {
                eprintln!("dropgate: error: encoding the report: {err}");
                return ExitCode::from(exit::FAILURE);
            }
        }
    } else {
        print!("{}", report.text());
    }
    ExitCode::from(report.exit_code())
}

/// Copies the groups, one line per group on stdout; fails if any group failed.
async fn import(from: String, to: String) -> anyhow::Result<ExitCode> {
    let outcomes = tokio::task::spawn_blocking(move || {
        tracer::import::import(&from, &to, |outcome| println!("{}", outcome.line()))
    })
    .await
    .context("the import stopped")??;
    let failed = outcomes.iter().filter(|o| o.error.is_some()).count();
    println!(
        "{} of {} groups imported, {failed} failed",
        outcomes.len() - failed,
        outcomes.len()
    );
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(exit::FAILURE)
    })
}

/// Prints matching samples until SIGINT/SIGTERM.
async fn watch(tracer: &Tracer, filter: &WatchFilter, json: bool) -> anyhow::Result<()> {
    use std::io::Write as _;
    use tokio::sync::broadcast::error::RecvError;
    let mut feed = tracer.samples.subscribe();
    let shutdown = ::gateway::server::shutdown_signal();
    tokio::pin!(shutdown);
    let mut out = std::io::stdout().lock();
    loop {
        let event = tokio::select! {
            () = &mut shutdown => return Ok(()),
            event = feed.recv() => event,
        };
        let line = match event {
            Ok(event) if filter.matches(&event) => {
                if json {
                    serde_json::to_string(&*event).context("encoding an event")?
                } else {
                    event.line()
                }
            }
            Ok(_) => continue,
            Err(RecvError::Lagged(missed)) => {
                format!("# {missed} samples skipped: output too slow")
            }
            Err(RecvError::Closed) => return Ok(()),
        };
        if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
            // stdout closed (e.g. piped into head): a normal way to stop watching.
            return Ok(());
        }
    }
}

async fn serve(args: GatewayArgs, source: Arc<dyn ::gateway::MetricSource>) -> anyhow::Result<()> {
    let config = args.into_config();
    ::gateway::server::serve(config, source, ::gateway::server::shutdown_signal())
        .await
        .context("the gateway failed")
}
