//! SentencePiece-style tokenization as llama.cpp does it for `tokenizer.ggml.model = llama`:
//! start from single characters, repeatedly join the adjacent pair whose joined text is a token
//! with the highest score (leftmost on ties), and spell whatever is left that is not a token with
//! `<0xXX>` byte tokens, or the unknown token when those are missing.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};

/// The vocabulary view the SPM merge needs.
pub struct SpmVocab<'a> {
    pub token_to_id: &'a HashMap<String, u32>,
    pub scores: &'a [f32],
    /// Token id for each byte value, when the vocabulary has `<0xXX>` (or the bare byte) for it.
    pub byte_tokens: &'a [Option<u32>; 256],
    pub unk_id: Option<u32>,
}

struct Bigram {
    score: f32,
    left: usize,
    right: usize,
    /// Byte length of the joined text when queued; a mismatch later means a side has grown.
    size: usize,
}

impl PartialEq for Bigram {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Bigram {}
impl PartialOrd for Bigram {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Bigram {
    /// Max-heap order: higher score first, then the smaller left index.
    fn cmp(&self, other: &Self) -> Ordering {
        self.score.total_cmp(&other.score).then_with(|| other.left.cmp(&self.left))
    }
}

/// Tokenizes `text`, whose spaces the caller has already replaced by U+2581, appending to `out`.
pub fn encode(vocab: &SpmVocab, text: &str, out: &mut Vec<u32>) {
    struct Sym {
        start: usize,
        len: usize,
        prev: Option<usize>,
        next: Option<usize>,
    }
    let mut syms: Vec<Sym> = Vec::new();
    for (start, c) in text.char_indices() {
        let i = syms.len();
        syms.push(Sym { start, len: c.len_utf8(), prev: i.checked_sub(1), next: None });
        if i > 0 {
            syms[i - 1].next = Some(i);
        }
    }

    let mut queue = BinaryHeap::new();
    let try_add = |queue: &mut BinaryHeap<Bigram>, syms: &[Sym], l: Option<usize>, r: Option<usize>| {
        let (Some(l), Some(r)) = (l, r) else { return };
        let (start, size) = (syms[l].start, syms[l].len + syms[r].len);
        let Some(&id) = vocab.token_to_id.get(&text[start..start + size]) else {
            return;
        };
        let score = vocab.scores.get(id as usize).copied().unwrap_or(0.0);
        queue.push(Bigram { score, left: l, right: r, size });
    };
    for i in 1..syms.len() {
        try_add(&mut queue, &syms, Some(i - 1), Some(i));
    }
    while let Some(b) = queue.pop() {
        let (l, r) = (b.left, b.right);
        if syms[l].len == 0 || syms[r].len == 0 || syms[l].len + syms[r].len != b.size {
            continue; // stale: one side merged elsewhere
        }
        syms[l].len += syms[r].len;
        syms[r].len = 0;
        let after = syms[r].next;
        syms[l].next = after;
        if let Some(after) = after {
            syms[after].prev = Some(l);
        }
        try_add(&mut queue, &syms, syms[l].prev, Some(l));
        try_add(&mut queue, &syms, Some(l), after);
    }

    let mut i = if syms.is_empty() { None } else { Some(0) };
    while let Some(k) = i {
        let piece = &text[syms[k].start..syms[k].start + syms[k].len];
        if let Some(&id) = vocab.token_to_id.get(piece) {
            out.push(id);
        } else {
            // Only single characters can be left outside the vocabulary: merges make tokens.
            let bytes: Option<Vec<u32>> = piece.bytes().map(|b| vocab.byte_tokens[b as usize]).collect();
            match (bytes, vocab.unk_id) {
                (Some(ids), _) => out.extend(ids),
                (None, Some(unk)) => out.push(unk),
                (None, None) => {}
            }
        }
        i = syms[k].next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn highest_scoring_pair_merges_first_and_leftovers_fall_back_to_bytes() {
        let tokens = ["<unk>", "a", "b", "c", "ab", "bc", "<0x64>"];
        let scores = [0.0, -1.0, -1.0, -1.0, -5.0, -2.0, 0.0];
        let token_to_id: HashMap<String, u32> = tokens.iter().enumerate().map(|(i, t)| (t.to_string(), i as u32)).collect();
        let mut byte_tokens = [None; 256];
        byte_tokens[b'd' as usize] = Some(6);
        let vocab = SpmVocab { token_to_id: &token_to_id, scores: &scores, byte_tokens: &byte_tokens, unk_id: Some(0) };
        let run = |s: &str| {
            let mut out = Vec::new();
            encode(&vocab, s, &mut out);
            out
        };
        // "abc": bc (-2) beats ab (-5)
        assert_eq!(run("abc"), vec![1, 5]);
        assert_eq!(run("ab"), vec![4]);
        // 'd' only as a byte token; 'é' has no byte tokens, so it is unknown
        assert_eq!(run("dé"), vec![6, 0]);
        assert!(run("").is_empty());
    }
}
