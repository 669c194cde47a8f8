//! llmux: settings, telemetry, build, run. No logic here.
use clap::Parser;

use llmux::cli::{Cli, Command};
use llmux::startup::Application;
use llmux::telemetry;

fn main() -> anyhow::Result<()> {
    match Cli::parse().into_command() {
        Command::Check(args) => {
            let ok = llmux::check::run(&args.config_dir, &mut std::io::stdout().lock())?;
            std::process::exit(if ok { 0 } else { 1 });
        }
        Command::Serve(args) => {
            telemetry::init(telemetry::subscriber("llmux", &args.log, std::io::stdout)?)?;
            actix_web::rt::System::new().block_on(async move {
                let application = Application::build(args)?;
                application.run_until_stopped().await?;
                anyhow::Ok(())
            })
        }
    }
}
