//! A Hugging Face hub id found in (or downloaded into) the standard hub
//! cache.
//!
//! Cache layout, as `huggingface_hub` writes it:
//! `$HF_HUB_CACHE` (default `$HF_HOME/hub`, `$HF_HOME` default
//! `~/.cache/huggingface`) / `models--{org}--{name}` / `refs/{revision}`
//! (a commit hash), `snapshots/{commit}/{file}` (a link to
//! `../../blobs/{etag}`), `blobs/{etag}`.
//!
//! Downloads follow the hub's protocol: a HEAD request without following
//! absolute redirects gives the commit (`X-Repo-Commit`), the blob's etag
//! (`X-Linked-Etag` or `ETag`) and size (`X-Linked-Size` or
//! `Content-Length`); then a GET fetches the file into a temporary blob,
//! which is checked (size, and SHA-256 for LFS files whose etag is one)
//! and renamed into place. The endpoint is `$HF_ENDPOINT` (default
//! `https://huggingface.co`), `$HF_TOKEN` is sent when set, and
//! `HF_HUB_OFFLINE=1` forbids the network.

use gpt2_model::atomic::write_atomic;
use gpt2_model::{ModelError, Result};
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// The files a GPT-2 checkpoint needs.
pub const CHECKPOINT_FILES: [&str; 2] = ["config.json", "model.safetensors"];

pub fn hub_cache_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("HF_HUB_CACHE") {
        return Some(PathBuf::from(dir));
    }
    let home = match std::env::var_os("HF_HOME") {
        Some(h) => PathBuf::from(h),
        None => PathBuf::from(std::env::var_os("HOME")?)
            .join(".cache")
            .join("huggingface"),
    };
    Some(home.join("hub"))
}

pub fn endpoint() -> String {
    std::env::var("HF_ENDPOINT")
        .ok()
        .filter(|e| !e.is_empty())
        .unwrap_or_else(|| "https://huggingface.co".to_string())
        .trim_end_matches('/')
        .to_string()
}

fn offline() -> bool {
    std::env::var("HF_HUB_OFFLINE")
        .is_ok_and(|v| matches!(v.as_str(), "1" | "true" | "TRUE" | "yes" | "ON" | "on"))
}

/// Whether `spec` has the shape of a hub id: `name` or `org/name`, each part
/// of letters, digits, `-`, `_` and `.`, not starting with `.`; an optional
/// `@revision` suffix.
pub fn looks_like_hub_id(spec: &str) -> bool {
    let id = spec.split('@').next().unwrap_or("");
    let parts: Vec<&str> = id.split('/').collect();
    !id.is_empty()
        && parts.len() <= 2
        && parts.iter().all(|p| {
            !p.is_empty()
                && !p.starts_with('.')
                && p.len() <= 96
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        })
}

/// A hub repository reference: id and revision (branch, tag or commit).
#[derive(Debug, Clone)]
pub struct HubRef {
    pub repo_id: String,
    pub revision: String,
}

impl HubRef {
    pub fn parse(spec: &str) -> HubRef {
        match spec.split_once('@') {
            Some((id, rev)) if !rev.is_empty() => HubRef {
                repo_id: id.to_string(),
                revision: rev.to_string(),
            },
            _ => HubRef {
                repo_id: spec.trim_end_matches('@').to_string(),
                revision: "main".to_string(),
            },
        }
    }

    fn repo_dir(&self, cache: &Path) -> PathBuf {
        cache.join(format!("models--{}", self.repo_id.replace('/', "--")))
    }
}

/// The snapshot directory of a hub checkpoint, downloading what is missing.
pub fn resolve_hub(spec: &str) -> Result<PathBuf> {
    let err = |reason: String| ModelError::Resolve {
        spec: spec.to_string(),
        reason,
    };
    let cache = hub_cache_dir()
        .ok_or_else(|| err("neither HF_HUB_CACHE, HF_HOME nor HOME is set".into()))?;
    let hub = HubRef::parse(spec);
    if let Some(dir) = cached_snapshot(&hub, &cache) {
        return Ok(dir);
    }
    let where_ = hub.repo_dir(&cache);
    if offline() {
        return Err(err(format!(
            "not in the hub cache at {} and HF_HUB_OFFLINE is set",
            where_.display()
        )));
    }
    download(&hub, &cache).map_err(|e| {
        err(format!(
            "not in the hub cache at {}, and downloading from {} failed: {e}",
            where_.display(),
            endpoint()
        ))
    })
}

