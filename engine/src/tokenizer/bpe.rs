//! Byte-level BPE (GPT-2 style): bytes become printable characters, then ranked merges join
//! adjacent symbols, lowest rank first and leftmost first among equal ranks.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

/// GPT-2's byte-to-character table: printable Latin-1 bytes stand for themselves, the other 68
/// bytes take the characters from U+0100 upward in byte order (so a space is 'Ġ', U+0120).
pub fn byte_to_char_table() -> [char; 256] {
    let printable = |b: u32| (0x21..=0x7E).contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b);
    let mut table = ['\0'; 256];
    let mut next = 0x100u32;
    for (b, slot) in table.iter_mut().enumerate() {
        let b = b as u32;
        let code = if printable(b) {
            b
        } else {
            next += 1;
            next - 1
        };
        // Every code here is below U+0200, so it is always a valid char.
        *slot = char::from_u32(code).unwrap_or('\u{FFFD}');
    }
    table
}

/// The inverse of [`byte_to_char_table`].
pub fn char_to_byte_map() -> HashMap<char, u8> {
    byte_to_char_table().iter().enumerate().map(|(b, &c)| (c, b as u8)).collect()
}

/// Candidate merges: (rank, left index, right index, left id, right id), smallest first.
type Queue = BinaryHeap<Reverse<(u32, usize, usize, u32, u32)>>;

/// Ranked merges over token ids.
pub struct Merges {
    /// (left id, right id) -> (rank, merged id). The first listing of a pair wins, as in llama.cpp.
    pairs: HashMap<(u32, u32), (u32, u32)>,
}

impl Merges {
    pub fn new(pairs: HashMap<(u32, u32), (u32, u32)>) -> Merges {
        Merges { pairs }
    }

    /// Merges the symbols of one word. `symbols` holds the id of each initial character, or
    /// `None` for a character missing from the vocabulary (it never merges). Returns the final
    /// symbols in order.
    pub fn apply(&self, symbols: &[Option<u32>]) -> Vec<Option<u32>> {
        struct Sym {
            id: Option<u32>,
            prev: Option<usize>,
            next: Option<usize>,
            alive: bool,
        }
        let n = symbols.len();
        let mut syms: Vec<Sym> = symbols
            .iter()
            .enumerate()
            .map(|(i, &id)| Sym { id, prev: i.checked_sub(1), next: if i + 1 < n { Some(i + 1) } else { None }, alive: true })
            .collect();

        // Smallest rank first, then smallest left index: the leftmost pair, as indices keep text order.
        let mut queue: Queue = BinaryHeap::new();
        let push = |queue: &mut Queue, syms: &[Sym], l: Option<usize>, r: Option<usize>| {
            let (Some(l), Some(r)) = (l, r) else { return };
            let (Some(a), Some(b)) = (syms[l].id, syms[r].id) else {
                return;
            };
            if let Some(&(rank, _)) = self.pairs.get(&(a, b)) {
                queue.push(Reverse((rank, l, r, a, b)));
            }
        };
        for i in 1..n {
            push(&mut queue, &syms, Some(i - 1), Some(i));
        }
        while let Some(Reverse((_, l, r, a, b))) = queue.pop() {
            let current = syms[l].alive && syms[r].alive && syms[l].next == Some(r);
            if !current || syms[l].id != Some(a) || syms[r].id != Some(b) {
                continue; // one side has merged since this pair was queued
            }
            let Some(&(_, merged)) = self.pairs.get(&(a, b)) else {
                continue;
            };
            syms[l].id = Some(merged);
            syms[r].alive = false;
            let after = syms[r].next;
            syms[l].next = after;
            if let Some(after) = after {
                syms[after].prev = Some(l);
            }
            push(&mut queue, &syms, syms[l].prev, Some(l));
            push(&mut queue, &syms, Some(l), after);
        }
        syms.into_iter().filter(|s| s.alive).map(|s| s.id).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_table_matches_gpt2() {
        let table = byte_to_char_table();
        assert_eq!(table[b' ' as usize], 'Ġ');
        assert_eq!(table[b'\n' as usize], 'Ċ');
        assert_eq!(table[b'a' as usize], 'a');
        assert_eq!(table[0], 'Ā');
        assert_eq!(table[0xAD], 'Ń');
        let inverse = char_to_byte_map();
        assert_eq!(inverse.len(), 256);
        assert!((0..=255u8).all(|b| inverse[&table[b as usize]] == b));
    }

    #[test]
    fn merges_apply_lowest_rank_first_then_leftmost() {
        // ids: a=0 b=1 ab=2 bb=3 abb=4
        let pairs = HashMap::from([((0, 1), (1, 2)), ((1, 1), (0, 3)), ((2, 1), (2, 4))]);
        let merges = Merges::new(pairs);
        // "abb": (b,b) has rank 0, so "a"+"bb" even though (a,b) is to its left.
        assert_eq!(merges.apply(&[Some(0), Some(1), Some(1)]), vec![Some(0), Some(3)]);
        // "abab": two (a,b) at rank 1; both merge.
        assert_eq!(merges.apply(&[Some(0), Some(1), Some(0), Some(1)]), vec![Some(2), Some(2)]);
        // "bbb": leftmost (b,b) merges first.
        assert_eq!(merges.apply(&[Some(1), Some(1), Some(1)]), vec![Some(3), Some(1)]);
        // an unknown symbol blocks merges across it
        assert_eq!(merges.apply(&[Some(0), None, Some(1)]), vec![Some(0), None, Some(1)]);
        assert!(merges.apply(&[]).is_empty());
    }
}
