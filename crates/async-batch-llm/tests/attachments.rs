//! Images and PDFs from a path, a URL and inline base64 reach the mock in
//! each provider's own format (the mock checks the shape, decodes the
//! bytes and answers with their SHA-256), and parts a provider cannot take
//! fail before any call.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use abl_mock::MockServer;
use abl_mock::parts::sha256_hex;
use async_batch_llm::providers::{ApiKey, ModelOptions, llm_with};
use async_batch_llm::{
    Attachment, BatchConfig, DynModel, ErrorCategory, Item, ItemResult, Message, ModelStrategy,
    Prompt, Role, call_result,
};
use serde_json::Value;

/// A 2 × 3 PNG: signature and IHDR (the rest does not matter to anyone
/// who only sniffs and hashes).
fn png_bytes(seed: u8) -> Vec<u8> {
    let mut b = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x02\0\0\0\x03\x08\x02\0\0\0".to_vec();
    b.extend(std::iter::repeat_n(seed, 64));
    b
}

fn pdf_bytes(seed: u8) -> Vec<u8> {
    let mut b = b"%PDF-1.4\n1 0 obj << /Type /Pages /Count 2 >> endobj\n".to_vec();
    b.extend(std::iter::repeat_n(seed, 64));
    b.extend_from_slice(b"\n%%EOF");
    b
}

struct Files {
    _dir: tempfile::TempDir,
    png: PathBuf,
    pdf: PathBuf,
}

fn files() -> Files {
    let dir = tempfile::tempdir().unwrap();
    let png = dir.path().join("photo.png");
    let pdf = dir.path().join("invoice.pdf");
    std::fs::write(&png, png_bytes(1)).unwrap();
    std::fs::write(&pdf, pdf_bytes(2)).unwrap();
    Files {
        _dir: dir,
        png,
        pdf,
    }
}

fn model(mock: &MockServer, spec: &str) -> Arc<dyn DynModel> {
    llm_with(
        spec,
        ModelOptions {
            api_key: Some(ApiKey::new("test-key")),
            base_url: Some(mock.base_url_for(spec)),
            ..ModelOptions::default()
        },
    )
    .unwrap()
}

fn item(parts: Vec<Attachment>) -> Item {
    let mut m = Message::new(Role::User, "What is in these?");
    m.attachments = parts;
    Item::new("it-1", Prompt::Messages(vec![m]))
}

async fn run(mock: &MockServer, spec: &str, item: Item) -> ItemResult<String> {
    let strategy = ModelStrategy::text(model(mock, spec));
    call_result(strategy, item, &BatchConfig::default())
        .await
        .unwrap()
}

fn hash_of(path: &Path) -> String {
    sha256_hex(&std::fs::read(path).unwrap())
}

/// Every provider gets an image and a PDF from a path, from inline base64
/// and (where it takes them) from a URL; the reply names each by the hash
/// of the bytes that arrived, in order.
#[tokio::test]
async fn images_and_pdfs_from_paths_urls_and_base64_reach_each_provider_in_its_format() {
    let f = files();
    let inline_png = png_bytes(3);
    let inline_pdf = pdf_bytes(4);
    for spec in [
        "openai:gpt-4o-mini",
        "openai-chat:gpt-4o-mini",
        "anthropic:claude-3-5-haiku",
        "gemini:gemini-2.0-flash",
    ] {
        let mock = MockServer::start_recording().await.unwrap();
        let mut parts = vec![
            Attachment::path(&f.png),
            Attachment::path(&f.pdf),
            Attachment::bytes(&inline_png),
            Attachment::bytes(&inline_pdf),
            Attachment::url("https://files.example/cat.png"),
        ];
        let mut expected = vec![
            format!("image/png sha256:{}", hash_of(&f.png)),
            format!("application/pdf sha256:{}", hash_of(&f.pdf)),
            format!("image/png sha256:{}", sha256_hex(&inline_png)),
            format!("application/pdf sha256:{}", sha256_hex(&inline_pdf)),
        ];
        let typed_url = |t: &str, u: &str| match spec {
            // Gemini's fileData states the type; the others do not.
            s if s.starts_with("gemini") => format!("{t} url:{u}"),
            _ => format!("url:{u}"),
        };
        expected.push(typed_url("image/png", "https://files.example/cat.png"));
        // Chat Completions takes no PDF by URL (checked below).
        if spec != "openai-chat:gpt-4o-mini" {
            parts.push(Attachment::url("https://files.example/scan.pdf"));
            expected.push(typed_url(
                "application/pdf",
                "https://files.example/scan.pdf",
            ));
        }
        let r = run(&mock, spec, item(parts)).await;
        let text = r.outcome.as_ref().unwrap_or_else(|e| panic!("{spec}: {e}"));
        let line = format!("[parts: {}]", expected.join("; "));
        assert_eq!(text, &format!("What is in these?\n{line}"), "{spec}");
        let stats = mock.stats();
        assert_eq!(stats.requests, 1, "{spec}");
        assert_eq!(stats.parts_inline, 4, "{spec}");
        // The body is in the provider's own shape.
        let body = &mock.recent_requests()[0].body;
        let first_part = match spec {
            "openai:gpt-4o-mini" => body.pointer("/input/0/content/0/type"),
            "openai-chat:gpt-4o-mini" => body.pointer("/messages/0/content/0/type"),
            "anthropic:claude-3-5-haiku" => body.pointer("/messages/0/content/0/source/type"),
            _ => body.pointer("/contents/0/parts/0/inlineData/mimeType"),
        };
        let want = match spec {
            "openai:gpt-4o-mini" => "input_image",
            "openai-chat:gpt-4o-mini" => "image_url",
            "anthropic:claude-3-5-haiku" => "base64",
            _ => "image/png",
        };
        assert_eq!(
            first_part.and_then(Value::as_str),
            Some(want),
            "{spec}: {body}"
        );
        // The text comes after the parts, as providers recommend.
        let text_last = match spec {
            "openai:gpt-4o-mini" => body.pointer("/input/0/content").and_then(Value::as_array),
            "openai-chat:gpt-4o-mini" | "anthropic:claude-3-5-haiku" => body
                .pointer("/messages/0/content")
                .and_then(Value::as_array),
            _ => body.pointer("/contents/0/parts").and_then(Value::as_array),
        }
        .and_then(|a| a.last())
        .and_then(|p| p.get("text"))
        .and_then(Value::as_str);
        assert_eq!(text_last, Some("What is in these?"), "{spec}");
    }
}

