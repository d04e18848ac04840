//! Pre-tokenization for byte-level BPE: cutting text into words before any merge happens.
//!
//! The splits follow llama.cpp's `unicode_regex_split`: a pre-tokenizer is a list of passes; each
//! pass works inside every piece the previous pass produced, and both its matches and the gaps
//! between them become pieces. The GPT-2 pass is written by hand (as llama.cpp does) because its
//! pattern needs a lookahead:
//!
//! ```text
//! 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
//! ```
//!
//! Llama 3 and Qwen2 use one longer pattern, also written by hand (`split_llama3`), which differs
//! between them only in how many digits a number piece takes (`\p{N}{1,3}` or `\p{N}`):
//!
//! ```text
//! (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
//! ```
//!
//! Character classes: `\p{L}` and `\p{N}` are Unicode general categories, `\s` is the Unicode
//! White_Space property (the same set llama.cpp's tables and Rust's `char::is_whitespace` use).

use unicode_general_category::{get_general_category, GeneralCategory as Gc};

/// The pre-tokenizers we know, named after GGUF `tokenizer.ggml.pre` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PreTokenizer {
    /// The GPT-2 pattern alone (`gpt-2`, `mpt`, `olmo`, ...).
    Gpt2,
    /// Every `\p{N}` character on its own, then the GPT-2 pattern (`smollm`, `starcoder`, ...);
    /// HF writes this as `Sequence[Digits(individual_digits), ByteLevel]`.
    DigitsThenGpt2,
    /// llama.cpp's fallback for a missing or `default` pre-tokenizer: runs of punctuation, then
    /// the GPT-2 pattern, then runs of `\p{N}`, then groups of three ASCII digits.
    Default,
    /// The Llama 3 pattern (`llama-bpe`, `llama3`): numbers in pieces of up to three digits.
    Llama3,
    /// The same pattern with every digit alone (`qwen2`).
    Qwen2,
}

impl PreTokenizer {
    /// The pre-tokenizer for a GGUF `tokenizer.ggml.pre` value; `None` for names whose pattern
    /// we have not implemented (llama.cpp would use one we do not have).
    pub fn from_gguf_name(name: Option<&str>) -> Option<PreTokenizer> {
        match name {
            None | Some("default") => Some(PreTokenizer::Default),
            // llama.cpp spells GPT-2's "gpt-2"; "gpt2" is accepted as the obvious alias.
            Some(
                "gpt-2" | "gpt2" | "phi-2" | "mpt" | "olmo" | "jais" | "trillion" | "exaone4" | "granite-docling" | "jina-es" | "jina-de"
                | "gigachat" | "jina-v2-es" | "jina-v2-de" | "a.x-4.0" | "mellum",
            ) => Some(PreTokenizer::Gpt2),
            Some("smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone" | "minerva-7b") => Some(PreTokenizer::DigitsThenGpt2),
            Some("llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "pixtral") => Some(PreTokenizer::Llama3),
            Some("qwen2" | "deepseek-r1-qwen") => Some(PreTokenizer::Qwen2),
            Some(_) => None,
        }
    }

    /// Whether a word that is itself a token is taken whole, before any merge (HF's
    /// `ignore_merges`, llama.cpp's for Llama 3): merges alone may not reach such a token.
    pub fn ignores_merges(&self) -> bool {
        *self == PreTokenizer::Llama3
    }

    /// Cuts `text` into words; the words are consecutive, non-empty, and cover `text` exactly.
    pub fn split<'a>(&self, text: &'a str) -> Vec<&'a str> {
        let chars: Vec<(usize, char)> = text.char_indices().collect();
        let mut pieces: Vec<std::ops::Range<usize>> = std::iter::once(0..chars.len()).collect();
        let passes: &[Pass] = match self {
            PreTokenizer::Gpt2 => &[Pass::Gpt2],
            PreTokenizer::DigitsThenGpt2 => &[Pass::EachNumber, Pass::Gpt2],
            PreTokenizer::Default => &[Pass::PunctuationRuns, Pass::Gpt2, Pass::NumberRuns, Pass::AsciiDigitTriples],
            PreTokenizer::Llama3 => &[Pass::Llama3 { max_digits: 3 }],
            PreTokenizer::Qwen2 => &[Pass::Llama3 { max_digits: 1 }],
        };
        for pass in passes {
            let mut next = Vec::with_capacity(pieces.len());
            for piece in pieces {
                let window = &chars[piece.clone()];
                let mut start = piece.start;
                for len in pass.split(window) {
                    next.push(start..start + len);
                    start += len;
                }
            }
            pieces = next;
        }
        let byte_at = |i: usize| chars.get(i).map_or(text.len(), |&(b, _)| b);
        pieces.into_iter().map(|p| &text[byte_at(p.start)..byte_at(p.end)]).collect()
    }
}

