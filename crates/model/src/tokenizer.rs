//! GPT-2's byte-level BPE, through tiktoken-rs's embedded `r50k_base`
//! (the same ranks and split pattern as OpenAI's tiktoken `gpt2` encoding).
//!
//! Text is Unicode: the CLI rejects input that is not valid UTF-8, naming the
//! offset of the first bad byte, rather than guessing. Decoding is exact at
//! the byte level ([`Tokenizer::decode_bytes`]); [`Tokenizer::decode`]
//! replaces byte sequences that are not valid UTF-8 (a token sequence may
//! stop inside a character) by U+FFFD, as tiktoken's `decode` does.
//! `<|endoftext|>` is an ordinary string unless the caller asks for special
//! tokens ([`Tokenizer::encode_with_special`]).

use crate::config::END_OF_TEXT;
use crate::error::{ModelError, Result};
use std::sync::OnceLock;
use tiktoken_rs::CoreBPE;

pub const END_OF_TEXT_STR: &str = "<|endoftext|>";

#[derive(Clone, Copy)]
pub struct Tokenizer {
    bpe: &'static CoreBPE,
}

impl Tokenizer {
    /// GPT-2's tokenizer (built once per process, about 0.1 s).
    pub fn gpt2() -> Tokenizer {
        Tokenizer {
            bpe: tiktoken_rs::r50k_base_singleton(),
        }
    }

    pub fn vocab_size(&self) -> usize {
        crate::config::GPT2_VOCAB_SIZE
    }

