//! Dumps that share bits they could not share by computing independently. Two implementations
//! rounding differently almost never produce the same f32 bits for a tensor that took arithmetic,
//! so such a tensor is flagged (the later reference by name is not counted at its checkpoint), and
//! a dump identical to another in every tensor is a copy under a second name, refused outright.

use crate::catalog::Entry;
use crate::dumps::{Dump, Lookup};
use reports::results::Duplicate;
use reports::vocab::TensorName;

/// One dump taking part: its name, and whether it is a vote (a reference; the truth is not).
pub struct Side<'a> {
    pub name: &'a str,
    pub dump: &'a Dump,
    pub votes: bool,
}

/// What [`find`] found, indexed like its sides.
#[derive(Debug, Default, PartialEq)]
pub struct Found {
    /// Per side, the tensors it shares bit for bit with a side before it by name (votes only).
    pub duplicates: Vec<Vec<Duplicate>>,
    /// (copy, original): the copy's every tensor is the original's. The copy is the later by name,
    /// or the vote when the original is the truth.
    pub copies: Vec<(usize, usize)>,
}

/// Whether a tensor's bits come out of arithmetic: not token ids, and not the embedding rows,
/// which are weights copied out of the file (GPT-2's added position rows round exactly too).
fn computed(e: &Entry) -> bool {
    !e.is_ids && !TensorName::Embed.is(&e.tensor)
}

