//! Many replicas, one gate: three `gpt2 serve` replicas on one PostgreSQL
//! (a throwaway cluster: Debian's initdb in a temporary directory, on a
//! loopback port) behind a real haproxy, and the state moved between a
//! directory and PostgreSQL. Skipped, with the reason printed, where
//! PostgreSQL or haproxy is not installed (`.ci/run` installs both).

mod common;

use common::server::*;
use common::*;
use gpt2_db::test_cluster::TestCluster;
use gpt2_db::PgTarget;
use gpt2_provenance::ledger::Ledger;
use serde_json::{json, Value};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn cluster() -> Option<TestCluster> {
    TestCluster::start()
        .map_err(|why| eprintln!("skipped: no PostgreSQL to test against: {why}"))
        .ok()
}

/// haproxy in front of `backends`, round robin, with health checks on
/// `/health` and retries of refused connections on another replica.
struct Haproxy {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Haproxy {
    fn start(backends: &[&str]) -> Result<Haproxy, String> {
        let bin = ["/usr/sbin/haproxy", "/usr/bin/haproxy"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .ok_or("haproxy is not installed (Debian package haproxy)")?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| e.to_string())?
            .port();
        let servers: String = backends
            .iter()
            .enumerate()
            .map(|(i, url)| {
                let addr = url.trim_start_matches("http://");
                format!("  server r{i} {addr} check inter 300ms fall 2 rise 1\n")
            })
            .collect();
        let config = format!(
            "global\n  maxconn 512\ndefaults\n  mode http\n  timeout connect 2s\n  \
             timeout client 60s\n  timeout server 60s\n  retries 3\n  option redispatch 1\n\
             frontend f\n  bind 127.0.0.1:{port}\n  default_backend b\n\
             backend b\n  balance roundrobin\n  option httpchk GET /health\n{servers}"
        );
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let cfg = dir.path().join("haproxy.cfg");
        std::fs::write(&cfg, config).map_err(|e| e.to_string())?;
        let child = Command::new(bin)
            .arg("-db")
            .arg("-f")
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("{bin}: {e}"))?;
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(10);
        let up = || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
                && get(&url, "/health", None).status == 200
        };
        while !up() {
            assert!(Instant::now() < deadline, "haproxy did not come up");
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(Haproxy {
            child,
            url,
            _dir: dir,
        })
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a client got for one completion.
#[derive(Debug, Clone)]
struct Answer {
    status: u16,
    /// The completion's text (200 only).
    text: Option<String>,
    /// Prompt and completion tokens (200 only).
    tokens: u64,
    retry_after: Option<String>,
    body: String,
}

type Answers = Vec<(Instant, Option<Answer>)>;

/// A completion through `url`; `None` where no HTTP answer came.
fn generate(url: &str, key: &str, seed: u64) -> Option<Answer> {
    let body = json!({"model": "tiny", "prompt": "Hello", "max_tokens": 20, "seed": seed});
    let r = try_post(
        url,
        "/v1/completions",
        Some(key),
        body.to_string().as_bytes(),
    )?;
    let (text, tokens) = if r.status == 200 {
        let v = r.json();
        (
            v["choices"][0]["text"].as_str().map(str::to_string),
            v["usage"]["total_tokens"].as_u64().unwrap_or(0),
        )
    } else {
        (None, 0)
    };
    Some(Answer {
        status: r.status,
        text,
        tokens,
        retry_after: r.retry_after,
        body: r.body,
    })
}

fn in_ledger(url: &str, texts: &[String]) -> Vec<String> {
    let mut ledger = Ledger::open_postgres(&PgTarget::parse(url).unwrap(), false).unwrap();
    texts
        .iter()
        .filter(|t| !t.is_empty())
        .filter(|t| !ledger.lookup(t).unwrap().iter().any(|m| m.exact))
        .cloned()
        .collect()
}

#[test]
fn three_replicas_behind_haproxy_share_one_gate() {
    let Some(pg) = cluster() else { return };
    let url = pg.url("gpt2");
    let replicas: Vec<Server> = (0..3)
        .map(|_| Server::start_on(std::path::Path::new(&url), &["--slots", "4"]))
        .collect();
    let urls: Vec<&str> = replicas.iter().map(|r| r.url.as_str()).collect();
    let lb = match Haproxy::start(&urls) {
        Ok(lb) => lb,
        Err(why) => return eprintln!("skipped: {why}"),
    };
    one_watermark_key_for_all(&replicas);
    revocation_reaches_every_replica(&replicas);
    text_from_a_is_found_through_c(&replicas);
    one_quota_under_48_clients(&lb, &replicas[0]);
    database_down_fails_closed_then_recovers(&lb, &replicas[0], &pg, &url);
    kill_9_under_load_loses_no_record(&lb, replicas, &url);
}

fn one_watermark_key_for_all(replicas: &[Server]) {
    let (_, key) = replicas[0].key("generate", "*", &[]);
    let ids: Vec<String> = replicas
        .iter()
        .map(|r| {
            let body = json!({"model": "tiny", "prompt": "Hi", "max_tokens": 4, "seed": 1});
            let v = complete(r, &key, body).json();
            v["provenance"]["watermark_key_id"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    assert!(!ids[0].is_empty(), "{ids:?}");
    assert!(ids.iter().all(|k| k == &ids[0]), "{ids:?}");
}

fn revocation_reaches_every_replica(replicas: &[Server]) {
    let (id, key) = replicas[0].key("generate", "*", &[]);
    for r in replicas {
        assert_eq!(generate(&r.url, &key, 1).unwrap().status, 200);
    }
    let state = replicas[0].state.to_str().unwrap();
    ok(run(&["keys", "revoke", "--state", state, &id]));
    for r in replicas {
        assert_eq!(generate(&r.url, &key, 2).unwrap().status, 401, "{}", r.url);
    }
}

fn text_from_a_is_found_through_c(replicas: &[Server]) {
    let (_, key) = replicas[0].key("generate,detect", "*", &[]);
    let text = generate(&replicas[0].url, &key, 7).unwrap().text.unwrap();
    let body = json!({"text": text}).to_string();
    let found = post(
        &replicas[2].url,
        "/v1/provenance/lookup",
        Some(&key),
        body.as_bytes(),
    );
    assert_eq!(found.status, 200, "{}", found.body);
    assert_eq!(found.json()["matches"][0]["exact"], true, "{}", found.body);
}

fn one_quota_under_48_clients(lb: &Haproxy, any: &Server) {
    let (id, key) = any.key("generate", "*", &["--tokens-per-day", "2000"]);
    let served = Arc::new(Mutex::new((0u64, Vec::new(), Vec::new())));
    let threads: Vec<_> = (0..48)
        .map(|i| {
            let (url, key, served) = (lb.url.clone(), key.clone(), served.clone());
            std::thread::spawn(move || {
                for j in 0..10 {
                    let a = generate(&url, &key, i * 100 + j).unwrap();
                    let mut s = served.lock().unwrap();
                    s.0 += a.tokens;
                    s.1.push(a.status);
                    if a.status != 200 && a.status != 429 {
                        s.2.push(a.body);
                    }
                    if a.status != 200 {
                        return;
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let (total, statuses, odd) = served.lock().unwrap().clone();
    assert!(odd.is_empty(), "{odd:?}");
    assert!(
        statuses.iter().all(|&s| s == 200 || s == 429),
        "{statuses:?}"
    );
    // One request is at most 1 prompt token + 20.
    assert!(
        total <= 2000 + 21,
        "served {total} tokens of a 2,000-token quota"
    );
    assert!(total >= 2000 - 21, "served only {total}");
    assert_eq!(charged(&audit_rows(any, Some(&id))), total);
}

/// Runs `clients` threads through the balancer for `for_how_long`;
/// returns every answer with the time it came.
fn load(
    lb: &Haproxy,
    key: &str,
    clients: u64,
    for_how_long: Duration,
) -> std::thread::JoinHandle<Answers> {
    let (url, key) = (lb.url.clone(), key.to_string());
    std::thread::spawn(move || {
        let end = Instant::now() + for_how_long;
        let threads: Vec<_> = (0..clients)
            .map(|i| {
                let (url, key) = (url.clone(), key.clone());
                std::thread::spawn(move || {
                    let mut out = Vec::new();
                    let mut seed = i * 10_000;
                    while Instant::now() < end {
                        seed += 1;
                        out.push((Instant::now(), generate(&url, &key, seed)));
                    }
                    out
                })
            })
            .collect();
        threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect()
    })
}

fn texts(answers: &Answers) -> Vec<String> {
    answers
        .iter()
        .filter_map(|(_, a)| a.as_ref().and_then(|a| a.text.clone()))
        .collect()
}

fn database_down_fails_closed_then_recovers(
    lb: &Haproxy,
    any: &Server,
    pg: &TestCluster,
    url: &str,
) {
    let (_, key) = any.key("generate", "*", &[]);
    let running = load(lb, &key, 6, Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(1500));
    pg.stop().unwrap();
    let stopped = Instant::now();
    std::thread::sleep(Duration::from_millis(1500));
    pg.start_server().unwrap();
    let answers = running.join().unwrap();
    let answered: Vec<(&Instant, &Answer)> = answers
        .iter()
        .filter_map(|(t, a)| a.as_ref().map(|a| (t, a)))
        .collect();
    let refused: Vec<&Answer> = answered
        .iter()
        .filter(|(t, a)| **t > stopped && a.status == 503)
        .map(|(_, a)| *a)
        .collect();
    assert!(!refused.is_empty(), "no 503 while the database was down");
    for a in &refused {
        assert!(
            a.retry_after.is_some() && !a.body.contains("choices"),
            "{a:?}"
        );
    }
    let other: Vec<_> = answered
        .iter()
        .filter(|(_, a)| ![200, 503].contains(&a.status))
        .collect();
    assert!(other.is_empty(), "{other:?}");
    let missing = in_ledger(url, &texts(&answers));
    assert!(
        missing.is_empty(),
        "{} texts served without a record",
        missing.len()
    );
    // Service resumes without a restart.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if generate(&lb.url, &key, 999).unwrap().status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no recovery after the database came back"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn kill_9_under_load_loses_no_record(lb: &Haproxy, mut replicas: Vec<Server>, url: &str) {
    let (_, key) = replicas[0].key("generate", "*", &[]);
    let running = load(lb, &key, 8, Duration::from_secs(4));
    std::thread::sleep(Duration::from_millis(1500));
    // Child::kill is SIGKILL: no drain, no cleanup.
    replicas[1].child.kill().unwrap();
    let answers = running.join().unwrap();
    let ok = answers
        .iter()
        .filter(|(_, a)| a.as_ref().is_some_and(|a| a.status == 200))
        .count();
    assert!(ok > 10, "only {ok} completions under load");
    let missing = in_ledger(url, &texts(&answers));
    assert!(
        missing.is_empty(),
        "{} texts served without a record",
        missing.len()
    );
    drop(replicas.remove(1));
}

#[test]
fn a_state_moves_to_postgres_and_back_unchanged() {
    let Some(pg) = cluster() else { return };
    let url = pg.url("moved");
    let home = tempfile::tempdir().unwrap();
    let dir = home.path().join("state");
    let s = Server::start_on(&dir, &[]);
    let (key_id, key) = s.key("generate", "*", &["--tokens-per-day", "500"]);
    let body = json!({"model": "tiny", "prompt": "Hello", "max_tokens": 12, "seed": 3});
    let text = complete(&s, &key, body).json()["choices"][0]["text"]
        .as_str()
        .unwrap()
        .to_string();
    drop(s);
    let copy = |from: &str, to: &str| -> Value {
        serde_json::from_str(
            ok(run(&[
                "state", "copy", "--from", from, "--to", to, "--json",
            ]))
            .trim(),
        )
        .unwrap()
    };
    let there = copy(dir.to_str().unwrap(), &url);
    let back_dir = tempfile::tempdir().unwrap();
    let back = back_dir.path().join("state");
    let back_again = copy(&url, back.to_str().unwrap());
    assert_eq!(there, back_again);
    let rows = |t: &str| {
        there["tables"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["table"] == t)
            .unwrap()["rows"]
            .as_u64()
            .unwrap()
    };
    assert!(
        rows("keys") == 1 && rows("records") == 1 && rows("audit") >= 1,
        "{there}"
    );
    // The copies answer as the original did: the key, its usage, the
    // record, and the same watermark key file.
    let listed = ok(run(&["keys", "list", "--state", &url, "--json"]));
    assert!(listed.contains(&key_id), "{listed}");
    let text_file = back_dir.path().join("text.txt");
    std::fs::write(&text_file, &text).unwrap();
    let file = text_file.to_str().unwrap();
    let found = ok(run(&["ledger", "lookup", "--state", &url, "--json", file]));
    assert!(found.contains("\"exact\":true"), "{found}");
    assert_eq!(
        std::fs::read(dir.join("watermark.key")).unwrap(),
        std::fs::read(back.join("watermark.key")).unwrap()
    );
    // A server on the copy serves the same key and keeps counting its quota.
    let copy_server = Server::start_on(std::path::Path::new(&url), &[]);
    assert_eq!(generate(&copy_server.url, &key, 4).unwrap().status, 200);
    // A second copy into a state that holds something is refused, unwritten.
    fails_with(
        run(&[
            "state",
            "copy",
            "--from",
            dir.to_str().unwrap(),
            "--to",
            &url,
        ]),
        &["already holds", "nothing was written"],
    );
}

#[test]
fn bad_database_urls_are_one_line_errors() {
    for (url, says) in [
        (
            "postgres://u:s3cret@127.0.0.1:notaport/db",
            "not a valid PostgreSQL URL",
        ),
        ("postgres://u:s3cret@127.0.0.1:1/db", "127.0.0.1:1"),
        ("postgres://u@127.0.0.1:1/db?schema=Bad-Name", "schema"),
    ] {
        let o = run(&["keys", "list", "--state", url]);
        fails_with(o, &[says]);
    }
    let o = run(&[
        "keys",
        "list",
        "--state",
        "postgres://u:s3cret@127.0.0.1:1/db",
    ]);
    assert!(!stderr(&o).contains("s3cret"), "{}", stderr(&o));
    let Some(pg) = cluster() else { return };
    let wrong = pg
        .url("x")
        .replace(gpt2_db::test_cluster::PASSWORD, "wrong");
    fails_with(
        run(&["keys", "list", "--state", &wrong]),
        &["password authentication failed"],
    );
}
