//! `gpt2 watermark keygen|detect`.

use crate::input::read_text;
use anyhow::{ensure, Context, Result};
use gpt2_model::Tokenizer;
use gpt2_provenance::watermark::{detect, Prf};
use gpt2_provenance::watermark_key::{KeyParams, Scheme, Seeding, WatermarkKey};
use rand::RngCore;
use std::io::Write;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Sub,
}

#[derive(clap::Subcommand)]
enum Sub {
    /// Write a new secret key (JSON, readable by its owner only) and print its id.
    Keygen {
        #[arg(long)]
        out: String,
        #[arg(long, value_enum, default_value = "kgw")]
        scheme: SchemeArg,
        #[arg(long, value_enum, default_value = "left-hash")]
        seeding: SeedingArg,
        /// KGW: green fraction of the vocabulary.
        #[arg(long, default_value_t = 0.25)]
        gamma: f64,
        /// KGW: bias added to green logits.
        #[arg(long, default_value_t = 2.0)]
        delta: f32,
        /// h: preceding tokens that seed each step.
        #[arg(long, default_value_t = 1)]
        context: usize,
    },
    /// Test a text for the watermark of one or more keys (one result per key,
    /// so a verifier can say which key matched).
    Detect {
        #[arg(long, required = true)]
        key: Vec<String>,
        /// The prompt the text continued: context for its first tokens, not scored.
        #[arg(long, default_value = "")]
        prompt: String,
        /// Text file; `-` or nothing reads stdin.
        file: Option<String>,
        /// z-score at or above which the text is called watermarked.
        #[arg(long, default_value_t = 4.0)]
        z_threshold: f64,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum SchemeArg {
    Kgw,
    Gumbel,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum SeedingArg {
    LeftHash,
    SelfHash,
}

pub fn run(a: Args) -> Result<()> {
    match a.command {
        Sub::Keygen {
            out,
            scheme,
            seeding,
            gamma,
            delta,
            context,
        } => {
            let params = KeyParams {
                scheme: match scheme {
                    SchemeArg::Kgw => Scheme::Kgw,
                    SchemeArg::Gumbel => Scheme::Gumbel,
                },
                seeding: match seeding {
                    SeedingArg::LeftHash => Seeding::LeftHash,
                    SeedingArg::SelfHash => Seeding::SelfHash,
                },
                gamma,
                delta,
                context_width: context,
            };
            WatermarkKey::validate_params(&params).map_err(anyhow::Error::msg)?;
            let mut secret = [0u8; 32];
            rand::rng().fill_bytes(&mut secret);
            let key = WatermarkKey::from_secret(secret, params);
            write_new_secret(&out, key.to_json().as_bytes())?;
            println!("{}", key.id);
            Ok(())
        }
        Sub::Detect {
            key,
            prompt,
            file,
            z_threshold,
            json,
        } => {
            let tok = Tokenizer::gpt2();
            let keys = key
                .iter()
                .map(|k| load_key(k))
                .collect::<Result<Vec<_>>>()?;
            let text = read_text(file.as_deref())?;
            let (prompt_ids, ids) = (tok.encode(&prompt)?, tok.encode(&text)?);
            for key in keys {
                let prf = Prf::new(key, tok.vocab_size());
                let d = detect(&prf, &prompt_ids, &ids, z_threshold);
                if json {
                    println!("{}", serde_json::to_string(&d)?);
                } else {
                    println!(
                        "{}: z = {:.2}, p = {:.3e}, {} of {} scored tokens {} (key {})",
                        d.decision,
                        d.z_score,
                        d.p_value,
                        (d.green_fraction * d.tokens_scored as f64).round(),
                        d.tokens_scored,
                        if prf.key().scheme == Scheme::Kgw {
                            "green"
                        } else {
                            "with r > 1/2"
                        },
                        d.key_id
                    );
                }
            }
            Ok(())
        }
    }
}

pub fn load_key(path: &str) -> Result<WatermarkKey> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the watermark key {path}"))?;
    Ok(WatermarkKey::from_json(&text, path)?)
}

/// Creates `path` for a secret: never overwrites, owner-only permissions.
fn write_new_secret(path: &str, bytes: &[u8]) -> Result<()> {
    ensure!(
        !std::path::Path::new(path).exists(),
        "{path} already exists; a key is never overwritten"
    );
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut f = options
        .open(path)
        .with_context(|| format!("creating {path}"))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .with_context(|| format!("writing {path}"))
}
