//! Turning a stream of token bytes into whole UTF-8 characters: a token may
//! end in the middle of a character, so the incomplete tail is held back
//! until the next token completes it. Bytes that can never form a valid
//! character become U+FFFD.

#[derive(Default, Debug, Clone)]
pub struct Utf8Stream {
    pending: Vec<u8>,
}

impl Utf8Stream {
    /// Appends `bytes` and returns the text that is now complete.
    pub fn push(&mut self, bytes: &[u8], out: &mut String) {
        self.pending.extend_from_slice(bytes);
        let mut start = 0;
        loop {
            match std::str::from_utf8(&self.pending[start..]) {
                Ok(s) => {
                    out.push_str(s);
                    start = self.pending.len();
                    break;
                }
                Err(e) => {
                    let valid = start + e.valid_up_to();
                    // invariant: from_utf8 validated pending[start..valid].
                    out.push_str(
                        std::str::from_utf8(&self.pending[start..valid])
                            .expect("invariant: validated prefix"),
                    );
                    match e.error_len() {
                        Some(bad) => {
                            out.push('\u{FFFD}');
                            start = valid + bad;
                        }
                        None => {
                            start = valid;
                            break;
                        }
                    }
                }
            }
        }
        self.pending.drain(..start);
    }

    /// Flushes whatever is held back (an incomplete character becomes U+FFFD).
    pub fn finish(&mut self, out: &mut String) {
        if !self.pending.is_empty() {
            out.push_str(&String::from_utf8_lossy(&self.pending));
            self.pending.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_back_split_characters() {
        let robot = "🤖".as_bytes();
        let mut s = Utf8Stream::default();
        let mut out = String::new();
        s.push(b"a", &mut out);
        s.push(&robot[..2], &mut out);
        assert_eq!(out, "a");
        s.push(&robot[2..], &mut out);
        assert_eq!(out, "a🤖");
        s.push(b"\xffb\xe6", &mut out);
        assert_eq!(out, "a🤖\u{FFFD}b");
        s.finish(&mut out);
        assert_eq!(out, "a🤖\u{FFFD}b\u{FFFD}");
    }
}
