//! Invertible detokenizers: they undo the tokenization that WikiText and
//! the Penn Treebank were published with, so that GPT-2, which was trained
//! on raw text, is scored on text that looks like raw text (the paper's
//! section 3.1).

use regex::Regex;
use std::sync::OnceLock;

/// What Python's `\s` matches in a `str` pattern: Unicode whitespace plus
/// the four ASCII separators U+001C..U+001F (which Rust's `\s` leaves out).
pub const PY_SPACE: &str = r"[\s\x1C-\x1F]";

pub fn is_py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Python's `str.strip()`.
pub fn py_strip(s: &str) -> &str {
    s.trim_matches(is_py_space)
}

/// lm-evaluation-harness's `wikitext_detokenizer`
/// (lm_eval/tasks/wikitext/preprocess_wikitext.py), step for step,
/// including its quirks (the `/' [0-9]/` pattern is matched literally, as
/// Python does).
pub fn wikitext(page: &str) -> String {
    static RULES: OnceLock<Vec<(Regex, &'static str)>> = OnceLock::new();
    let rules = RULES.get_or_init(|| {
        let s = PY_SPACE;
        [
            (r"/' [0-9]/".to_string(), r"/'[0-9]/"),
            (format!(r"\({s}*([^\)]*?){s}*\)"), "(${1})"),
            (format!(r"\[{s}*([^\]]*?){s}*\]"), "[${1}]"),
            (format!(r"\{{{s}*([^}}]*?){s}*\}}"), "{${1}}"),
            (format!(r#""{s}*([^"]*?){s}*""#), "\"${1}\""),
            (format!(r"'{s}*([^']*?){s}*'"), "'${1}'"),
        ]
        .into_iter()
        // invariant: the patterns above are fixed and valid.
        .map(|(p, r)| (Regex::new(&p).expect("valid detokenizer pattern"), r))
        .collect()
    });
    let sub = |s: String, i: usize| rules[i].0.replace_all(&s, rules[i].1).into_owned();
    // contractions
    let mut s = page.replace("s '", "s'");
    s = sub(s, 0);
    // number separators
    s = s
        .replace(" @-@ ", "-")
        .replace(" @,@ ", ",")
        .replace(" @.@ ", ".");
    // punctuation
    for p in [":", ";", ".", "!", "?", ","] {
        s = s.replace(&format!(" {p} "), &format!("{p} "));
    }
    // double brackets and quotes
    for i in 1..rules.len() {
        s = sub(s, i);
    }
    // miscellaneous
    s.replace("= = = =", "====")
        .replace("= = =", "===")
        .replace("= =", "==")
        .replace(" \u{b0} ", "\u{b0}")
        .replace(" \n", "\n")
        .replace("\n ", "\n")
        .replace(" N ", " 1 ")
        .replace(" 's", "'s")
}

/// Megatron-LM's `ptb_detokenizer` (tasks/zeroshot_gpt/detokenizer.py):
/// Mikolov's PTB is lower-cased, has numbers as `N` and unknown words as
/// `<unk>`, and splits contractions; only the splits are undone (`<unk>`
/// and case cannot be).
pub fn ptb(text: &str) -> String {
    text.replace(" '", "'")
        .replace(" \n", "\n")
        .replace("\n ", "\n")
        .replace(" n't", "n't")
        .replace(" N ", "1 ")
        .replace("$ 1", "$1")
        .replace("# 1", "#1")
}

/// `len(re.split(r"\s+", text))`: whitespace runs plus one (Python counts
/// the empty strings before a leading and after a trailing run).
pub fn python_split_count(text: &str) -> usize {
    let mut count = 1;
    let mut in_space = false;
    for c in text.chars() {
        let space = is_py_space(c);
        if space && !in_space {
            count += 1;
        }
        in_space = space;
    }
    count
}

/// `len(text.split())`: the whitespace-separated words.
pub fn word_count(text: &str) -> usize {
    text.split(is_py_space).filter(|w| !w.is_empty()).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wikitext_undoes_the_tokenization() {
        let page = " = Robert Boulter = \n \n He had a guest @-@ starring role , in 2 @,@ 000 ( the \" Bill \" ) . Teddy 's Story \n = = Career = = \n";
        assert_eq!(
            wikitext(page),
            " = Robert Boulter =\n\nHe had a guest-starring role, in 2,000 (the \"Bill\"). Teddy's Story\n== Career ==\n"
        );
    }

    #[test]
    fn wikitext_keeps_lm_evals_quirks() {
        // The pattern is matched with its slashes, so ordinary text is untouched...
        assert_eq!(wikitext("rock ' 5 x"), "rock ' 5 x");
        assert_eq!(wikitext("a /' 5/ b"), "a /'[0-9]/ b");
        // ...and quotes pair up across words, as Python's regex does.
        assert_eq!(wikitext("it ' s and ' t"), "it's and' t");
    }

    #[test]
    fn ptb_joins_contractions_and_numbers() {
        assert_eq!(
            ptb(" the company 's profit is n't $ N million \n it rose N % \n"),
            " the company's profit isn't $1 million\nit rose1 %\n"
        );
    }

    #[test]
    fn word_counts_follow_python() {
        assert_eq!(python_split_count(" a b \n"), 4); // ['', 'a', 'b', '']
        assert_eq!(python_split_count("a"), 1);
        assert_eq!(python_split_count(""), 1);
        assert_eq!(word_count(" a  b \n c"), 3);
        assert_eq!(python_split_count("a\u{1f}b"), 2);
    }
}
