//! `abl`: the command-line tool of async-batch-llm.

mod batch;
mod checkpoint;
mod cli;
mod embed;
mod exit;
mod input;
mod merge;
mod model;
mod output;
mod paths;
mod progress;
mod report;
mod run;
mod settings;
mod summary;

use std::io::Write as _;

use clap::Parser as _;

fn main() {
    let cli = cli::Cli::parse();
    let level = match cli.verbose {
        0 => tracing::Level::WARN,
        1 => tracing::Level::INFO,
        _ => tracing::Level::DEBUG,
    };
    tracing_subscriber::fmt()
        .with_max_level(level)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(|| progress::LogWriter)
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            progress::eprintln_safe(&format!("abl: error: cannot start the runtime: {e}"));
            std::process::exit(exit::USAGE);
        }
    };
    let code = rt.block_on(async {
        let result = match cli.command {
            cli::Command::Run(args) => run::run(*args).await,
            cli::Command::Summary { file, summary_json } => {
                summary::run(&file, summary_json.as_deref())
            }
            cli::Command::Report { file, output } => report::run(&file, &output),
            cli::Command::Embed(args) => embed::run(*args).await,
            cli::Command::Merge {
                output,
                input,
                id_field,
                files,
            } => merge::run(&output, input.as_deref(), id_field.as_deref(), &files),
            cli::Command::MockServer(config) => mock_server(*config).await,
            cli::Command::Checkpoint(cli::CheckpointCommand::Import { from, to }) => {
                checkpoint::import(&from, &to)
            }
            cli::Command::Batch(cli::BatchCommand::Status {
                checkpoint,
                base_url,
            }) => batch::status(&checkpoint, base_url.as_deref()).await,
            cli::Command::Batch(cli::BatchCommand::Cancel {
                checkpoint,
                base_url,
            }) => batch::cancel(&checkpoint, base_url.as_deref()).await,
        };
        match result {
            Ok(code) => code,
            Err(e) => {
                let usage = e.downcast_ref::<exit::UsageError>().is_some();
                let message = format!("{e:#}");
                progress::eprintln_safe(&format!(
                    "abl: error: {}",
                    async_batch_llm::secret::redact(&message)
                ));
                if usage {
                    exit::USAGE
                } else {
                    exit::SOME_FAILED
                }
            }
        }
    });
    // Hanging mock requests or a blocked stdin reader must not hold the exit.
    rt.shutdown_timeout(std::time::Duration::from_millis(200));
    std::process::exit(code);
}

async fn mock_server(config: abl_mock::MockConfig) -> anyhow::Result<i32> {
    let server = abl_mock::MockServer::start(config).await.map_err(|e| {
        anyhow::Error::new(exit::UsageError(format!(
            "cannot start the mock server: {e}"
        )))
    })?;
    // Nobody may be reading stdout: a closed pipe must not stop the server.
    let mut out = std::io::stdout();
    let base = server.base_url();
    let _ = writeln!(out, "abl mock-server listening on {base}");
    let _ = writeln!(out, "  OpenAI:    {base}/v1  (responses, chat/completions)");
    let _ = writeln!(
        out,
        "  Gemini:    {base}     (v1beta/models/MODEL:generateContent, cachedContents)"
    );
    let _ = writeln!(out, "  Anthropic: {base}     (v1/messages)");
    let _ = writeln!(out, "  Stats:     {base}/stats");
    let _ = out.flush();
    let _ = tokio::signal::ctrl_c().await;
    server.shutdown().await;
    Ok(exit::OK)
}
