//! How much a run's agreement is worth: a level from 0 to 4, derived only from the results.
//!
//! The rule (also rendered verbatim in every report, see [`RULE`]):
//!
//! - **0 none**: any check failed (fail, missing, layout, non-finite), or nothing was compared.
//! - Otherwise, for every model/prompt/dtype and every checkpoint compared anywhere in the run, count
//!   the distinct references whose checks at that checkpoint all pass (a near-tie counts as agreeing)
//!   and that are independent there: the library's own model code computed it (provenance `own`;
//!   `kernels`, its tensor ops under model code of ours, re-checks our design and does not count),
//!   and none of its tensors there is bit-identical to another reference's (the later by name of
//!   two such is not counted). The smallest such count over the whole run, capped at 3, gives
//!   **+1 per independent reference**. A checkpoint some model/prompt did not compare at all
//!   counts zero references there.
//! - **+1 generation**: the `generated` checkpoint was compared for every model/prompt against
//!   every reference and every greedy continuation matched exactly, on top of at least one agreeing
//!   reference (a matching continuation alone, with some checkpoint unconfirmed, earns nothing). Near-ties earn no point: they
//!   are counted and named separately.
//!
//! Levels: 0 none, 1 low, 2 moderate, 3 high, 4 full.

use crate::results::{RunResults, Status};
use crate::summary::{self, Cell, Subject};
use crate::vocab::{Authorship, CheckpointName};
use serde::Serialize;
use std::collections::BTreeMap;

/// The checkpoint whose exact match earns the generation point, by name: its number moves when
/// the catalog grows (it was 12, then 13 once the decode layers came before it).
pub const GENERATED_CHECKPOINT: CheckpointName = CheckpointName::Generated;

/// The rule, as shown to readers of every report.
pub const RULE: &[&str] = &[
    "0 (none): any check failed (fail, missing, layout, non-finite), or nothing was compared.",
    "+1 for each independent reference (up to 3) that agrees on every checkpoint compared in the run, \
     for every model/prompt: the level counts the smallest number of agreeing independent references found anywhere \
     (a near-tie counts as agreeing).",
    "A reference is independent at a checkpoint only where the reference library's own model code computed it \
     (provenance `own`); `kernels` (its tensor ops under model code written in this repository) and `ours` \
     do not count, and of two references whose dumps there are bit-identical on a tensor involving arithmetic \
     only the first by name counts.",
    "+1 when the greedy continuation (checkpoint `generated`) matches exactly against every reference \
     for every model/prompt, given at least one agreeing reference; near-ties earn no point and are listed.",
    "Levels: 0 none, 1 low, 2 moderate, 3 high, 4 full.",
];

/// The levels' names, by level.
pub const LEVELS: [&str; 5] = ["none", "low", "moderate", "high", "full"];

/// A level given by number (`3`) or name (`high`), as a gate (`--min-confidence`) states it.
pub fn level_named(text: &str) -> Option<u8> {
    let text = text.trim();
    LEVELS
        .iter()
        .position(|name| name.eq_ignore_ascii_case(text))
        .or_else(|| text.parse::<usize>().ok().filter(|&l| l < LEVELS.len()))
        .map(|l| l as u8)
}

/// One model at a glance, for the reader who reads one table: what was compared, by how many
/// independent implementations, how close the engine came to the truth, and what no independent
/// implementation confirmed.
#[derive(Clone, Debug, PartialEq)]
pub struct Glance {
    pub model: String,
    pub prompts: usize,
    pub references: Vec<String>,
    /// `2 at every checkpoint`, or `1 to 3; 1 at embeddings`.
    pub independent: String,
    /// `at most 1.57 noise floors (blk.3.attn_out)`, or `no truth`.
    pub truth: String,
    pub generation: String,
    /// Checkpoints no independent implementation agreed on, or `nothing`.
    pub unconfirmed: String,
}

