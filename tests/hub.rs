//! `--model ORG/NAME` downloads through the Hugging Face hub protocol into
//! the standard cache, tested against a local server that speaks the hub's
//! URL layout: `/{repo}/resolve/{revision}/{file}`, `X-Repo-Commit`, `ETag`,
//! and for LFS files a redirect to a CDN URL with `X-Linked-Etag` (the
//! SHA-256) and `X-Linked-Size`.

mod common;
use common::*;
use sha2::{Digest, Sha256};
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

struct Hub {
    endpoint: String,
    requests: Arc<AtomicUsize>,
}

/// Serves `org/tiny` (the tiny checkpoint) and `org/corrupt` (whose CDN
/// returns bytes that do not match the advertised SHA-256).
fn start_hub() -> Hub {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let requests = Arc::new(AtomicUsize::new(0));
    let config = std::fs::read(tiny_model().join("config.json")).unwrap();
    let weights = std::fs::read(tiny_model().join("model.safetensors")).unwrap();
    let sha = format!("{:x}", Sha256::digest(&weights));
    let (count, base) = (requests.clone(), endpoint.clone());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            if reader.read_line(&mut line).is_err() {
                continue;
            }
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).map(|n| n == 0).unwrap_or(true) || h == "\r\n" {
                    break;
                }
            }
            count.fetch_add(1, Ordering::SeqCst);
            let mut parts = line.split_whitespace();
            let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            let (status, headers, body): (&str, Vec<String>, Vec<u8>) = match path {
                "/org/tiny/resolve/main/config.json" | "/org/corrupt/resolve/main/config.json" => (
                    "200 OK",
                    vec![
                        format!("X-Repo-Commit: {COMMIT}"),
                        "ETag: \"c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00\"".into(),
                    ],
                    config.clone(),
                ),
                "/org/tiny/resolve/main/model.safetensors"
                | "/org/corrupt/resolve/main/model.safetensors" => {
                    let cdn = if path.contains("corrupt") {
                        "corrupt"
                    } else {
                        "good"
                    };
                    (
                        "302 Found",
                        vec![
                            format!("Location: {base}/cdn/{cdn}"),
                            format!("X-Repo-Commit: {COMMIT}"),
                            format!("X-Linked-Etag: \"{sha}\""),
                            format!("X-Linked-Size: {}", weights.len()),
                        ],
                        Vec::new(),
                    )
                }
                "/cdn/good" => ("200 OK", vec![], weights.clone()),
                "/cdn/corrupt" => {
                    let mut bad = weights.clone();
                    bad[1000] ^= 1;
                    ("200 OK", vec![], bad)
                }
                _ => ("404 Not Found", vec![], b"not found".to_vec()),
            };
            let mut head = format!(
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n",
                body.len()
            );
            for h in headers {
                head.push_str(&h);
                head.push_str("\r\n");
            }
            head.push_str("\r\n");
            let _ = stream.write_all(head.as_bytes());
            if method != "HEAD" {
                let _ = stream.write_all(&body);
            }
        }
    });
    Hub { endpoint, requests }
}

fn score(hub: &Hub, home: &std::path::Path, model: &str, offline: bool) -> std::process::Output {
    let mut c = gpt2();
    let text = fixtures().join("sample.txt");
    c.args(["score", "--model", model, "--json", text.to_str().unwrap()])
        .env("HF_ENDPOINT", &hub.endpoint)
        .env("HF_HOME", home);
    if offline {
        c.env("HF_HUB_OFFLINE", "1");
    }
    c.output().unwrap()
}

#[test]
fn downloads_into_the_hub_cache_then_works_offline() {
    let hub = start_hub();
    let home = tempfile::tempdir().unwrap();
    ok(score(&hub, home.path(), "org/tiny", false));
    let repo = home.path().join("hub/models--org--tiny");
    assert_eq!(
        std::fs::read_to_string(repo.join("refs/main")).unwrap(),
        COMMIT
    );
    let snapshot = repo.join("snapshots").join(COMMIT);
    let link = std::fs::read_link(snapshot.join("model.safetensors")).unwrap();
    assert!(link.starts_with("../../blobs"), "{link:?}");
    assert_eq!(
        std::fs::read(snapshot.join("model.safetensors")).unwrap(),
        std::fs::read(tiny_model().join("model.safetensors")).unwrap()
    );
    let served = hub.requests.load(Ordering::SeqCst);
    ok(score(&hub, home.path(), "org/tiny", true));
    ok(score(&hub, home.path(), "org/tiny", false));
    assert_eq!(
        hub.requests.load(Ordering::SeqCst),
        served,
        "a cached model needs no requests"
    );
}

#[test]
fn a_corrupt_download_is_rejected_and_not_cached() {
    let hub = start_hub();
    let home = tempfile::tempdir().unwrap();
    fails_with(
        score(&hub, home.path(), "org/corrupt", false),
        &["org/corrupt", "SHA-256"],
    );
    let blobs = home.path().join("hub/models--org--corrupt/blobs");
    let left: Vec<_> = std::fs::read_dir(&blobs)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(
        left.iter()
            .all(|n| n.to_string_lossy().starts_with("c0ffee")),
        "only the config blob may remain: {left:?}"
    );
}

#[test]
fn an_unknown_repository_names_the_404() {
    let hub = start_hub();
    let home = tempfile::tempdir().unwrap();
    fails_with(
        score(&hub, home.path(), "org/nothing-here", false),
        &["org/nothing-here", "404"],
    );
}
