//! Stop strings over streamed text: where one ends a sample, and how much
//! of the text so far is final (shared by `Generator` and `gpt2 serve`'s
//! batching engine).

/// Byte offset of the earliest stop string that ends after `from` (moved
/// back to a character boundary).
pub fn find_stop(text: &str, from: usize, stops: &[String]) -> Option<usize> {
    let mut from = from.min(text.len());
    while !text.is_char_boundary(from) {
        from -= 1;
    }
    stops
        .iter()
        .filter(|s| !s.is_empty())
        .filter_map(|s| text[from..].find(s.as_str()).map(|p| from + p))
        .min()
}

/// How much of `text` may be handed out: all of a finished sample's text,
/// else everything but a tail that could still grow into a stop string
/// (`max_stop` is the longest stop string's length in bytes).
pub fn final_len(text: &str, finished: bool, max_stop: usize, stops: &[String]) -> usize {
    if finished || max_stop == 0 {
        return text.len();
    }
    let held = (1..max_stop.min(text.len() + 1))
        .rev()
        .find(|&k| {
            text.is_char_boundary(text.len() - k)
                && stops
                    .iter()
                    .any(|st| st.starts_with(&text[text.len() - k..]))
        })
        .unwrap_or(0);
    text.len() - held
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_strings_are_found_across_token_boundaries() {
        let stops = vec!["\n\n".to_string(), "THE END".to_string()];
        assert_eq!(find_stop("abc\n\ndef", 0, &stops), Some(3));
        assert_eq!(find_stop("once THE END", 5, &stops), Some(5));
        assert_eq!(find_stop("nothing", 0, &stops), None);
        assert_eq!(find_stop("é\n\n", 1, &stops), Some(2));
    }

    #[test]
    fn a_possible_stop_string_start_is_held_back() {
        let stops = vec!["THE END".to_string()];
        assert_eq!(final_len("and THE E", false, 7, &stops), 4);
        assert_eq!(final_len("and THE E", true, 7, &stops), 9);
        assert_eq!(final_len("and then", false, 7, &stops), 8);
        assert_eq!(final_len("x", false, 0, &[]), 1);
    }
}