/// The columns of [`Glance::cells`].
pub const GLANCE_COLUMNS: [&str; 7] = [
    "model",
    "prompts",
    "references",
    "independent implementations per checkpoint",
    "subject from the f64 truth",
    "generation",
    "confirmed by no independent implementation",
];

/// What a reader needs to read the glance table.
pub const GLANCE_NOTE: &str = "A reference counts as an independent implementation at a checkpoint only where its own model code \
     computed it (see Provenance). The noise floor of a tensor is the largest distance of a reference computing in f32 from \
     the truth; the subject fails above 4 floors (plus 2^-20 of the tensor's scale, for tensors computed exactly).";

impl Glance {
    pub fn cells(&self) -> impl Iterator<Item = String> + '_ {
        [
            self.model.clone(),
            self.prompts.to_string(),
            self.references.join(", "),
            self.independent.clone(),
            self.truth.clone(),
            self.generation.clone(),
            self.unconfirmed.clone(),
        ]
        .into_iter()
    }
}

/// One [`Glance`] per model, in the run's order of subjects.
pub fn glance(run: &RunResults, c: &Confidence) -> Vec<Glance> {
    let subjects = summary::subjects(run);
    let mut models: Vec<&str> = subjects.iter().map(|s| s.model.as_str()).collect();
    models.dedup();
    models
        .into_iter()
        .map(|model| {
            let mine: Vec<&Subject> = subjects.iter().filter(|s| s.model == model).collect();
            let titles: Vec<String> = mine.iter().map(|s| s.title()).collect();
            let mut prompts: Vec<&str> = mine.iter().map(|s| s.prompt.as_str()).collect();
            prompts.dedup();
            let mut references: Vec<String> = mine.iter().flat_map(|s| s.references.iter().map(|(r, _)| r.clone())).collect();
            references.sort_unstable();
            references.dedup();
            let agreement: Vec<&Agreement> = c.agreement.iter().filter(|a| titles.contains(&a.subject)).collect();
            let fewest = agreement.iter().map(|a| a.independent.len()).min().unwrap_or(0);
            let most = agreement.iter().map(|a| a.independent.len()).max().unwrap_or(0);
            let at = |count: usize| {
                let mut names: Vec<&str> = agreement.iter().filter(|a| a.independent.len() == count).map(|a| a.checkpoint.as_str()).collect();
                names.sort_unstable();
                names.dedup();
                names.join(", ")
            };
            let independent =
                if fewest == most { format!("{fewest} at every checkpoint") } else { format!("{fewest} to {most}; {fewest} at {}", at(fewest)) };
            let truth = mine
                .iter()
                .filter_map(|s| {
                    let (name, _) = s.truth.as_ref()?;
                    s.checkpoints.iter().filter_map(|(id, _)| s.cells.get(&(*id, name.clone()))?.noisiest()).max_by(|a, b| a.0.total_cmp(&b.0))
                })
                .max_by(|a, b| a.0.total_cmp(&b.0))
                .map_or("no truth".to_string(), |(units, key)| format!("at most {units:.2} noise floors ({key})"));
            let generated: Vec<&Cell> = mine
                .iter()
                .flat_map(|s| s.cells.iter().filter(|((_, r), _)| s.references.iter().any(|(x, _)| x == r)).map(|(_, cell)| cell))
                .filter(|cell| cell.raw.iter().any(|k| GENERATED_CHECKPOINT.is(&k.checkpoint)))
                .collect();
            let ties = generated.iter().flat_map(|cell| &cell.raw).filter(|k| k.status == Status::NearTie).count();
            let generation = match (generated.is_empty(), generated.iter().all(|cell| cell.status == Status::Pass), ties) {
                (true, _, _) => "not compared".to_string(),
                (false, true, _) => "exact against every reference".to_string(),
                (false, false, 0) => "differs".to_string(),
                (false, false, n) => format!("{n} near-tie(s): a flip the noise explains"),
            };
            let unconfirmed = if fewest > 0 { "nothing".to_string() } else { at(0) };
            Glance { model: model.to_string(), prompts: prompts.len(), references, independent, truth, generation, unconfirmed }
        })
        .collect()
}