async fn refused_before_a_call(spec: &str, part: Attachment, says: &str) {
    let mock = MockServer::start_recording().await.unwrap();
    let r = run(&mock, spec, item(vec![part])).await;
    let e = r.outcome.unwrap_err();
    assert_eq!(e.category, ErrorCategory::ClientError, "{spec}: {e:?}");
    assert!(
        e.message.starts_with("item it-1, attachment 1 ("),
        "{spec}: {}",
        e.message
    );
    assert!(e.message.contains(says), "{spec}: {}", e.message);
    assert_eq!(r.tries, 0, "{spec}: no attempt was made");
    assert_eq!(
        mock.stats().requests,
        0,
        "{spec}: nothing reached the provider"
    );
}

#[tokio::test]
async fn parts_a_provider_cannot_take_fail_before_any_call() {
    let dir = tempfile::tempdir().unwrap();
    let wav = dir.path().join("note.wav");
    let mut w = b"RIFF\0\0\0\0WAVEfmt \x10\0\0\0\x01\0\x01\0\x80\x3e\0\0\0\x7d\0\0".to_vec();
    w.resize(4_000, 0);
    std::fs::write(&wav, &w).unwrap();
    refused_before_a_call(
        "anthropic:claude-3-5-haiku",
        Attachment::path(&wav),
        "Anthropic does not take audio parts (audio/wav)",
    )
    .await;
    refused_before_a_call(
        "openai:gpt-4o-mini",
        Attachment::path(&wav),
        "OpenAI Responses does not take audio parts",
    )
    .await;
    refused_before_a_call(
        "openai-chat:gpt-4o-mini",
        Attachment::url("https://files.example/scan.pdf"),
        "cannot take document parts by URL",
    )
    .await;
    refused_before_a_call(
        "gemini:gemini-2.0-flash",
        Attachment::url("https://files.example/anim.gif"),
        "not image/gif",
    )
    .await;
    refused_before_a_call(
        "deepseek:deepseek-chat",
        Attachment::url("https://files.example/cat.png"),
        "DeepSeek does not take image parts",
    )
    .await;
    // Over the provider's size limit: Anthropic takes images up to 5 MB.
    let big = dir.path().join("big.png");
    let mut b = png_bytes(9);
    b.resize(6 << 20, 0);
    std::fs::write(&big, &b).unwrap();
    refused_before_a_call(
        "anthropic:claude-3-5-haiku",
        Attachment::path(&big),
        "it is 6.0 MB; Anthropic takes at most 5.0 MB per image",
    )
    .await;
    // A file that is not there, and bytes that are not what they claim.
    refused_before_a_call(
        "gemini:gemini-2.0-flash",
        Attachment::path(dir.path().join("missing.png")),
        "missing.png): cannot open the file: ",
    )
    .await;
    refused_before_a_call(
        "gemini:gemini-2.0-flash",
        Attachment::path(&wav).with_media_type(async_batch_llm::MediaType::Png),
        "given as image/png but its bytes are audio/wav",
    )
    .await;
}

/// Audio goes where it is taken: Chat Completions' `input_audio` and
/// Gemini's `inlineData`.
#[tokio::test]
async fn audio_reaches_chat_and_gemini() {
    let dir = tempfile::tempdir().unwrap();
    let wav = dir.path().join("note.wav");
    let mut w = b"RIFF\0\0\0\0WAVEfmt \x10\0\0\0\x01\0\x01\0\x80\x3e\0\0\0\x7d\0\0".to_vec();
    w.resize(4_000, 5);
    std::fs::write(&wav, &w).unwrap();
    for spec in [
        "openai-chat:gpt-4o-audio-preview",
        "gemini:gemini-2.0-flash",
    ] {
        let mock = MockServer::start_recording().await.unwrap();
        let r = run(&mock, spec, item(vec![Attachment::path(&wav)])).await;
        let text = r.outcome.unwrap();
        assert!(
            text.ends_with(&format!("[parts: audio/wav sha256:{}]", sha256_hex(&w))),
            "{spec}: {text}"
        );
    }
}