    /// Token ids of `text`; `<|endoftext|>` in the text is encoded as the
    /// characters it is made of.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        self.guard(|| self.bpe.encode_ordinary(text))
    }

    /// Token ids of `text`, with `<|endoftext|>` recognised as id 50256.
    pub fn encode_with_special(&self, text: &str) -> Result<Vec<u32>> {
        self.guard(|| self.bpe.encode_with_special_tokens(text))
    }

    /// Validates UTF-8 (naming the first bad offset), then encodes.
    pub fn encode_bytes(&self, bytes: &[u8]) -> Result<Vec<u32>> {
        let text = std::str::from_utf8(bytes).map_err(|e| ModelError::InvalidUtf8 {
            offset: e.valid_up_to(),
        })?;
        self.encode(text)
    }

    /// Token ids of any bytes: valid UTF-8 runs are encoded as text, and
    /// each byte that is not valid UTF-8 becomes its single-byte token, so
    /// `decode_bytes` gives the input back. Also returns how many bytes
    /// were invalid.
    pub fn encode_any_bytes(&self, mut bytes: &[u8]) -> Result<(Vec<u32>, usize)> {
        let mut ids = Vec::new();
        let mut invalid = 0;
        while !bytes.is_empty() {
            let (valid, bad) = match std::str::from_utf8(bytes) {
                Ok(text) => (text, 0),
                Err(e) => {
                    let bad = e.error_len().unwrap_or(bytes.len() - e.valid_up_to());
                    // invariant: from_utf8 vouched for the bytes before valid_up_to.
                    let text = std::str::from_utf8(&bytes[..e.valid_up_to()]).unwrap_or_default();
                    (text, bad)
                }
            };
            ids.extend(self.encode(valid)?);
            for &b in &bytes[valid.len()..valid.len() + bad] {
                ids.push(single_byte_token(b));
            }
            invalid += bad;
            bytes = &bytes[valid.len() + bad..];
        }
        Ok((ids, invalid))
    }

    /// The exact bytes of a token sequence.
    pub fn decode_bytes(&self, ids: &[u32]) -> Result<Vec<u8>> {
        self.bpe.decode_bytes(ids).map_err(|e| {
            ModelError::Tokenizer(format!("token id {} is not in GPT-2's vocabulary", e.token))
        })
    }

    /// The text of a token sequence; invalid UTF-8 becomes U+FFFD.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        Ok(String::from_utf8_lossy(&self.decode_bytes(ids)?).into_owned())
    }

    /// The bytes of one token, from a table built once (no allocation per
    /// call, for the decode loop); `None` for an id outside the vocabulary.
    pub fn token_bytes(&self, id: u32) -> Option<&'static [u8]> {
        static TABLE: OnceLock<Vec<Box<[u8]>>> = OnceLock::new();
        let table = TABLE.get_or_init(|| {
            let bpe = tiktoken_rs::r50k_base_singleton();
            (0..crate::config::GPT2_VOCAB_SIZE as u32)
                .map(|i| {
                    bpe.decode_bytes(&[i])
                        .unwrap_or_default()
                        .into_boxed_slice()
                })
                .collect()
        });
        table.get(id as usize).map(|b| &b[..])
    }

    /// One token's text for display: its bytes, invalid UTF-8 as U+FFFD.
    pub fn token_text(&self, id: u32) -> String {
        self.token_bytes(id)
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .unwrap_or_default()
    }

    /// GPT-2's vocabulary in id order, each token written in the byte-level
    /// alphabet of `encoder.json` and GGUF files ("Ġthe" for " the").
    pub fn byte_level_tokens(&self) -> &'static [String] {
        static TABLE: OnceLock<Vec<String>> = OnceLock::new();
        TABLE.get_or_init(|| {
            (0..crate::config::GPT2_VOCAB_SIZE as u32)
                .map(|id| match id {
                    END_OF_TEXT => END_OF_TEXT_STR.to_string(),
                    _ => byte_level(self.token_bytes(id).unwrap_or_default()),
                })
                .collect()
        })
    }

    /// GPT-2's 50,000 merges in rank order ("Ġ t"), as `vocab.bpe` and GGUF
    /// files hold them. Merge `i` makes token `256 + i`; its two halves are
    /// where byte-pair merging that token's bytes, with only the merges
    /// ranked before it, stops (how tiktoken's ranks are turned back into
    /// merges).
    pub fn merges(&self) -> &'static [String] {
        static TABLE: OnceLock<Vec<String>> = OnceLock::new();
        TABLE.get_or_init(|| {
            let ranks: std::collections::HashMap<&[u8], u32> = (0..END_OF_TEXT)
                .filter_map(|id| Some((self.token_bytes(id)?, id)))
                .collect();
            (256..END_OF_TEXT)
                .map(|id| {
                    let bytes = self.token_bytes(id).unwrap_or_default();
                    let (a, b) = last_merge(bytes, &ranks, id);
                    format!("{} {}", byte_level(a), byte_level(b))
                })
                .collect()
        })
    }

    pub fn is_special(&self, id: u32) -> bool {
        id == END_OF_TEXT
    }

    /// The pattern matcher underneath can, in principle, give up on
    /// pathological input; that becomes an error instead of a panic.
    fn guard(&self, f: impl FnOnce() -> Vec<u32> + std::panic::UnwindSafe) -> Result<Vec<u32>> {
        std::panic::catch_unwind(f)
            .map_err(|_| ModelError::Tokenizer("the BPE pre-tokenizer failed on this input".into()))
    }
}

/// Byte-pair merges `bytes` using the merges ranked below `rank`, and
/// returns the two parts left (a token's bytes always end as two parts).
fn last_merge<'b>(
    bytes: &'b [u8],
    ranks: &std::collections::HashMap<&[u8], u32>,
    rank: u32,
) -> (&'b [u8], &'b [u8]) {
    let mut cuts: Vec<usize> = (0..=bytes.len()).collect();
    while cuts.len() > 3 {
        let best = (0..cuts.len() - 2)
            .filter_map(|i| {
                let r = *ranks.get(&bytes[cuts[i]..cuts[i + 2]])?;
                (r < rank).then_some((r, i))
            })
            .min();
        let Some((_, i)) = best else { break };
        cuts.remove(i + 1);
    }
    let mid = cuts.get(1).copied().unwrap_or(0);
    (&bytes[..mid], &bytes[mid..])
}

/// GPT-2's byte-to-character map (`bytes_to_unicode` in its encoder.py):
/// printable bytes stand for themselves, the rest for the code points from
/// 256 on, in byte order.
fn byte_char(b: u8) -> char {
    static TABLE: OnceLock<[char; 256]> = OnceLock::new();
    TABLE.get_or_init(|| {
        let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        let mut table = ['\0'; 256];
        let mut next = 256u32;
        for b in 0..=255u8 {
            table[b as usize] = if printable(b) {
                char::from(b)
            } else {
                next += 1;
                // invariant: 256..512 are all valid scalar values.
                char::from_u32(next - 1).unwrap_or('\0')
            };
        }
        table
    })[b as usize]
}

