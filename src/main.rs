use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = healthscope::cli::Cli::parse();
    match healthscope::cli::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("healthscope: {err}");
            std::process::ExitCode::FAILURE
        }
    }
}
