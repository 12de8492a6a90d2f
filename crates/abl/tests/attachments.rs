//! `abl run` with images and documents: `--attach FIELD` on CSV and JSONL,
//! content arrays in the providers' shapes, paths relative to the input
//! file, parts a provider cannot take, and checkpoints that know a file by
//! the hash of its bytes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;

use abl_mock::parts::sha256_hex;
use common::{Mock, TEST_KEY, abl, records, stderr};
use serde_json::Value;

fn png(seed: u8) -> Vec<u8> {
    let mut b = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x10\0\0\0\x10\x08\x02\0\0\0".to_vec();
    b.extend(std::iter::repeat_n(seed, 500));
    b
}

fn pdf(seed: u8) -> Vec<u8> {
    let mut b = b"%PDF-1.4\n<< /Type /Pages /Count 1 >>\n<< /Type /Page >>\n".to_vec();
    b.extend(std::iter::repeat_n(seed, 500));
    b
}

fn output_of<'a>(recs: &'a [Value], id: &str) -> &'a Value {
    recs.iter().find(|r| r["id"] == id).unwrap()
}

/// The issue's own example: a CSV of invoices, one fixed question, the PDF
/// named by a column, paths relative to the CSV (run from elsewhere).
#[test]
fn a_csv_of_invoices_with_attach_sends_each_pdf_once_and_a_missing_one_fails_alone() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("scans")).unwrap();
    for i in 0..3u8 {
        std::fs::write(dir.path().join(format!("scans/{i}.pdf")), pdf(i)).unwrap();
    }
    let csv = dir.path().join("invoices.csv");
    std::fs::write(
        &csv,
        "id,pdf_path,vendor\n1,scans/0.pdf,ACME\n2,scans/1.pdf,Globex\n3,scans/2.pdf,Initech\n4,scans/none.pdf,Nobody\n",
    )
    .unwrap();
    let out = dir.path().join("out.jsonl");
    let o = abl()
        .current_dir("/")
        .args(["run", csv.to_str().unwrap(), "--model", "mock:echo"])
        .args([
            "--template",
            "Extract the total of this invoice",
            "--attach",
            "pdf_path",
        ])
        .args(["-o", out.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "one item failed: {}", stderr(&o));
    let recs = records(&out);
    assert_eq!(recs.len(), 4);
    for i in 0..3u8 {
        let r = output_of(&recs, &(i + 1).to_string());
        assert_eq!(
            r["output"],
            format!(
                "Extract the total of this invoice\n[parts: application/pdf sha256:{}]",
                sha256_hex(&pdf(i))
            )
        );
        // The column stays in the context for joining back.
        assert_eq!(r["context"]["pdf_path"], format!("scans/{i}.pdf"));
    }
    let missing = output_of(&recs, "4");
    assert_eq!(missing["error"]["category"], "client_error");
    let m = missing["error"]["message"].as_str().unwrap();
    assert!(m.starts_with("item 4, attachment 1 ("), "{m}");
    assert!(m.contains("scans/none.pdf): cannot open the file"), "{m}");
    assert_eq!(missing["tries"], 0);
    // A template with no placeholder is a mistake without --attach.
    let o = abl()
        .args([
            "run",
            csv.to_str().unwrap(),
            "--model",
            "mock:echo",
            "--dry-run",
        ])
        .args(["--template", "Extract the total of this invoice"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("no {field} placeholder"),
        "{}",
        stderr(&o)
    );
}

/// JSONL messages with content arrays in the OpenAI Chat, Anthropic and
/// Gemini shapes (and the short `path` form) all arrive; a part that is
/// malformed stops the run before any call, naming the line and field.
#[test]
fn content_arrays_in_every_providers_shape_and_a_bad_part_named_by_line_and_field() {
    use base64::Engine as _;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.png"), png(1)).unwrap();
    std::fs::write(dir.path().join("b.pdf"), pdf(2)).unwrap();
    let b64 = base64::engine::general_purpose::STANDARD.encode(png(3));
    let lines = [
        r#"{"id":"chat","messages":[{"role":"user","content":[{"type":"text","text":"Describe"},{"type":"image_url","image_url":{"url":"a.png"}}]}]}"#.to_owned(),
        format!(r#"{{"id":"anthropic","messages":[{{"role":"user","content":[{{"type":"image","source":{{"type":"base64","media_type":"image/png","data":"{b64}"}}}},{{"type":"text","text":"Describe"}}]}}]}}"#),
        r#"{"id":"gemini","messages":[{"role":"user","content":[{"text":"Describe"},{"file_data":{"file_uri":"https://files.example/c.png","mime_type":"image/png"}}]}]}"#.to_owned(),
        r#"{"id":"short","messages":[{"role":"system","content":"Be brief."},{"role":"user","content":[{"type":"document","path":"b.pdf"},"Describe"]}]}"#.to_owned(),
    ];
    let input = dir.path().join("in.jsonl");
    std::fs::write(&input, lines.join("\n") + "\n").unwrap();
    let out = dir.path().join("out.jsonl");
    let o = common::run_mock(&input, &out, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let recs = records(&out);
    let want = [
        ("chat", format!("image/png sha256:{}", sha256_hex(&png(1)))),
        (
            "anthropic",
            format!("image/png sha256:{}", sha256_hex(&png(3))),
        ),
        ("gemini", "url:https://files.example/c.png".to_owned()),
        (
            "short",
            format!("application/pdf sha256:{}", sha256_hex(&pdf(2))),
        ),
    ];
    for (id, part) in want {
        assert_eq!(
            output_of(&recs, id)["output"],
            format!("Describe\n[parts: {part}]"),
            "{id}"
        );
    }
    std::fs::write(
        &input,
        format!(
            "{}\n{}\n",
            lines[0],
            r#"{"id":"bad","messages":[{"role":"user","content":["x",{"type":"image_url"}]}]}"#
        ),
    )
    .unwrap();
    let bad_out = dir.path().join("bad.jsonl");
    let o = common::run_mock(&input, &bad_out, &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains(
            "in.jsonl:2: field 'messages[0].content[1]': an image_url part needs 'image_url'"
        ),
        "{}",
        stderr(&o)
    );
    assert!(!bad_out.exists(), "nothing ran");
}

/// Against a provider that cannot take a part, the item fails before any
/// request reaches it.
#[test]
fn a_part_the_provider_cannot_take_fails_before_any_request() {
    let dir = tempfile::tempdir().unwrap();
    let mut wav = b"RIFF\0\0\0\0WAVEfmt \x10\0\0\0\x01\0\x01\0\x80\x3e\0\0\0\x7d\0\0".to_vec();
    wav.resize(2_000, 0);
    std::fs::write(dir.path().join("n.wav"), &wav).unwrap();
    std::fs::write(dir.path().join("a.png"), png(7)).unwrap();
    let input = dir.path().join("in.csv");
    std::fs::write(&input, "id,file\naudio,n.wav\nimage,a.png\n").unwrap();
    let out = dir.path().join("out.jsonl");
    let mock = Mock::start(&[]);
    let o = abl()
        .env("ANTHROPIC_API_KEY", TEST_KEY)
        .args([
            "run",
            input.to_str().unwrap(),
            "--model",
            "anthropic:claude-3-5-haiku",
        ])
        .args([
            "--base-url",
            &mock.url,
            "--template",
            "What is it?",
            "--attach",
            "file",
        ])
        .args(["-o", out.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let recs = records(&out);
    let audio = output_of(&recs, "audio");
    assert_eq!(audio["error"]["category"], "client_error");
    assert!(
        audio["error"]["message"]
            .as_str()
            .unwrap()
            .ends_with("n.wav): Anthropic does not take audio parts (audio/wav) (Anthropic takes images and PDFs)"),
        "{audio}"
    );
    assert_eq!(
        output_of(&recs, "image")["output"],
        format!(
            "What is it?\n[parts: image/png sha256:{}]",
            sha256_hex(&png(7))
        )
    );
    let stats = mock.get("/stats");
    assert_eq!(stats["requests"], 1, "only the image was sent");
    assert_eq!(stats["parts_inline"], 1);
}

/// A checkpoint knows each file by the hash of its bytes: a rerun replays
/// the unchanged ones, reruns the one whose file changed, and the
/// checkpoint never holds the bytes.
#[test]
fn a_checkpoint_reruns_only_the_item_whose_file_changed_and_holds_no_bytes() {
    use base64::Engine as _;
    let dir = tempfile::tempdir().unwrap();
    let mut csv = vec!["id,img".to_owned()];
    for i in 0..4u8 {
        std::fs::write(dir.path().join(format!("{i}.png")), png(i)).unwrap();
        csv.push(format!("{i},{i}.png"));
    }
    let csv = csv.join("\n") + "\n";
    let input = dir.path().join("in.csv");
    std::fs::write(&input, csv).unwrap();
    let cp = dir.path().join("run.sqlite");
    let run = |out: &Path| {
        common::run_mock(
            &input,
            out,
            &[
                "--template",
                "Describe",
                "--attach",
                "img",
                "--checkpoint",
                cp.to_str().unwrap(),
            ],
        )
    };
    let first = dir.path().join("first.jsonl");
    assert!(run(&first).status.success());
    std::fs::write(dir.path().join("2.png"), png(42)).unwrap();
    let second = dir.path().join("second.jsonl");
    let o = run(&second);
    assert!(o.status.success(), "{}", stderr(&o));
    let recs = records(&second);
    for r in &recs {
        let changed = r["id"] == "2";
        assert_eq!(r["replayed"].as_bool().unwrap_or(false), !changed, "{r}");
    }
    assert_eq!(
        output_of(&recs, "2")["output"],
        format!(
            "Describe\n[parts: image/png sha256:{}]",
            sha256_hex(&png(42))
        )
    );
    let stored = std::fs::read(&cp).unwrap();
    let b64 = base64::engine::general_purpose::STANDARD.encode(png(1));
    let needle = &b64.as_bytes()[40..80];
    assert!(
        !stored.windows(needle.len()).any(|w| w == needle),
        "the checkpoint holds no image bytes"
    );
}

/// The README's examples run as shown, and every output names the hash of
/// its own file.
#[test]
fn the_readme_examples_run() {
    let dir = tempfile::tempdir().unwrap();
    let ex = common::examples().join("attachments");
    let out = dir.path().join("totals.jsonl");
    let o = abl()
        .arg("run")
        .arg(ex.join("invoices.csv"))
        .args([
            "--template",
            "Extract the total of this invoice",
            "--attach",
            "pdf_path",
        ])
        .arg("--schema")
        .arg(ex.join("invoice.schema.json"))
        .args(["--model", "mock:echo", "-o", out.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let recs = records(&out);
    assert_eq!(recs.len(), 3);
    assert!(
        recs.iter().all(|r| r["output"]["total"].is_number()),
        "{recs:?}"
    );
    let out = dir.path().join("colours.jsonl");
    let o = common::run_mock(&ex.join("photos.jsonl"), &out, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let recs = records(&out);
    for (id, file) in [("red", "photos/red.png"), ("teal", "photos/teal.png")] {
        let want = sha256_hex(&std::fs::read(ex.join(file)).unwrap());
        let got = output_of(&recs, id)["output"].as_str().unwrap();
        assert!(
            got.ends_with(&format!("[parts: image/png sha256:{want}]")),
            "{got}"
        );
    }
    assert!(
        output_of(&recs, "remote")["output"]
            .as_str()
            .unwrap()
            .contains("url:https://")
    );
}
