//! A `gpt2 serve` process on a free loopback port, and an HTTP client for
//! it: what the server's end-to-end tests share.

use super::*;
use gpt2_provenance::ledger::Ledger;
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Stdio};

pub struct Server {
    pub child: Child,
    pub url: String,
    pub state: PathBuf,
    _dir: Option<tempfile::TempDir>,
}

impl Server {
    /// Starts `gpt2 serve` on a free port with the tiny model served as
    /// `tiny` and `tiny2`, plus `extra` arguments.
    pub fn start(extra: &[&str]) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Server::start_on(&dir.path().join("state"), extra);
        s._dir = Some(dir);
        s
    }

    /// As `start`, on the state directory `state` (which the caller keeps).
    pub fn start_on(state: &std::path::Path, extra: &[&str]) -> Server {
        let state = state.to_path_buf();
        let tiny = tiny_model();
        let mut child = gpt2()
            .args(["serve", "--addr", "127.0.0.1:0", "--state"])
            .arg(&state)
            .arg("--model")
            .arg(format!("tiny={}", tiny.display()))
            .arg("--model")
            .arg(format!("tiny2={}", tiny.display()))
            .args(["--threads", "2"])
            .args(extra)
            .stderr(Stdio::piped())
            .spawn()
            .expect("gpt2 serve starts");
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let mut url = None;
        for line in lines.by_ref() {
            let line = line.unwrap();
            if let Some(rest) = line.split("listening on ").nth(1) {
                url = Some(rest.split_whitespace().next().unwrap().to_string());
                break;
            }
            assert!(!line.contains("panicked"), "{line}");
        }
        // Keep draining stderr so the server never blocks on a full pipe;
        // its errors go to the test's output, shown when a test fails.
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                if line.starts_with("error") || line.contains("panicked") {
                    eprintln!("server: {line}");
                }
            }
        });
        Server {
            child,
            url: url.expect("the server prints its address"),
            state,
            _dir: None,
        }
    }

    /// Creates a key with these scopes and models; returns (id, secret).
    pub fn key(&self, scopes: &str, models: &str, extra: &[&str]) -> (String, String) {
        let state = self.state.to_str().unwrap();
        let mut args = vec!["keys", "create", "--state", state, "--name", "test"];
        args.extend(["--scopes", scopes, "--models", models, "--json"]);
        args.extend(extra);
        let out = ok(run(&args));
        let v: Value = serde_json::from_str(out.trim()).unwrap();
        (
            v["id"].as_str().unwrap().to_string(),
            v["key"].as_str().unwrap().to_string(),
        )
    }

    pub fn admin(&self) -> String {
        self.key("generate,score,detect,admin", "*", &[]).1
    }

    pub fn ledger(&self) -> Ledger {
        Ledger::open(self.state.join("ledger.sqlite")).unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into()
}

pub struct Reply {
    pub status: u16,
    pub retry_after: Option<String>,
    pub body: String,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }

    /// Asserts an OpenAI-style error with this status.
    pub fn error(&self, status: u16) -> Value {
        assert_eq!(self.status, status, "{}", self.body);
        let v = self.json();
        assert!(v["error"]["message"].is_string(), "{v}");
        assert!(v["error"]["type"].is_string(), "{v}");
        v
    }
}

pub fn post(url: &str, path: &str, key: Option<&str>, body: &[u8]) -> Reply {
    let mut req = agent()
        .post(format!("{url}{path}"))
        .header("Content-Type", "application/json");
    if let Some(k) = key {
        req = req.header("Authorization", format!("Bearer {k}"));
    }
    reply(req.send(body).expect("the server answers"))
}

pub fn get(url: &str, path: &str, key: Option<&str>) -> Reply {
    let mut req = agent().get(format!("{url}{path}"));
    if let Some(k) = key {
        req = req.header("Authorization", format!("Bearer {k}"));
    }
    reply(req.call().expect("the server answers"))
}

/// As `post`, but `None` where no HTTP answer came (a server killed, a
/// connection cut).
pub fn try_post(url: &str, path: &str, key: Option<&str>, body: &[u8]) -> Option<Reply> {
    let mut req = agent()
        .post(format!("{url}{path}"))
        .header("Content-Type", "application/json");
    if let Some(k) = key {
        req = req.header("Authorization", format!("Bearer {k}"));
    }
    req.send(body).ok().map(reply)
}

/// The audit rows of the server's state (of one key), newest first.
pub fn audit_rows(s: &Server, key_id: Option<&str>) -> Vec<Value> {
    let state = s.state.to_str().unwrap();
    let mut args = vec!["audit", "--state", state, "--json", "--limit", "100000"];
    if let Some(k) = key_id {
        args.extend(["--key", k]);
    }
    ok(run(&args))
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Prompt and completion tokens charged over `rows`.
pub fn charged(rows: &[Value]) -> u64 {
    rows.iter()
        .map(|r| r["prompt_tokens"].as_u64().unwrap() + r["completion_tokens"].as_u64().unwrap())
        .sum()
}

pub fn reply(mut r: ureq::http::Response<ureq::Body>) -> Reply {
    Reply {
        status: r.status().as_u16(),
        retry_after: r
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_string()),
        body: r.body_mut().read_to_string().unwrap(),
    }
}

pub fn complete(s: &Server, key: &str, body: Value) -> Reply {
    post(
        &s.url,
        "/v1/completions",
        Some(key),
        body.to_string().as_bytes(),
    )
}

/// The `data:` payloads of an event stream.
pub fn events(body: &str) -> Vec<String> {
    body.split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .map(str::to_string)
        .collect()
}