/// How many references agree on one checkpoint of one model/prompt.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Agreement {
    pub subject: String,
    pub checkpoint_id: u32,
    pub checkpoint: String,
    pub agreeing: Vec<String>,
    pub disagreeing: Vec<String>,
    /// The agreeing references counted: independent at this checkpoint.
    pub independent: Vec<String>,
    /// Agreeing references not counted, each with why: `tinygrad (kernels: our attention core)`.
    pub not_counted: Vec<String>,
}

/// A checkpoint that rests on fewer than three independent references somewhere in the run.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Thin {
    pub checkpoint_id: u32,
    pub checkpoint: String,
    /// The fewest independent agreeing references at it over the run's model/prompts, and where.
    pub independent: usize,
    pub subject: String,
    pub not_counted: Vec<String>,
}

/// The graded run.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Confidence {
    pub level: u8,
    pub name: &'static str,
    /// Checks that failed; any makes the level 0.
    pub failures: usize,
    pub checks: usize,
    /// The smallest number of independent references agreeing on any checkpoint (uncapped).
    pub min_agreeing_references: usize,
    /// Checkpoints resting on fewer than three independent references, by id.
    pub thin: Vec<Thin>,
    /// Every continuation compared matched exactly.
    pub generation_matches: bool,
    /// `subject checkpoint reference: note` for every near-tie in the run.
    pub near_ties: Vec<String>,
    pub agreement: Vec<Agreement>,
}

impl Confidence {
    pub fn of(run: &RunResults) -> Confidence {
        let all = run.cases.iter().flat_map(|c| &c.checks);
        let checks = all.clone().count();
        let failures = all.filter(|k| k.status.is_failure()).count();
        let subjects = summary::subjects(run);
        let agreement: Vec<Agreement> = subjects.iter().flat_map(agreement_of).collect();
        let min_agreeing_references = agreement.iter().map(|a| a.independent.len()).min().unwrap_or(0);
        let thin = thin(&agreement);
        let generation_matches = !subjects.is_empty() && subjects.iter().all(generation_matches);
        let near_ties = near_ties(&subjects);

        let level = if failures > 0 || checks == 0 {
            0
        } else {
            let references = min_agreeing_references.min(3) as u8;
            references + u8::from(generation_matches && references > 0)
        };
        let name = LEVELS[level as usize];
        Confidence { level, name, failures, checks, min_agreeing_references, thin, generation_matches, near_ties, agreement }
    }

    /// `3/4 (high)`.
    pub fn label(&self) -> String {
        format!("{}/4 ({})", self.level, self.name)
    }
}

fn agreement_of(subject: &Subject) -> Vec<Agreement> {
    subject
        .checkpoints
        .iter()
        .map(|(id, name)| {
            let (mut agreeing, mut disagreeing, mut independent, mut not_counted) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            for (reference, _) in &subject.references {
                match subject.cells.get(&(*id, reference.clone())) {
                    Some(cell) if cell.failed == 0 => {
                        agreeing.push(reference.clone());
                        if cell.independent() {
                            independent.push(reference.clone());
                        } else {
                            not_counted.push(why_not_counted(reference, cell));
                        }
                    }
                    Some(_) => disagreeing.push(reference.clone()),
                    None => {}
                }
            }
            Agreement { subject: subject.title(), checkpoint_id: *id, checkpoint: name.clone(), agreeing, disagreeing, independent, not_counted }
        })
        .collect()
}

/// `tinygrad (kernels)`, `tinygrad (bit-identical to pytorch at blk.0.q)`; the reasons for a
/// kind are in the reports' provenance table, once per reference and checkpoint.
fn why_not_counted(reference: &str, cell: &Cell) -> String {
    let mut why = Vec::new();
    if cell.authorship != Authorship::Own {
        why.push(cell.authorship.to_string());
    }
    if let Some(d) = cell.duplicates.first() {
        why.push(format!("bit-identical to {} at {}", d.of, d.key));
    }
    format!("{reference} ({})", why.join("; "))
}

