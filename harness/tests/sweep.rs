//! `parity sweep`'s judging on real dumps: the position axis names the first window a planted
//! RoPE bug reaches and passes every window before it, and the reruns of the thread and prefill
//! axes judge the whole case as a run does.
//!
//! The fixture tests read the committed dumps of the default suite. The long-context test reads
//! `checkpoints/suite-long.toml`'s dumps (`scripts/make-dumps.sh checkpoints/suite-long.toml`,
//! which `.ci/run` runs); without them it says so and passes, unless `PARITY_REQUIRE_REFERENCES`
//! is set (CI sets it).

mod common;

use common::{root, run_engine, Checkpoints};
use engine::fault::Fault;
use engine::Prefill;
use harness::pipeline::{Setup, Source};
use harness::subject::Subject;
use harness::suite::{resolve, Suite};
use harness::sweep;
use reports::sweep::{Boundary, Point};

/// `suite` cut to one model and one prompt.
fn one_case(path: &str, model: &str, prompt: &str) -> Suite {
    let mut suite = Suite::load(&root().join(path)).unwrap();
    suite.models.retain(|m| m.id == model);
    suite.prompts.retain(|p| p.id == prompt);
    assert_eq!(suite.cases().len(), 1, "{path}: {model} x {prompt}");
    suite
}

/// The position axis of the suite's one case with `fault` planted, in windows of `window`.
fn positions(suite: &Suite, fault: Option<Fault>, window: usize) -> reports::sweep::Sweep {
    let checkpoints = Checkpoints::load();
    let (_, runs) = run_engine(&checkpoints, suite, suite.cases(), fault, "sweep");
    let entries = checkpoints.catalog.entries("llama", 2);
    sweep::positions(&runs[0], &entries, &checkpoints.spec, window).unwrap()
}

fn ats(points: &[Point]) -> Vec<&str> {
    points.iter().map(|p| p.at.as_str()).collect()
}

#[test]
fn the_position_axis_passes_a_clean_engine_and_names_the_first_window_a_wrapping_rope_table_reaches() {
    // tiny-llama's `fox` prompt is 27 tokens and the suite decodes 8 steps: positions 0..34.
    let suite = one_case("checkpoints/suite.toml", "tiny-llama-f32", "fox");
    let clean = positions(&suite, None, 4);
    assert_eq!(ats(&clean.points), ["0..4", "4..8", "8..12", "12..16", "16..20", "20..24", "24..28", "28..32", "32..34"]);
    assert!(clean.points.iter().all(|p| !p.failed && p.margin > 0.0), "{}", clean.table());
    assert_eq!(clean.boundary(), None);
    // Every window before position 8 is untouched by a table of 8 positions, every one after fails.
    let planted = positions(&suite, Some(Fault::RopeTableWrap { positions: 8 }), 4);
    assert_eq!(planted.boundary(), Some(Boundary { last_pass: Some(1), first_fail: 2 }), "{}", planted.table());
    assert!(planted.points[2..].iter().all(|p| p.failed), "{}", planted.table());
    assert!(planted.points[2].worst.contains("dec_k_cache"), "the keys after RoPE show it first: {}", planted.points[2].worst);
    // A window of the prompt holds no step_logits row, a window of the decode does.
    assert!(planted.points[0].checks < planted.points[8].checks);
}

#[test]
fn reruns_on_other_threads_and_prefills_judge_the_whole_case_as_a_run_does() {
    let checkpoints = Checkpoints::load();
    let root = root();
    let suite = one_case("checkpoints/suite.toml", "tiny-llama-f32", "fox");
    let source = Source::Dumps(resolve(&root, &suite.dumps));
    let base = Setup {
        root: &root,
        suite: &suite,
        catalog: &checkpoints.catalog,
        spec: &checkpoints.spec,
        provenance: &checkpoints.provenance,
        source: &source,
        subject: &Subject::Engine,
        prepare: None,
    };
    let case = &suite.cases()[0];
    let nothing = |_: &mut engine::Model| {};
    let (results, runs) = run_engine(&checkpoints, &suite, suite.cases(), None, "sweep");
    let as_run = sweep::whole_case("run", &runs[0], &results);
    assert!(!as_run.failed, "{as_run:?}");
    for (threads, prefill) in [(1, Prefill::OneBatch), (2, Prefill::Chunks(5)), (2, Prefill::Chunks(1))] {
        let point = sweep::rerun(&base, case, "x", threads, prefill, &nothing).unwrap();
        assert!(!point.failed, "{threads} threads, {prefill}: {point:?}");
        assert_eq!(point.checks, as_run.checks, "{threads} threads, {prefill}");
    }
    let planted = |m: &mut engine::Model| m.inject_fault(Fault::RopeTableWrap { positions: 8 });
    let point = sweep::rerun(&base, case, "x", 1, Prefill::Chunks(1), &planted).unwrap();
    assert!(point.failed && point.margin < 0.0, "{point:?}");
}

#[test]
fn a_sweep_to_position_8192_finds_a_rope_bug_that_waits_past_4096() {
    let suite = one_case("checkpoints/suite-long.toml", "tiny-llama-8k", "fox");
    let case_dir = resolve(&root(), &suite.dumps).join("tiny-llama-8k/fox");
    let wanted = ["llamacpp", "pytorch", "pytorch-f64"];
    if let Some(absent) = wanted.iter().find(|r| !case_dir.join(r).join("manifest.toml").is_file()) {
        let why = format!("no {absent} dump at {}: run scripts/make-dumps.sh checkpoints/suite-long.toml", case_dir.display());
        assert!(std::env::var_os("PARITY_REQUIRE_REFERENCES").is_none(), "{why}");
        eprintln!("skipped: {why}");
        return;
    }
    let clean = positions(&suite, None, 512);
    assert_eq!(clean.points.len(), 16);
    assert_eq!(clean.points.last().map(|p| p.at.as_str()), Some("7680..8191"));
    assert_eq!(clean.boundary(), None, "{}", clean.table());
    let planted = positions(&suite, Some(Fault::RopeTableWrap { positions: 4096 }), 512);
    assert_eq!(planted.boundary(), Some(Boundary { last_pass: Some(7), first_fail: 8 }), "{}", planted.table());
    assert_eq!(planted.points[8].at, "4096..4608");
    assert!(planted.points[8..].iter().all(|p| p.failed), "{}", planted.table());
}
