//! `parity reduce`'s search for the smallest reproducer of a failing case: which layers to keep,
//! which prompt prefixes can stand as prompts, and the bisection over those prefixes. The trials
//! themselves (a cut-down model, [`crate::shrink`], through the pipeline) are the command's.

use crate::catalog::Entry;
use engine::tokenizer::Tokenizer;

/// How many blocks a model must keep to compute checkpoint `key` as the whole model does: the
/// layers up to and including its own; one for a checkpoint before the first layer
/// (`embeddings`); all of them for one after the last (the head, decode steps) or not in `entries`.
pub fn layers_needed(entries: &[Entry], key: &str, n_layers: usize) -> usize {
    let Some(at) = entries.iter().position(|e| e.key == key) else { return n_layers };
    match entries[at].layer {
        Some(l) => (l + 1).min(n_layers),
        None if entries[..at].iter().all(|e| e.layer.is_none()) => 1.min(n_layers),
        None => n_layers,
    }
}

/// A prompt cut after its first `tokens` tokens (BOS not counted), as text.
#[derive(Clone, Debug, PartialEq)]
pub struct Prefix {
    pub tokens: usize,
    pub text: String,
}

/// The token prefixes of `prompt` that can stand as prompts, shortest first: those whose text
/// tokenizes back to exactly those tokens (cutting inside a word may not). The last is the
/// whole prompt, as given.
pub fn prefixes(tokenizer: &Tokenizer, prompt: &str) -> Vec<Prefix> {
    let ids = tokenizer.encode(prompt);
    let bos = usize::from(tokenizer.add_bos() && tokenizer.bos_id().is_some() && ids.first() == tokenizer.bos_id().as_ref());
    let n = ids.len() - bos;
    let mut out: Vec<Prefix> = (1..n)
        .filter_map(|k| {
            let text = tokenizer.decode(&ids[bos..bos + k]);
            (tokenizer.encode(&text) == ids[..bos + k]).then_some(Prefix { tokens: k, text })
        })
        .collect();
    out.push(Prefix { tokens: n, text: prompt.to_string() });
    out
}

/// Where [`shortest_failing`] ended and what it tried on the way.
#[derive(Clone, Debug, PartialEq)]
pub struct Search {
    /// The index of the shortest candidate found to fail.
    pub found: usize,
    /// Each trial in order: the candidate's index and whether it failed.
    pub trials: Vec<(usize, bool)>,
}

/// The shortest of `n` candidates (ordered by size, the last known to fail) that fails: the first
/// candidate is tried, then the range between the longest known pass and the shortest known
/// failure is halved. What is returned failed, and the candidate before it passed (or it is the
/// first): a boundary, the shortest failure if failing is monotone in size. At most
/// 1 + ceil(log2(n)) trials.
pub fn shortest_failing<E>(n: usize, mut fails: impl FnMut(usize) -> Result<bool, E>) -> Result<Search, E> {
    let mut trials = Vec::new();
    let mut hi = n.saturating_sub(1);
    if n <= 1 {
        return Ok(Search { found: hi, trials });
    }
    let first = fails(0)?;
    trials.push((0, first));
    if first {
        return Ok(Search { found: 0, trials });
    }
    let mut lo = 0;
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        let failed = fails(mid)?;
        trials.push((mid, failed));
        if failed {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    Ok(Search { found: hi, trials })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Catalog;

    #[test]
    fn the_search_returns_the_boundary_of_a_monotone_failure_within_its_trial_budget() {
        for n in 1..40usize {
            for boundary in 0..n {
                let mut calls = 0;
                let search = shortest_failing::<()>(n, |i| {
                    calls += 1;
                    Ok(i >= boundary)
                })
                .unwrap();
                assert_eq!(search.found, boundary, "n {n}, boundary {boundary}");
                let budget = 1 + (n as f64).log2().ceil() as usize;
                assert!(calls <= budget, "n {n}: {calls} trials > {budget}");
                assert_eq!(search.trials.len(), calls);
            }
        }
    }

    #[test]
    fn a_non_monotone_failure_still_ends_on_a_failure_after_a_pass() {
        // Fails at 3, 4 and 9 only (9 is the whole prompt).
        let fails = |i: usize| Ok::<_, ()>(matches!(i, 3 | 4 | 9));
        let search = shortest_failing(10, fails).unwrap();
        assert!(fails(search.found).unwrap());
        assert!(search.found == 0 || search.trials.iter().any(|&(i, f)| i + 1 == search.found && !f), "{search:?}");
    }

    #[test]
    fn a_checkpoint_needs_the_layers_up_to_its_own_and_the_head_needs_all() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let catalog = Catalog::load(&root.join("checkpoints/catalog.toml")).unwrap();
        let entries = catalog.entries("llama", 30);
        assert_eq!(layers_needed(&entries, "blk.0.attn_norm", 30), 1);
        assert_eq!(layers_needed(&entries, "blk.17.block_out", 30), 18);
        assert_eq!(layers_needed(&entries, "embed", 30), 1);
        assert_eq!(layers_needed(&entries, "logits", 30), 30);
        assert_eq!(layers_needed(&entries, "final_norm", 30), 30);
        assert_eq!(layers_needed(&entries, "no.such.key", 30), 30);
    }

    #[test]
    fn every_prefix_offered_tokenizes_back_to_the_prompts_first_tokens() {
        let model = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/models/tiny-llama/model-f32.gguf");
        let file = engine::gguf::GgufFile::open(&model).unwrap();
        let tokenizer = Tokenizer::from_gguf(&file).unwrap();
        let prompt = "The capital of France is Paris, déjà 3.14";
        let all = tokenizer.encode(prompt);
        let found = prefixes(&tokenizer, prompt);
        assert_eq!(found.last().unwrap().text, prompt);
        assert!(found.len() > 3, "{found:?}");
        let bos = all.len() - found.last().unwrap().tokens;
        for p in &found {
            assert_eq!(tokenizer.encode(&p.text), all[..bos + p.tokens], "{p:?}");
        }
        assert!(found.windows(2).all(|w| w[0].tokens < w[1].tokens));
    }
}