/// A complete snapshot already in the cache, if any.
fn cached_snapshot(hub: &HubRef, cache: &Path) -> Option<PathBuf> {
    let repo = hub.repo_dir(cache);
    let commit = if is_commit_hash(&hub.revision) {
        hub.revision.clone()
    } else {
        std::fs::read_to_string(repo.join("refs").join(&hub.revision))
            .ok()?
            .trim()
            .to_string()
    };
    let dir = repo.join("snapshots").join(commit);
    CHECKPOINT_FILES
        .iter()
        .all(|f| dir.join(f).is_file())
        .then_some(dir)
}

fn is_commit_hash(s: &str) -> bool {
    s.len() == 40 && s.chars().all(|c| c.is_ascii_hexdigit())
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .max_redirects(0)
        .http_status_as_error(false)
        .timeout_connect(Some(std::time::Duration::from_secs(10)))
        .build()
        .into()
}

struct FileMeta {
    commit: String,
    etag: String,
    size: Option<u64>,
    location: String,
}

fn header(resp: &ureq::http::Response<ureq::Body>, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(|s| {
            s.trim()
                .trim_start_matches("W/")
                .trim_matches('"')
                .to_string()
        })
}

fn with_auth<B>(req: ureq::RequestBuilder<B>) -> ureq::RequestBuilder<B> {
    match std::env::var("HF_TOKEN") {
        Ok(token) if !token.is_empty() => req.header("Authorization", format!("Bearer {token}")),
        _ => req,
    }
}

/// HEAD on the resolve URL; relative redirects (renamed repos) are
/// followed, absolute ones (the CDN holding the blob) are where to GET.
fn file_meta(
    agent: &ureq::Agent,
    hub: &HubRef,
    file: &str,
) -> std::result::Result<FileMeta, String> {
    let base = endpoint();
    let mut url = format!("{base}/{}/resolve/{}/{file}", hub.repo_id, hub.revision);
    for _ in 0..5 {
        let resp = with_auth(agent.head(&url))
            .call()
            .map_err(|e| format!("{url}: {e}"))?;
        let status = resp.status().as_u16();
        let commit = header(&resp, "x-repo-commit");
        let etag = header(&resp, "x-linked-etag").or_else(|| header(&resp, "etag"));
        let size = header(&resp, "x-linked-size")
            .or_else(|| header(&resp, "content-length"))
            .and_then(|s| s.parse().ok());
        match status {
            200 => {}
            301..=308 => {
                let location = header(&resp, "location")
                    .ok_or_else(|| format!("{url}: redirect without Location"))?;
                if location.starts_with('/') {
                    url = format!("{base}{location}");
                    continue;
                }
                if let (Some(commit), Some(etag)) = (commit, etag) {
                    return Ok(FileMeta {
                        commit,
                        etag,
                        size,
                        location,
                    });
                }
                return Err(format!("{url}: redirect without X-Repo-Commit/ETag"));
            }
            401 | 403 => {
                return Err(format!(
                    "{url}: HTTP {status} (private or gated repository; set HF_TOKEN)"
                ))
            }
            404 => {
                return Err(format!(
                    "{url}: HTTP 404 (no such repository, revision or file)"
                ))
            }
            _ => return Err(format!("{url}: HTTP {status}")),
        }
        let commit =
            commit.ok_or_else(|| format!("{url}: response has no X-Repo-Commit header"))?;
        let etag = etag.ok_or_else(|| format!("{url}: response has no ETag header"))?;
        return Ok(FileMeta {
            commit,
            etag,
            size,
            location: url,
        });
    }
    Err(format!("{url}: too many redirects"))
}

