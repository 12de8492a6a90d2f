//! `abl embed INPUT -o OUT --model openai:MODEL`: one vector per item, many
//! items per request.
//!
//! The input is read in chunks (memory follows the chunk, not the file);
//! each chunk's items are packed into requests and run through the engine
//! by [`embed_items`]. With `--checkpoint`, items already recorded are
//! replayed, not sent again, and every new result is recorded before it is
//! written out, so a killed run rerun with the same command embeds each
//! item once.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_batch_llm::embed::{EmbeddingModel, PackLimits, embed_items};
use async_batch_llm::providers::{
    ApiKey, GeminiEmbeddings, HttpOptions, OpenAiConfig, OpenAiEmbeddings,
};
use async_batch_llm::store::{Checkpoint, Identity, ResumePolicy, item_fingerprint};
use async_batch_llm::{BatchConfig, Item, ItemResult, RateLimits, SummaryCollector, Termination};
use serde_json::Value;

use crate::cli::EmbedArgs;
use crate::exit::{self, UsageError};
use crate::input::{Format, IdSet, Mapping, Reader, Template};
use crate::output::Results;
use crate::progress::eprintln_safe;
use crate::settings::CheckpointPlan;

fn usage(msg: impl Into<String>) -> UsageError {
    UsageError(msg.into())
}

/// The model and, for `mock:embed`, the mock serving it.
struct Model {
    embeddings: Arc<dyn EmbeddingModel>,
    provider: String,
    name: String,
    _mock: Option<abl_mock::MockServer>,
}

/// An OpenAI-compatible embeddings model.
fn openai(
    name: &str,
    base_url: String,
    api_key: Option<ApiKey>,
    args: &EmbedArgs,
    http: HttpOptions,
) -> Result<Arc<dyn EmbeddingModel>, UsageError> {
    let m = OpenAiEmbeddings::new(
        OpenAiConfig {
            model: name.to_owned(),
            base_url,
            api_key,
            http,
        },
        args.dimensions,
    )
    .map_err(|e| usage(e.to_string()))?;
    Ok(Arc::new(m))
}

fn model(args: &EmbedArgs) -> Result<Model, UsageError> {
    let (provider, name) = args.model.split_once(':').ok_or_else(|| {
        usage(format!(
            "--model {}: give PROVIDER:MODEL, e.g. openai:text-embedding-3-small or mock:embed",
            args.model
        ))
    })?;
    let http = HttpOptions {
        max_connections: args.concurrency.unwrap_or(8),
        ..HttpOptions::default()
    };
    let (embeddings, mock): (Arc<dyn EmbeddingModel>, _) = match provider {
        "mock" => {
            let server = abl_mock::MockServer::start_dedicated(abl_mock::MockConfig::default(), 1)
                .map_err(|e| usage(format!("cannot start the mock provider: {e}")))?;
            let url = format!("{}/v1", server.base_url());
            (
                openai(name, url, Some(ApiKey::new("mock-key")), args, http)?,
                Some(server),
            )
        }
        "openai" => {
            let key = ApiKey::from_env(&["OPENAI_API_KEY"]);
            if key.is_none() && args.base_url.is_none() {
                return Err(usage(
                    "no API key: set OPENAI_API_KEY (or give --base-url for a server without keys)",
                ));
            }
            let url = args
                .base_url
                .clone()
                .unwrap_or_else(|| "https://api.openai.com/v1".to_owned());
            (openai(name, url, key, args, http)?, None)
        }
        "gemini" => {
            let key = ApiKey::from_env(&["GEMINI_API_KEY", "GOOGLE_API_KEY"])
                .ok_or_else(|| usage("no API key: set GEMINI_API_KEY or GOOGLE_API_KEY"))?;
            let url = args
                .base_url
                .clone()
                .unwrap_or_else(|| "https://generativelanguage.googleapis.com".to_owned());
            let m = GeminiEmbeddings::new(name, &url, &key, args.dimensions, &http)
                .map_err(|e| usage(e.to_string()))?;
            (Arc::new(m) as Arc<dyn EmbeddingModel>, None)
        }
        other => {
            return Err(usage(format!(
                "--model {other}:…: embeddings are served by openai: (and any OpenAI-compatible server with --base-url), gemini: or mock:embed"
            )));
        }
    };
    Ok(Model {
        embeddings,
        provider: provider.to_owned(),
        name: name.to_owned(),
        _mock: mock,
    })
}

