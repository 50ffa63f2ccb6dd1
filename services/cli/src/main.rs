//! `chexvision`: parse the command line, run it, report errors plainly.

use std::process::ExitCode;

use chexvision_config::{LogFormat, LogSettings};
use clap::Parser;

/// Training programs use mimalloc (see `chexvision_trainer::TrainingAllocator`).
#[global_allocator]
static GLOBAL: chexvision_trainer::TrainingAllocator = chexvision_trainer::TrainingAllocator;

fn main() -> ExitCode {
    // Before the runtime's threads exist: it sets an environment variable.
    chexvision_trainer::park_idle_candle_workers();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run())
}

async fn run() -> ExitCode {
    let cli = chexvision_cli::Cli::parse();
    chexvision_telemetry::init_tracing(&LogSettings {
        format: LogFormat::Pretty,
        level: "warn".into(),
    });
    let mut stdout = std::io::stdout();
    match chexvision_cli::execute(cli, &mut stdout).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