/// Compares every entry across the sides. An unreadable tensor counts as different (its comparison
/// reports it); a tensor with no values shares nothing.
pub fn find(sides: &[Side], entries: &[Entry]) -> Found {
    let n = sides.len();
    let mut found = Found { duplicates: (0..n).map(|_| Vec::new()).collect(), copies: Vec::new() };
    let mut same = vec![vec![true; n]; n];
    let mut compared = false;
    for e in entries {
        let looked: Vec<Option<Lookup>> = sides.iter().map(|s| s.dump.get(&e.key).ok()).collect();
        for i in 0..n {
            for j in i + 1..n {
                let (a, b) = (&looked[i], &looked[j]);
                let identical = match (a, b) {
                    (Some(Lookup::Tensor(x)), Some(Lookup::Tensor(y))) => x.bit_identical(y),
                    (Some(x), Some(y)) => x == y,
                    _ => false,
                };
                same[i][j] &= identical;
                let (Some(Lookup::Tensor(x)), true) = (a, identical) else { continue };
                compared = true;
                if computed(e) && !x.is_empty() && sides[i].votes && sides[j].votes {
                    let (later, earlier) = if sides[i].name > sides[j].name { (i, j) } else { (j, i) };
                    let d = Duplicate { checkpoint: e.checkpoint.clone(), key: e.key.clone(), of: sides[earlier].name.to_string() };
                    found.duplicates[later].push(d);
                }
            }
        }
        compared |= looked.iter().any(|l| matches!(l, Some(Lookup::Tensor(_))));
    }
    for i in 0..n {
        for j in i + 1..n {
            if compared && same[i][j] {
                let i_is_copy = if sides[i].votes != sides[j].votes { sides[i].votes } else { sides[i].name > sides[j].name };
                found.copies.push(if i_is_copy { (i, j) } else { (j, i) });
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Catalog;
    use crate::npy;
    use crate::tensor::Tensor;
    use std::path::{Path, PathBuf};

    fn entries() -> Vec<Entry> {
        let catalog = Catalog::parse(include_str!("../../checkpoints/catalog.toml"), "catalog").unwrap();
        let keep = ["tokens", "embed", "blk.0.attn_norm", "logits"];
        catalog.entries("llama", 1).into_iter().filter(|e| keep.contains(&e.key.as_str())).collect()
    }

    /// A dump named `reference` under `root` holding the four keys of [`entries`].
    fn dump(root: &Path, reference: &str, norm: f32, logits: f32) -> Dump {
        let dir: PathBuf = root.join(reference);
        std::fs::create_dir_all(&dir).unwrap();
        let tensors = [
            ("tokens", Tensor::ids(vec![2], vec![1, 7])),
            ("embed", Tensor::f32(vec![2, 2], vec![0.5, -1.0, 2.0, 0.25])),
            ("blk.0.attn_norm", Tensor::f32(vec![2, 2], vec![norm, 1.0, -1.0, 0.5])),
            ("logits", Tensor::f32(vec![2, 3], vec![logits, 0.1, 0.2, 0.3, 0.4, 0.5])),
        ];
        let mut manifest = format!(
            "reference = \"{reference}\"\nversion = \"1\"\nmodel = \"m\"\nmodel_sha256 = \"aa\"\nprompt = \"hi\"\ntoken_ids = [1, 7]\narch = \"llama\"\nn_layers = 1\ndtype = \"float32\"\nthreads = 1\nn_generate = 0\ntemperature = 1.0\nwall_time_s = 0.0\ncommand = \"c\"\n\n"
        );
        for (key, t) in &tensors {
            let file = format!("{key}.npy");
            npy::write(&dir.join(&file), t).unwrap();
            manifest += &format!("[tensors.\"{key}\"]\nfile = \"{file}\"\nshape = {:?}\ndtype = \"{}\"\n", t.shape, t.dtype_name());
        }
        std::fs::write(dir.join("manifest.toml"), manifest).unwrap();
        Dump::open(&dir).unwrap()
    }

    fn temp(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("parity-duplicates-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn a_computed_tensor_with_the_same_bits_flags_the_later_reference_only_there() {
        let root = temp("tensor");
        // Same ids and embedding rows (a copy of weights: never flagged), same norm, different logits.
        let (a, b) = (dump(&root, "pytorch", 0.75, 1.0), dump(&root, "llamacpp", 0.75, 1.5));
        let sides = [Side { name: "pytorch", dump: &a, votes: true }, Side { name: "llamacpp", dump: &b, votes: true }];
        let found = find(&sides, &entries());
        assert_eq!(found.duplicates[1], vec![]);
        assert_eq!(found.duplicates[0], vec![Duplicate { checkpoint: "norm".into(), key: "blk.0.attn_norm".into(), of: "llamacpp".into() }]);
        assert!(found.copies.is_empty());
        // -0.0 and 0.0 are equal numbers but different bits: not a duplicate.
        let c = dump(&root, "tinygrad", -0.0, 2.0);
        let d = dump(&root, "zz", 0.0, 3.0);
        let sides = [Side { name: "tinygrad", dump: &c, votes: true }, Side { name: "zz", dump: &d, votes: true }];
        assert_eq!(find(&sides, &entries()), Found { duplicates: vec![vec![], vec![]], copies: vec![] });
        let _ = std::fs::remove_dir_all(root);
    }

    #[test]
    fn a_dump_identical_in_every_tensor_is_a_copy_and_the_truth_is_never_the_copy() {
        let root = temp("copy");
        let (a, b, t) = (dump(&root, "pytorch", 0.75, 1.0), dump(&root, "tinygrad", 0.75, 1.0), dump(&root, "aaa-truth", 0.75, 1.0));
        let sides = [Side { name: "tinygrad", dump: &b, votes: true }, Side { name: "pytorch", dump: &a, votes: true }];
        assert_eq!(find(&sides, &entries()).copies, vec![(0, 1)]);
        // Against the truth the vote is the copy, whatever the names' order.
        let sides = [Side { name: "aaa-truth", dump: &t, votes: false }, Side { name: "pytorch", dump: &a, votes: true }];
        let found = find(&sides, &entries());
        assert_eq!(found.copies, vec![(1, 0)]);
        assert!(found.duplicates.iter().all(Vec::is_empty), "the truth is no vote: no per-tensor flag against it");
        let _ = std::fs::remove_dir_all(root);
    }
}