/// Per checkpoint, its least-covered model/prompt when that has fewer than three independent references.
fn thin(agreement: &[Agreement]) -> Vec<Thin> {
    let mut fewest: BTreeMap<u32, &Agreement> = BTreeMap::new();
    for a in agreement {
        let slot = fewest.entry(a.checkpoint_id).or_insert(a);
        if a.independent.len() < slot.independent.len() {
            *slot = a;
        }
    }
    fewest
        .into_values()
        .filter(|a| a.independent.len() < 3)
        .map(|a| Thin {
            checkpoint_id: a.checkpoint_id,
            checkpoint: a.checkpoint.clone(),
            independent: a.independent.len(),
            subject: a.subject.clone(),
            not_counted: a.not_counted.clone(),
        })
        .collect()
}

fn generation_matches(subject: &Subject) -> bool {
    subject.references.iter().all(|(reference, _)| {
        let generated = subject.cells.iter().find(|((_, r), cell)| r == reference && cell.raw.iter().any(|k| GENERATED_CHECKPOINT.is(&k.checkpoint)));
        generated.is_some_and(|(_, cell)| cell.raw.iter().all(|k| k.status == Status::Pass))
    })
}

fn near_ties(subjects: &[Subject]) -> Vec<String> {
    let mut out = Vec::new();
    for subject in subjects {
        for ((id, reference), cell) in &subject.cells {
            for check in cell.raw.iter().filter(|k| k.status == Status::NearTie) {
                let note = check.note.as_deref().unwrap_or("no note");
                out.push(format!("{} {id:02} {} against {reference}: {note}", subject.title(), check.key));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::{Duplicate, Provenance};

    #[test]
    fn a_gate_level_is_read_by_number_or_name_and_nothing_else() {
        assert_eq!(level_named("high"), Some(3));
        assert_eq!(level_named(" Full "), Some(4));
        assert_eq!(level_named("0"), Some(0));
        assert_eq!(level_named("2"), Some(2));
        for bad in ["5", "-1", "3.0", "hi", "", "high-ish"] {
            assert_eq!(level_named(bad), None, "{bad:?}");
        }
    }
    use crate::fixture;

    #[test]
    fn any_failure_makes_the_level_zero() {
        let c = Confidence::of(&fixture::run());
        assert_eq!((c.level, c.name), (0, "none"));
        // Fixture: 2 missing tinygrad k_cache layers and 1 failing tinygrad logits.
        assert_eq!(c.failures, 3);
    }

    #[test]
    fn three_agreeing_references_with_a_near_tie_in_generation_is_level_three() {
        let c = Confidence::of(&fixture::all_pass_run());
        assert_eq!(c.min_agreeing_references, 3);
        assert!(!c.generation_matches);
        assert_eq!(c.level, 3);
        assert_eq!(c.near_ties.len(), 1);
        assert!(c.near_ties[0].contains("against pytorch"), "{}", c.near_ties[0]);
    }

    #[test]
    fn exact_generation_against_every_reference_adds_one() {
        let mut run = fixture::all_pass_run();
        for check in run.cases.iter_mut().flat_map(|c| &mut c.checks) {
            if check.status == Status::NearTie {
                check.status = Status::Pass;
            }
        }
        let c = Confidence::of(&run);
        assert_eq!((c.level, c.name), (4, "full"));
    }

    #[test]
    fn the_generation_point_follows_the_generated_checkpoint_whatever_its_number() {
        // Renumbered as the catalog grew: a passing checkpoint now holds the old number 12, and
        // the near-tie is in `generated` at 13. The near-tie must still withhold the point.
        let mut run = fixture::all_pass_run();
        for check in run.cases.iter_mut().flat_map(|c| &mut c.checks) {
            if GENERATED_CHECKPOINT.is(&check.checkpoint) {
                check.checkpoint_id = 13;
            }
        }
        let mut decode = run.cases[0].checks[0].clone();
        (decode.checkpoint_id, decode.checkpoint, decode.status) = (12, CheckpointName::DecodeLayers.to_string(), Status::Pass);
        for case in &mut run.cases {
            case.checks.push(decode.clone());
        }
        let c = Confidence::of(&run);
        assert!(!c.generation_matches);
        assert_eq!(c.level, 3);
    }

    #[test]
    fn the_least_covered_model_sets_the_reference_count() {
        let mut run = fixture::all_pass_run();
        let mut single = run.cases[0].clone();
        single.model = "tiny-gpt2-hf".into();
        run.cases.push(single);
        let c = Confidence::of(&run);
        assert_eq!(c.min_agreeing_references, 1);
        // One reference, and generation is not exact everywhere (the llama pytorch near-tie).
        assert_eq!(c.level, 1);
    }

    #[test]
    fn a_checkpoint_one_model_never_compared_counts_zero_references() {
        let mut run = fixture::all_pass_run();
        let mut partial = run.cases[0].clone();
        partial.model = "tiny-gpt2-hf".into();
        partial.checks.retain(|k| k.checkpoint_id != 2);
        run.cases.push(partial);
        let c = Confidence::of(&run);
        assert_eq!(c.min_agreeing_references, 0);
        assert_eq!(c.level, 0);
    }

    #[test]
    fn matching_generation_alone_earns_nothing() {
        let mut run = fixture::all_pass_run();
        run.cases.truncate(1);
        let mut partial = run.cases[0].clone();
        partial.model = "tiny-gpt2-hf".into();
        partial.checks.retain(|k| k.checkpoint_id != 2);
        run.cases.push(partial);
        let c = Confidence::of(&run);
        assert!(c.generation_matches);
        assert_eq!(c.level, 0);
    }

    #[test]
    fn a_reference_running_our_model_code_is_not_counted_there() {
        // Three agreeing references; tinygrad's qkv is its kernels under our code: two count at qkv.
        let mut run = fixture::all_pass_run();
        let kernels = Provenance { kind: Authorship::Kernels, reason: Some("our projection code".into()) };
        run.cases[2].provenance.insert("qkv".into(), kernels);
        let c = Confidence::of(&run);
        assert_eq!(c.min_agreeing_references, 2);
        assert_eq!(c.level, 2);
        assert_eq!(c.thin.len(), 1);
        assert_eq!((c.thin[0].checkpoint_id, c.thin[0].independent), (2, 2));
        assert_eq!(c.thin[0].not_counted, vec!["tinygrad (kernels)".to_string()]);
        // `ours` counts no more than `kernels`; `own` as recorded is what absence means.
        run.cases[2].provenance.insert("qkv".into(), Provenance { kind: Authorship::Ours, reason: None });
        run.cases[1].provenance.insert("qkv".into(), Provenance { kind: Authorship::Own, reason: None });
        assert_eq!(Confidence::of(&run).min_agreeing_references, 2);
    }

    #[test]
    fn a_bit_identical_duplicate_costs_its_reference_the_checkpoint() {
        let mut run = fixture::all_pass_run();
        run.cases[2].duplicates.push(Duplicate { checkpoint: "logits".into(), key: "logits".into(), of: "pytorch".into() });
        let c = Confidence::of(&run);
        assert_eq!(c.level, 2);
        let logits: Vec<&Thin> = c.thin.iter().filter(|t| t.checkpoint == "logits").collect();
        assert_eq!(logits.len(), 1);
        assert_eq!(logits[0].not_counted, vec!["tinygrad (bit-identical to pytorch at logits)".to_string()]);
        // Every other checkpoint still rests on three.
        assert_eq!(c.thin.len(), 1);
    }

    #[test]
    fn nothing_compared_is_level_zero() {
        let mut run = fixture::all_pass_run();
        run.cases.clear();
        assert_eq!(Confidence::of(&run).level, 0);
    }
}