/// The checks of the flags that take numbers.
fn limits(args: &EmbedArgs) -> Result<PackLimits, UsageError> {
    let d = PackLimits::default();
    let max_inputs = args.pack_inputs.unwrap_or(d.max_inputs);
    if !(1..=d.max_inputs).contains(&max_inputs) {
        return Err(usage(format!(
            "--pack-inputs must be from 1 to {}, got {max_inputs}",
            d.max_inputs
        )));
    }
    let max_tokens = args.pack_tokens.unwrap_or(d.max_tokens);
    if !(1..=d.max_tokens).contains(&max_tokens) {
        return Err(usage(format!(
            "--pack-tokens must be from 1 to {}, got {max_tokens}",
            d.max_tokens
        )));
    }
    if args.dimensions.is_some_and(|d| !(1..=16_384).contains(&d)) {
        return Err(usage("--dimensions must be from 1 to 16384"));
    }
    Ok(PackLimits {
        max_inputs,
        max_tokens,
    })
}

fn config(args: &EmbedArgs) -> Result<BatchConfig, UsageError> {
    let concurrency = args.concurrency.unwrap_or(8);
    if !(1..=10_000).contains(&concurrency) {
        return Err(usage(format!(
            "--concurrency must be from 1 to 10000, got {concurrency}"
        )));
    }
    if args.rpm.is_some_and(|r| !(r.is_finite() && r > 0.0)) {
        return Err(usage("--rpm must be a positive number"));
    }
    let config = BatchConfig {
        concurrency,
        limits: RateLimits {
            rpm: args.rpm,
            tpm: args.tpm,
            margin: Duration::from_millis(500),
        },
        ..BatchConfig::default()
    };
    config.validate().map_err(|e| usage(e.to_string()))?;
    Ok(config)
}

/// Items per chunk: enough packs to keep every worker busy a few rounds.
fn chunk_size(limits: PackLimits, concurrency: usize) -> usize {
    (limits.max_inputs * concurrency * 4).clamp(1_000, 200_000)
}

/// What a chunk's loop carries.
struct Job {
    model: Model,
    config: BatchConfig,
    limits: PackLimits,
    checkpoint: Option<Checkpoint<Value>>,
    reader: Reader,
    input: String,
    ids: IdSet,
    results: Results,
    collector: SummaryCollector,
    next_index: u64,
}

/// How a chunk ended the loop, if it did.
enum Stop {
    /// A bad input line or a duplicate id: its message.
    Input(String),
    /// Writing the output failed.
    Output,
}

impl Job {
    /// Up to `n` items with their place in the input and fingerprint.
    fn read(&mut self, n: usize) -> Result<Vec<(Item, u64, String)>, Stop> {
        let mut items = Vec::with_capacity(n);
        while items.len() < n {
            let Some(next) = tokio::task::block_in_place(|| self.reader.next_item()) else {
                break;
            };
            let item = next.map_err(|e| Stop::Input(e.to_string()))?;
            if !self.ids.insert(&item.id) {
                return Err(Stop::Input(format!(
                    "{}:{}: id {:?} is used twice; every item needs its own id",
                    self.input,
                    self.reader.line(),
                    item.id
                )));
            }
            let fp = item_fingerprint(&item);
            items.push((item, self.next_index, fp));
            self.next_index += 1;
        }
        Ok(items)
    }

    fn write(&mut self, r: &ItemResult<Value>) -> anyhow::Result<Result<(), Stop>> {
        self.collector.add(r);
        Ok(if self.results.write(r)? {
            Ok(())
        } else {
            Err(Stop::Output)
        })
    }

    /// Replays what the checkpoint holds, embeds the rest, records and
    /// writes every result.
    async fn chunk(&mut self, items: Vec<(Item, u64, String)>) -> anyhow::Result<Result<(), Stop>> {
        let mut fresh = Vec::with_capacity(items.len());
        let mut places = Vec::with_capacity(items.len());
        for (item, at, fp) in items {
            let replay = match &self.checkpoint {
                Some(c) => c.replay(&item, &fp, at).map_err(|e| usage(e.to_string()))?,
                None => None,
            };
            if let Some(r) = replay {
                if let Err(stop) = self.write(&r)? {
                    return Ok(Err(stop));
                }
            } else {
                places.push((at, fp));
                fresh.push(item);
            }
        }
        let done = embed_items(
            Arc::clone(&self.model.embeddings),
            fresh,
            &self.config,
            self.limits,
        )
        .await?;
        let (results, fps): (Vec<ItemResult<Value>>, Vec<String>) = done
            .into_iter()
            .zip(places)
            .map(|(r, (at, fp))| (as_value(r, at), fp))
            .unzip();
        // Recorded all at once (the writer commits them in batches), and
        // every one before any is written out.
        if let Some(c) = &self.checkpoint {
            futures::future::try_join_all(
                results.iter().zip(fps).map(|(r, fp)| c.record(r, fp, None)),
            )
            .await?;
        }
        for r in &results {
            if let Err(stop) = self.write(r)? {
                return Ok(Err(stop));
            }
        }
        Ok(Ok(()))
    }
}