/// Bytes written in GPT-2's byte-level alphabet.
fn byte_level(bytes: &[u8]) -> String {
    bytes.iter().map(|&b| byte_char(b)).collect()
}

/// The id of the token that is exactly the byte `b` (GPT-2's vocabulary has
/// one for each of the 256 bytes).
fn single_byte_token(b: u8) -> u32 {
    static TABLE: OnceLock<[u32; 256]> = OnceLock::new();
    TABLE.get_or_init(|| {
        let tok = Tokenizer::gpt2();
        let mut table = [0; 256];
        for id in 0..crate::config::GPT2_VOCAB_SIZE as u32 {
            if let Some(&[byte]) = tok.token_bytes(id) {
                table[byte as usize] = id;
            }
        }
        table
    })[b as usize]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_ids_and_round_trip() {
        let t = Tokenizer::gpt2();
        assert_eq!(t.encode("Hello world").unwrap(), vec![15496, 995]);
        assert_eq!(
            t.encode_with_special("<|endoftext|>").unwrap(),
            vec![END_OF_TEXT]
        );
        assert_ne!(t.encode("<|endoftext|>").unwrap(), vec![END_OF_TEXT]);
        for text in [
            "",
            " ",
            "  \n\n\t x",
            "naïve café 🤖 日本語 e\u{301}",
            "I'll we've it's\r\n",
        ] {
            let ids = t.encode(text).unwrap();
            assert_eq!(t.decode(&ids).unwrap(), text);
        }
    }

    #[test]
    fn byte_level_vocabulary_and_merges_are_gpt2s_files() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/bpe");
        let (Ok(encoder), Ok(bpe)) = (
            std::fs::read_to_string(dir.join("encoder.json")),
            std::fs::read_to_string(dir.join("vocab.bpe")),
        ) else {
            println!("skipped: GPT-2's BPE files are not at {}", dir.display());
            return;
        };
        let t = Tokenizer::gpt2();
        let encoder: std::collections::HashMap<String, usize> =
            serde_json::from_str(&encoder).unwrap();
        let mut by_id = vec![String::new(); encoder.len()];
        for (token, id) in encoder {
            by_id[id] = token;
        }
        assert_eq!(t.byte_level_tokens(), &by_id[..]);
        let merges: Vec<&str> = bpe.lines().skip(1).filter(|l| !l.is_empty()).collect();
        assert_eq!(merges.len(), 50_000);
        for (i, (ours, theirs)) in t.merges().iter().zip(&merges).enumerate() {
            assert_eq!(ours, theirs, "merge {i}");
        }
    }

    #[test]
    fn bad_input_is_an_error() {
        let t = Tokenizer::gpt2();
        let err = t.encode_bytes(b"ok\xff\xfe").unwrap_err().to_string();
        assert!(err.contains("offset 2"), "{err}");
        assert!(t
            .decode_bytes(&[60000])
            .unwrap_err()
            .to_string()
            .contains("60000"));
        // A token that ends inside a character decodes to U+FFFD, not garbage.
        let ids = t.encode("🤖").unwrap();
        assert!(ids.len() > 1);
        assert!(t.decode(&ids[..1]).unwrap().contains('\u{FFFD}'));
    }

    #[test]
    fn any_bytes_round_trip_with_invalid_utf8() {
        let tok = Tokenizer::gpt2();
        let bytes = b"ok \xff\xfe then \xe2\x82 caf\xc3\xa9\xc3";
        let (ids, invalid) = tok.encode_any_bytes(bytes).unwrap();
        assert_eq!(invalid, 5);
        assert_eq!(tok.decode_bytes(&ids).unwrap(), bytes);
        let (ids, invalid) = tok.encode_any_bytes("plain".as_bytes()).unwrap();
        assert_eq!((ids, invalid), (tok.encode("plain").unwrap(), 0));
    }
}
