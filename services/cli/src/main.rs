//! `chexvision`: parse the command line, run it, report errors plainly.

use std::process::ExitCode;

use chexvision_config::{LogFormat, LogSettings};
use clap::Parser;

/// Training programs use mimalloc (see `chexvision_trainer::TrainingAllocator`).
#[global_allocator]
static GLOBAL: chexvision_trainer::TrainingAllocator = chexvision_trainer::TrainingAllocator;

#[tokio::main]
async fn main() -> ExitCode {
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
