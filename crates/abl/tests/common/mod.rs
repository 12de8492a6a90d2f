//! What the CLI tests share: the built binary, the examples, an external
//! mock server, and reading what a run left behind.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead as _, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use serde_json::Value;

/// The `abl` binary, with no provider key in its environment.
pub fn abl() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_abl"));
    c.env_remove("OPENAI_API_KEY")
        .env_remove("ANTHROPIC_API_KEY")
        .env_remove("GEMINI_API_KEY")
        .env_remove("GOOGLE_API_KEY");
    for (k, _) in std::env::vars() {
        if k.starts_with("ABL_") {
            c.env_remove(k);
        }
    }
    c
}

/// `examples/`.
pub fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples")
}

/// Runs `abl ARGS`.
pub fn run(args: &[&str]) -> Output {
    abl().args(args).output().unwrap()
}

/// `abl run INPUT --model mock:echo -o OUT EXTRA…`
pub fn run_mock(input: &Path, out: &Path, extra: &[&str]) -> Output {
    let (input, out) = (input.to_str().unwrap(), out.to_str().unwrap());
    let mut args = vec!["run", input, "--model", "mock:echo", "-o", out];
    args.extend_from_slice(extra);
    run(&args)
}

/// The JSON lines of a file.
pub fn records(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Standard error as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The bytes of a file, or `None` if it does not exist (to check that a
/// file was left exactly as it was).
pub fn contents(path: &Path) -> Option<Vec<u8>> {
    std::fs::read(path).ok()
}

/// `abl mock-server ARGS` as a separate process; killed when dropped.
pub struct Mock {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
}

impl Drop for Mock {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Mock {
    /// Starts `abl mock-server ARGS`.
    pub fn start(args: &[&str]) -> Mock {
        let mut child = Command::new(env!("CARGO_BIN_EXE_abl"))
            .arg("mock-server")
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        let mut reader = std::io::BufReader::new(child.stdout.take().unwrap());
        reader.read_line(&mut line).unwrap();
        // Keep draining its stdout.
        std::thread::spawn(move || std::io::copy(&mut reader, &mut std::io::sink()));
        let url = line.trim().rsplit(' ').next().unwrap().to_owned();
        assert!(url.starts_with("http://127.0.0.1:"), "{line}");
        Mock { child, url }
    }

    /// `GET path` over plain HTTP/1.0; the JSON body.
    pub fn get(&self, path: &str) -> Value {
        let addr = self.url.trim_start_matches("http://");
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        serde_json::from_str(text.split("\r\n\r\n").nth(1).unwrap()).unwrap()
    }
}

/// Writes `n` JSONL items (`r00000`, …) to `path`.
pub fn write_input(path: &Path, n: usize) {
    use std::fmt::Write as _;
    let mut lines = String::new();
    for i in 0..n {
        let _ = writeln!(
            lines,
            "{{\"id\":\"r{i:05}\",\"prompt\":\"Summarize row {i} of the table in one line\"}}"
        );
    }
    std::fs::write(path, lines).unwrap();
}

/// The key the tests give runs against an external mock.
pub const TEST_KEY: &str = "sk-abl-test-key-0123456789";

/// `abl run INPUT --model openai:gpt-4o-mini` against `mock`, with
/// `-o OUT` and `extra` flags, a test key in its environment.
pub fn run_against(mock: &Mock, input: &Path, out: &Path, extra: &[&str]) -> Command {
    let mut c = abl();
    c.env("OPENAI_API_KEY", TEST_KEY)
        .args([
            "run",
            input.to_str().unwrap(),
            "--model",
            "openai:gpt-4o-mini",
            "--base-url",
            &format!("{}/v1", mock.url),
            "-o",
            out.to_str().unwrap(),
        ])
        .args(extra);
    c
}
