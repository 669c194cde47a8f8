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
                match application.run_until_signalled().await? {
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