fn download(hub: &HubRef, cache: &Path) -> std::result::Result<PathBuf, String> {
    let agent = agent();
    let repo = hub.repo_dir(cache);
    let mut snapshot = None;
    for file in CHECKPOINT_FILES {
        let meta = file_meta(&agent, hub, file)?;
        if meta.etag.contains('/')
            || meta.etag.contains("..")
            || meta.commit.contains('/')
            || meta.commit.contains("..")
        {
            return Err(format!("{file}: server sent an unusable etag or commit"));
        }
        let dir = repo.join("snapshots").join(&meta.commit);
        let blob = repo.join("blobs").join(&meta.etag);
        if !blob.is_file() {
            fetch_blob(&agent, &meta, &blob).map_err(|e| format!("{file}: {e}"))?;
        }
        link_into_snapshot(&blob, &dir.join(file), &meta.etag)
            .map_err(|e| format!("{}: {e}", dir.display()))?;
        snapshot = Some((dir, meta.commit));
    }
    let (dir, commit) = snapshot.ok_or("no files requested")?;
    if !is_commit_hash(&hub.revision) {
        let refs = repo.join("refs");
        std::fs::create_dir_all(&refs).map_err(|e| format!("{}: {e}", refs.display()))?;
        write_atomic(&refs.join(&hub.revision), commit.as_bytes())
            .map_err(|e| format!("{}: {e}", refs.display()))?;
    }
    Ok(dir)
}

fn fetch_blob(
    agent: &ureq::Agent,
    meta: &FileMeta,
    blob: &Path,
) -> std::result::Result<(), String> {
    let dir = blob.parent().ok_or("blob path has no parent")?;
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let resp = with_auth(agent.get(&meta.location))
        .call()
        .map_err(|e| format!("{}: {e}", meta.location))?;
    if resp.status().as_u16() != 200 {
        return Err(format!(
            "{}: HTTP {}",
            meta.location,
            resp.status().as_u16()
        ));
    }
    let tmp = blob.with_extension("incomplete");
    let mut out = std::fs::File::create(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
    let mut reader = resp.into_body().into_with_config().limit(u64::MAX).reader();
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = reader
            .read(&mut buf)
            .map_err(|e| format!("reading {}: {e}", meta.location))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n])
            .map_err(|e| format!("{}: {e}", tmp.display()))?;
        total += n as u64;
    }
    out.sync_all()
        .map_err(|e| format!("{}: {e}", tmp.display()))?;
    drop(out);
    let check = || -> std::result::Result<(), String> {
        if let Some(size) = meta.size {
            if size != total {
                return Err(format!("download truncated: got {total} of {size} bytes"));
            }
        }
        let is_sha256 = meta.etag.len() == 64 && meta.etag.chars().all(|c| c.is_ascii_hexdigit());
        if is_sha256 {
            let got = format!("{:x}", hasher.finalize());
            if !got.eq_ignore_ascii_case(&meta.etag) {
                return Err(format!(
                    "SHA-256 {got} does not match the hub's {}",
                    meta.etag
                ));
            }
        }
        Ok(())
    };
    if let Err(e) = check() {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, blob).map_err(|e| format!("{}: {e}", blob.display()))
}

fn link_into_snapshot(blob: &Path, target: &Path, etag: &str) -> std::io::Result<()> {
    if target.is_file() {
        return Ok(());
    }
    if let Some(dir) = target.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let _ = std::fs::remove_file(target);
    #[cfg(unix)]
    let linked = std::os::unix::fs::symlink(Path::new("../../blobs").join(etag), target);
    #[cfg(not(unix))]
    let linked: std::io::Result<()> = Err(std::io::Error::other(format!("no symlinks for {etag}")));
    linked.or_else(|_| std::fs::copy(blob, target).map(|_| ()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_id_shapes() {
        for ok in [
            "gpt2",
            "openai-community/gpt2-medium",
            "a_b.c/d-e@main",
            "gpt2@0123",
        ] {
            assert!(looks_like_hub_id(ok), "{ok}");
        }
        for bad in [
            "",
            "/abs/path",
            "./rel",
            "a/b/c",
            "../x",
            "a b",
            "a/.hidden",
        ] {
            assert!(!looks_like_hub_id(bad), "{bad}");
        }
        let r = HubRef::parse("org/name@v1");
        assert_eq!(
            (r.repo_id.as_str(), r.revision.as_str()),
            ("org/name", "v1")
        );
        assert_eq!(HubRef::parse("gpt2").revision, "main");
    }
}
