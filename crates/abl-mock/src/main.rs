//! `abl-mock`: the mock LLM provider as a standalone server.

use clap::Parser;

/// Mock LLM provider (OpenAI, Gemini, Anthropic wire formats) on 127.0.0.1.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(flatten)]
    config: abl_mock::MockConfig,
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let server = match abl_mock::MockServer::start(cli.config).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("abl-mock: {e}");
            std::process::exit(2);
        }
    };
    println!("abl-mock listening on {}", server.base_url());
    let _ = tokio::signal::ctrl_c().await;
    server.shutdown().await;
}
