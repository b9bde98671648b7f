//! `truebit-federation`: parses the command line, sets up logging, runs, and turns the outcome
//! into an exit code (0 success, 1 a failed check, 2 bad usage or config, 3 cannot reach NATS).

use clap::Parser;
use std::io::IsTerminal;
use std::process::ExitCode;
use truebit_federation::cli::{self, Cli};

fn main() -> ExitCode {
    bound_the_heap();
    let cli = Cli::parse();
    // serve and node report what they do; one-shot commands speak only when something is wrong.
    let default_level = if matches!(
        cli.command,
        cli::Command::Serve(_) | cli::Command::Node(cli::NodeArgs { show_id: false, .. })
    ) {
        "info"
    } else {
        "warn"
    };
    // An empty RUST_LOG counts as unset, not as a filter.
    let filter = std::env::var("RUST_LOG")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .and_then(|v| tracing_subscriber::EnvFilter::try_new(v).ok())
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new(default_level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(cli::run(cli, shutdown_signal())) {
        Ok(output) => {
            print!("{output}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code() as u8)
        }
    }
}

/// Two glibc settings that bound what the heap keeps. Measured with `cargo bench --bench pipeline
/// -- --events 3200000` (a million tasks):
///
/// - glibc serves allocations above its mmap threshold with mmap and returns them on free, but
///   it raises that threshold after the first such free, up to 32 MiB. From then on the fold's
///   multi-megabyte batch buffers come from the heap arenas, between redb's page buffers, and
///   the arenas keep what they free: `serve` held 231 MiB at its peak for 109 MiB of live heap.
///   A fixed threshold keeps large buffers out of the arenas: 187 MiB.
/// - Each thread that allocates gets an arena of its own, up to eight per core, and an arena
///   keeps its freed chunks. A batch's messages are read on short-lived threads, one per core
///   (`truebit_projections::inputs`), and the committer frees what they allocated: every arena ends
///   up holding fragments. At most two arenas: 158 to 131 MiB, and 255 to 191 MiB at ten
///   million tasks, where it cost 8% to 23% of the rate (tests/bench/README.md, "Peak RSS and malloc arenas").
fn bound_the_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets glibc allocator parameters; called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 * 1024);
        // glibc's own MALLOC_ARENA_MAX, when set, wins: to measure another bound without a build.
        if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM; only SIGINT stops serve");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: finishing the batch in hand"),
        _ = term.recv() => tracing::info!("SIGTERM: finishing the batch in hand"),
    }
}