/// The run's identity: embeddings of this model (and dimensions).
fn identity(m: &Model, dimensions: Option<u32>) -> Identity {
    let mut extra = BTreeMap::new();
    extra.insert("task".to_owned(), "embed".to_owned());
    if let Some(d) = dimensions {
        extra.insert("dimensions".to_owned(), d.to_string());
    }
    Identity {
        provider: m.provider.clone(),
        model: m.name.clone(),
        extra,
        ..Identity::default()
    }
}

fn mapping(args: &EmbedArgs) -> Result<Mapping, UsageError> {
    Ok(Mapping {
        id_field: args.id_field.clone().unwrap_or_else(|| "id".to_owned()),
        id_field_required: args.id_field.is_some(),
        prompt_field: args.text_field.clone().unwrap_or_else(|| "text".to_owned()),
        template: args
            .template
            .as_deref()
            .map(Template::parse)
            .transpose()
            .map_err(|e| usage(format!("--template: {e}")))?,
        attach: Vec::new(),
        base_dir: None,
    })
}

/// `abl embed`.
pub async fn run(args: EmbedArgs) -> anyhow::Result<i32> {
    let limits = limits(&args)?;
    let config = config(&args)?;
    let output = args.output.as_ref().filter(|o| o.as_os_str() != "-");
    let input = std::path::Path::new(&args.input);
    for (what, other) in [
        ("--output", output),
        ("--checkpoint", args.checkpoint.as_ref()),
    ] {
        if let Some(o) = other.filter(|o| crate::paths::same_file(input, o).is_some()) {
            return Err(usage(format!(
                "{what} {} is the input; abl never writes over a file it reads",
                o.display()
            ))
            .into());
        }
    }
    if let (Some(o), Some(c)) = (output, &args.checkpoint)
        && crate::paths::same_file(o, c).is_some()
    {
        return Err(usage(format!(
            "--output and --checkpoint are the same file ({}); each needs its own",
            o.display()
        ))
        .into());
    }
    let model = model(&args)?;
    let checkpoint = match &args.checkpoint {
        Some(path) => {
            let plan = CheckpointPlan {
                path: path.clone(),
                resume: ResumePolicy::Successes,
                store_inputs: false,
                fsync: false,
            };
            Some(crate::checkpoint::open(
                &plan,
                path,
                &identity(&model, args.dimensions),
            )?)
        }
        None => None,
    };
    let format = Format::detect(&args.input);
    let reader =
        Reader::open(&args.input, format, mapping(&args)?).map_err(|e| usage(e.to_string()))?;
    let chunk = chunk_size(limits, config.concurrency);
    let mut job = Job {
        model,
        config,
        limits,
        checkpoint,
        reader,
        input: args.input.clone(),
        ids: IdSet::default(),
        results: Results::create(output.map(PathBuf::as_path))?,
        collector: SummaryCollector::default(),
        next_index: 0,
    };
    let started = Instant::now();
    let stop = loop {
        let items = match job.read(chunk) {
            Ok(items) if items.is_empty() => break None,
            Ok(items) => items,
            Err(stop) => break Some(stop),
        };
        if let Err(stop) = job.chunk(items).await? {
            break Some(stop);
        }
        let n = job.collector.stats.items;
        eprintln_safe(&format!(
            "abl: {n} embedded ({:.0}/s)",
            n as f64 / started.elapsed().as_secs_f64().max(1e-9)
        ));
    };
    if let Some(c) = &job.checkpoint {
        c.settle().map_err(|e| usage(e.to_string()))?;
    }
    let failure = job.results.finish()?;
    let summary = job
        .collector
        .finish(Termination::completed(), started.elapsed());
    crate::summary::print_end(&summary, None);
    Ok(match stop {
        Some(Stop::Input(e)) => {
            eprintln_safe(&format!("abl: error: {e}"));
            exit::USAGE
        }
        _ if matches!(failure, Some(crate::output::WriteFailure::Pipe)) => exit::PIPE,
        _ if failure.is_some() => exit::SOME_FAILED,
        _ if summary.stats.failed > 0 => exit::SOME_FAILED,
        _ => exit::OK,
    })
}

/// A result with its vector as a JSON array, at its place in the input.
fn as_value(r: ItemResult<Vec<f32>>, at: u64) -> ItemResult<Value> {
    ItemResult {
        id: r.id,
        index: at,
        outcome: r.outcome.map(|v| {
            Value::Array(
                v.into_iter()
                    .map(|x| {
                        serde_json::Number::from_f64(f64::from(x))
                            .map_or(Value::Null, Value::Number)
                    })
                    .collect(),
            )
        }),
        usage: r.usage,
        attempts: r.attempts,
        tries: r.tries,
        timing: r.timing,
        context: r.context,
        replayed: false,
    }
}