pub(crate) fn is_letter(c: char) -> bool {
    matches!(get_general_category(c), Gc::UppercaseLetter | Gc::LowercaseLetter | Gc::TitlecaseLetter | Gc::ModifierLetter | Gc::OtherLetter)
}

pub(crate) fn is_number(c: char) -> bool {
    matches!(get_general_category(c), Gc::DecimalNumber | Gc::LetterNumber | Gc::OtherNumber)
}

fn is_punctuation(c: char) -> bool {
    matches!(
        get_general_category(c),
        Gc::ConnectorPunctuation
            | Gc::DashPunctuation
            | Gc::OpenPunctuation
            | Gc::ClosePunctuation
            | Gc::InitialPunctuation
            | Gc::FinalPunctuation
            | Gc::OtherPunctuation
    )
}

/// One split pass. Each returns the lengths (in chars) of consecutive pieces covering the window.
#[derive(Clone, Copy)]
enum Pass {
    /// `\p{N}`: each number character alone.
    EachNumber,
    /// `\p{N}+`
    NumberRuns,
    /// `[0-9][0-9][0-9]`
    AsciiDigitTriples,
    /// `[\p{P}\$\+<=>\^~\|]+`
    PunctuationRuns,
    /// The GPT-2 pattern.
    Gpt2,
    /// The Llama 3 pattern, numbers in pieces of at most `max_digits`.
    Llama3 { max_digits: usize },
}

impl Pass {
    fn split(self, window: &[(usize, char)]) -> Vec<usize> {
        match self {
            Pass::EachNumber => split_runs(window, is_number, Some(1)),
            Pass::NumberRuns => split_runs(window, is_number, None),
            Pass::AsciiDigitTriples => split_ascii_triples(window),
            Pass::PunctuationRuns => split_runs(window, |c| is_punctuation(c) || matches!(c, '$' | '+' | '<' | '=' | '>' | '^' | '~' | '|'), None),
            Pass::Gpt2 => split_gpt2(window),
            Pass::Llama3 { max_digits } => split_llama3(window, max_digits),
        }
    }
}

/// Matches of `class+` (or of `class` alone when `max_run` is 1) and the gaps between them.
fn split_runs(window: &[(usize, char)], class: impl Fn(char) -> bool, max_run: Option<usize>) -> Vec<usize> {
    let mut lens = Vec::new();
    let mut i = 0;
    while i < window.len() {
        let start = i;
        if class(window[i].1) {
            while i < window.len() && class(window[i].1) && max_run.is_none_or(|m| i - start < m) {
                i += 1;
            }
        } else {
            while i < window.len() && !class(window[i].1) {
                i += 1;
            }
        }
        lens.push(i - start);
    }
    lens
}

