use clap::Parser;

fn main() -> std::process::ExitCode {
    healthscope::without_transparent_huge_pages();
    let cli = healthscope::cli::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("healthscope: cannot start the async runtime: {err}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(healthscope::cli::run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("healthscope: {err}");
            std::process::ExitCode::FAILURE
        }
    }
}
