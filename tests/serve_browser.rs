//! The web page of `gpt2 serve` in a real browser: headless Chromium driven
//! over the WebDriver protocol (chromium-driver), typing a key and a
//! prompt, reading the streamed text, checking it, reading the GLTR
//! colouring, and saving a screenshot. Skipped, with the reason printed,
//! where chromium or chromedriver is not installed (`.ci/run` installs
//! Debian's `chromium` and `chromium-driver`).

mod common;

use common::*;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn find(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    for dir in std::env::split_paths(&path) {
        for n in names {
            let p = dir.join(n);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    None
}

struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into()
}

/// A WebDriver session.
struct Driver {
    base: String,
}

impl Drop for Driver {
    /// Ends the session, pass or fail, so chromedriver closes the browser.
    fn drop(&mut self) {
        let _ = agent().delete(&self.base).call();
    }
}

impl Driver {
    fn call(&self, method: &str, path: &str, body: Value) -> Value {
        let url = format!("{}{path}", self.base);
        let a = agent();
        let mut r = match method {
            "GET" => a.get(&url).call(),
            "DELETE" => a.delete(&url).call(),
            _ => a.post(&url).send(body.to_string().as_bytes()),
        }
        .expect("chromedriver answers");
        let v: Value = serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
        assert!(
            r.status().is_success(),
            "{method} {path}: {}",
            serde_json::to_string(&v).unwrap()
        );
        v["value"].clone()
    }

    fn element(&self, css: &str) -> String {
        let v = self.call(
            "POST",
            "/element",
            json!({"using": "css selector", "value": css}),
        );
        v["element-6066-11e4-a52e-4f735466cecf"]
            .as_str()
            .unwrap_or_else(|| panic!("no element {css}: {v}"))
            .to_string()
    }

    fn type_into(&self, css: &str, text: &str) {
        let e = self.element(css);
        self.call(
            "POST",
            &format!("/element/{e}/value"),
            json!({"text": text}),
        );
    }

    fn click(&self, css: &str) {
        let e = self.element(css);
        self.call("POST", &format!("/element/{e}/click"), json!({}));
    }

    fn script(&self, js: &str) -> Value {
        self.call("POST", "/execute/sync", json!({"script": js, "args": []}))
    }

    /// Waits until `#id` has `data-done` or shows an error.
    fn wait_done(&self, id: &str) {
        let start = Instant::now();
        loop {
            let v = self.script(&format!(
                "const e = document.getElementById('{id}'); return [e.dataset.done || '', e.className, e.textContent];"
            ));
            assert_ne!(v[1], "err", "the page reports an error: {}", v[2]);
            if v[0] == "1" {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "timed out: {}",
                v[2]
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn start_server(state: &Path) -> (Kill, String) {
    let mut child = gpt2()
        .args(["serve", "--addr", "127.0.0.1:0", "--state"])
        .arg(state)
        .arg("--model")
        .arg(format!("tiny={}", tiny_model().display()))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let url = lines
        .by_ref()
        .map_while(Result::ok)
        .find_map(|l| {
            l.split("listening on ")
                .nth(1)
                .map(|r| r.split_whitespace().next().unwrap().to_string())
        })
        .expect("the server prints its address");
    std::thread::spawn(move || for _ in lines {});
    (Kill(child), url)
}

#[test]
fn the_page_streams_text_and_colours_a_checked_text() {
    let Some(chromium) = find(&["chromium", "chromium-browser", "google-chrome"]) else {
        println!("skipped: no chromium on PATH (apt-get install chromium chromium-driver)");
        return;
    };
    let Some(driver_bin) = find(&["chromedriver"]) else {
        println!("skipped: no chromedriver on PATH (apt-get install chromium-driver)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let key = ok(run(&[
        "keys",
        "create",
        "--state",
        state.to_str().unwrap(),
        "--name",
        "browser",
        "--scopes",
        "generate,detect",
        "--models",
        "*",
    ]));
    let (_server, url) = start_server(&state);

    let port = free_port();
    let _driver = Kill(
        Command::new(&driver_bin)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let base = format!("http://127.0.0.1:{port}");
    let start = Instant::now();
    while agent().get(format!("{base}/status")).call().is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "chromedriver did not start"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let caps = json!({"capabilities": {"alwaysMatch": {"goog:chromeOptions": {
        "binary": chromium,
        "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1200,1600"],
    }}}});
    let mut r = agent()
        .post(format!("{base}/session"))
        .send(caps.to_string().as_bytes())
        .unwrap();
    let v: Value = serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
    let session = v["value"]["sessionId"]
        .as_str()
        .unwrap_or_else(|| panic!("no session: {v}"))
        .to_string();
    let d = Driver {
        base: format!("{base}/session/{session}"),
    };

    d.call("POST", "/url", json!({"url": url}));
    d.type_into("#key", key.trim());
    d.type_into("#prompt", "Once upon a time");
    d.script("document.getElementById('max-tokens').value = '40';");
    d.click("#generate");
    d.wait_done("gen-status");
    let generated = d.script("return document.getElementById('output').textContent;");
    let generated = generated.as_str().unwrap().to_string();
    assert!(!generated.is_empty(), "nothing was streamed");

    // Check the text the page just generated: coloured tokens, statistics,
    // the watermark, and the ledger match.
    d.type_into("#check-text", &generated);
    d.click("#check");
    d.wait_done("check-status");
    let classes = d.script(
        "return Array.from(document.querySelectorAll('#tokens span')).map(s => s.className);",
    );
    let classes: Vec<&str> = classes
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    // Counted on the text as the page holds it: typing through WebDriver
    // and a textarea's value can change it (a leading newline, a CR).
    let checked = d.script("return document.getElementById('check-text').value;");
    let n_tokens = gpt2_model::Tokenizer::gpt2()
        .encode(checked.as_str().unwrap())
        .unwrap()
        .len();
    assert_eq!(classes.len(), n_tokens);
    assert!(classes.iter().all(|c| ["b0", "b1", "b2", "b3"].contains(c)));
    let cell = |id: &str| {
        d.script(&format!(
            "return document.getElementById('{id}').textContent;"
        ))
        .as_str()
        .unwrap()
        .to_string()
    };
    assert!(cell("stats").contains("log-rank"), "{}", cell("stats"));
    assert!(cell("watermark").contains("z = "), "{}", cell("watermark"));
    assert!(cell("ledger").contains("exact copy"), "{}", cell("ledger"));

    let shot = d.call("GET", "/screenshot", json!({}));
    let png = base64_decode(shot.as_str().unwrap());
    assert!(png.starts_with(b"\x89PNG"));
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("serve-page.png");
    std::fs::write(&out, png).unwrap();
    println!("screenshot: {}", out.display());
}

/// Standard base64 (the screenshot), without a dependency.
fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        _ => 63,
    };
    let bytes: Vec<u8> = s
        .bytes()
        .filter(|&c| c != b'=' && !c.is_ascii_whitespace())
        .collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut acc = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            acc |= (val(c) as u32) << (18 - 6 * i);
        }
        let n = chunk.len() * 6 / 8;
        out.extend_from_slice(&acc.to_be_bytes()[1..1 + n]);
    }
    out
}