fn split_ascii_triples(window: &[(usize, char)]) -> Vec<usize> {
    let is_digit = |i: usize| window.get(i).is_some_and(|&(_, c)| c.is_ascii_digit());
    let mut lens = Vec::new();
    let mut gap_start = 0;
    let mut i = 0;
    while i < window.len() {
        if is_digit(i) && is_digit(i + 1) && is_digit(i + 2) {
            if i > gap_start {
                lens.push(i - gap_start);
            }
            lens.push(3);
            i += 3;
            gap_start = i;
        } else {
            i += 1;
        }
    }
    if window.len() > gap_start {
        lens.push(window.len() - gap_start);
    }
    lens
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Class {
    Letter,
    Number,
    Space,
    Other,
    /// Past the end of the window: matches no class.
    End,
}

fn split_gpt2(window: &[(usize, char)]) -> Vec<usize> {
    let n = window.len();
    let ch = |i: usize| window.get(i).map(|&(_, c)| c);
    let class = |i: usize| match ch(i) {
        None => Class::End,
        Some(c) if c.is_whitespace() => Class::Space,
        Some(c) if is_letter(c) => Class::Letter,
        Some(c) if is_number(c) => Class::Number,
        Some(_) => Class::Other,
    };

    let mut lens = Vec::new();
    let mut pos = 0;
    while pos < n {
        let start = pos;
        let c = ch(pos);
        // 's|'t|'re|'ve|'m|'ll|'d (case-sensitive, as GPT-2 wrote it)
        if c == Some('\'') {
            let (a, b) = (ch(pos + 1), ch(pos + 2));
            let len = match (a, b) {
                (Some('s' | 't' | 'm' | 'd'), _) => 2,
                (Some('r'), Some('e')) | (Some('v'), Some('e')) | (Some('l'), Some('l')) => 3,
                _ => 0,
            };
            if len > 0 {
                lens.push(len);
                pos += len;
                continue;
            }
        }
        // An optional single U+0020 joins the word that follows it.
        let lead = usize::from(c == Some(' '));
        let what = class(pos + lead);
        match what {
            Class::Letter | Class::Number | Class::Other => {
                pos += lead;
                while class(pos) == what {
                    pos += 1;
                }
            }
            Class::Space | Class::End => {
                let mut spaces = 0;
                while class(pos + spaces) == Class::Space {
                    spaces += 1;
                }
                if spaces > 1 && pos + spaces < n {
                    // \s+(?!\S): leave the last space to lead the next word.
                    pos += spaces - 1;
                } else if spaces > 0 {
                    pos += spaces;
                } else {
                    pos += 1;
                }
            }
        }
        lens.push(pos - start);
    }
    lens
}

fn is_newline(c: char) -> bool {
    matches!(c, '\r' | '\n')
}

fn split_llama3(window: &[(usize, char)], max_digits: usize) -> Vec<usize> {
    let n = window.len();
    let ch = |i: usize| window.get(i).map(|&(_, c)| c);
    let is = |i: usize, f: fn(char) -> bool| ch(i).is_some_and(f);
    let run = |from: usize, f: fn(char) -> bool| (from..n).take_while(|&i| is(i, f)).count();
    let other = |c: char| !c.is_whitespace() && !is_letter(c) && !is_number(c);

    let mut lens = Vec::new();
    let mut pos = 0;
    while pos < n {
        let c = ch(pos).unwrap_or(' ');
        let len = 'matched: {
            // (?i:'s|'t|'re|'ve|'m|'ll|'d)
            if c == '\'' {
                let lower = |i| ch(i).map(|c: char| c.to_ascii_lowercase());
                match (lower(pos + 1), lower(pos + 2)) {
                    (Some('s' | 't' | 'm' | 'd'), _) => break 'matched 2,
                    (Some('r'), Some('e')) | (Some('v'), Some('e')) | (Some('l'), Some('l')) => break 'matched 3,
                    _ => {}
                }
            }
            // [^\r\n\p{L}\p{N}]?\p{L}+
            if is_letter(c) {
                break 'matched run(pos, is_letter);
            }
            if !is_newline(c) && !is_number(c) && is(pos + 1, is_letter) {
                break 'matched 1 + run(pos + 1, is_letter);
            }
            // \p{N}{1,max}
            if is_number(c) {
                break 'matched run(pos, is_number).min(max_digits);
            }
            // ' '?[^\s\p{L}\p{N}]+[\r\n]*
            let lead = usize::from(c == ' ');
            let others = run(pos + lead, other);
            if others > 0 {
                break 'matched lead + others + run(pos + lead + others, is_newline);
            }
            // \s*[\r\n]+ : the whitespace run up to its last newline
            let spaces = run(pos, char::is_whitespace);
            if let Some(last) = (pos..pos + spaces).rev().find(|&i| is(i, is_newline)) {
                break 'matched last + 1 - pos;
            }
            // \s+(?!\S) | \s+
            if spaces > 1 && pos + spaces < n {
                break 'matched spaces - 1;
            }
            spaces.max(1)
        };
        lens.push(len);
        pos += len;
    }
    lens
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(pre: PreTokenizer, text: &str) -> Vec<&str> {
        pre.split(text)
    }

    #[test]
    fn gpt2_pattern_splits_words_contractions_and_spaces_like_the_regex() {
        // Expected pieces worked out by hand from the GPT-2 regex.
        assert_eq!(split(PreTokenizer::Gpt2, "Hello world  don't 42!!  "), vec!["Hello", " world", " ", " don", "'t", " 42", "!!", "  "]);
        assert_eq!(split(PreTokenizer::Gpt2, "a\n\nb"), vec!["a", "\n", "\n", "b"]);
        assert_eq!(split(PreTokenizer::Gpt2, "x\t y"), vec!["x", "\t", " y"]);
        assert_eq!(split(PreTokenizer::Gpt2, " 's"), vec![" '", "s"]);
        assert_eq!(split(PreTokenizer::Gpt2, "I'M"), vec!["I", "'", "M"]);
    }

    #[test]
    fn smollm_pattern_puts_every_digit_alone() {
        assert_eq!(split(PreTokenizer::DigitsThenGpt2, "in 2024, x3"), vec!["in", " ", "2", "0", "2", "4", ",", " x", "3"]);
    }

    #[test]
    fn default_pattern_groups_punctuation_then_digit_triples() {
        assert_eq!(split(PreTokenizer::Default, "a+=1234567"), vec!["a", "+=", "123", "456", "7"]);
    }

    #[test]
    fn pieces_cover_the_text_exactly() {
        let text = "  żółw 日本語 ١٢٣ \u{2028}x\u{a0} ";
        for pre in [PreTokenizer::Gpt2, PreTokenizer::DigitsThenGpt2, PreTokenizer::Default] {
            let pieces = pre.split(text);
            assert_eq!(pieces.concat(), text);
            assert!(pieces.iter().all(|p| !p.is_empty()));
        }
        assert!(PreTokenizer::Gpt2.split("").is_empty());
    }
}
