//! llmux: settings, telemetry, build, run. No logic here.
use clap::Parser;

use llmux::cli::{Cli, Command};
use llmux::startup::{Application, Shutdown};
use llmux::telemetry;

fn main() -> anyhow::Result<()> {
    match Cli::parse().into_command() {
        Command::Check(args) => {
            let ok = llmux::commands::check::run(&args, &mut std::io::stdout().lock())?;
            std::process::exit(if ok { 0 } else { 1 });
        }
        Command::Serve(args) => {
            telemetry::init(telemetry::subscriber(
                "llmux",
                &args.log,
                telemetry::StdoutLines::new(),
            )?)?;
            actix_web::rt::System::new().block_on(async move {
                let application = Application::build(args)?;
                // The tables (routes, every client key) die with the process: freeing them at
                // exit is work for nothing, and it was a race, done by whichever of this thread
                // and the worker threads let go last, by a worker only when it ended before the
                // process did (issue 16: two callgrind runs differed by one free of the keys).
                let tables = application.state();
                let shutdown = application.run_until_signalled().await?;
                std::mem::forget(tables);
                match shutdown {
                    Shutdown::Drained => anyhow::Ok(()),
                    Shutdown::Forced => std::process::exit(1),
                }
            })
        }
        Command::Keys(args) => {
            llmux::commands::keys::run(&args.command, &mut std::io::stdout().lock())
        }
        Command::Admin(args) => {
            let ok = llmux::commands::admin::run(
                args,
                &mut std::io::stdout().lock(),
                &mut std::io::stderr().lock(),
            )?;
            std::process::exit(if ok { 0 } else { 1 });
        }
        Command::Healthcheck(args) => {
            match llmux::healthcheck::run(&args.host, args.port, args.timeout) {
                Ok(()) => std::process::exit(0),
                Err(problem) => {
                    eprintln!("llmux healthcheck: {problem}");
                    std::process::exit(1);
                }
            }
        }
    }
}
