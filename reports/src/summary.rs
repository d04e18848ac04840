//! The run regrouped the way every report shows it: per model/prompt/dtype ("subject"), a grid of
//! checkpoints x references, each cell holding its worst status, its smallest margin and where it was.
//! Also the run's verdict and exit code. Pure functions of [`RunResults`].

use crate::results::{CheckResult, Duplicate, Role, RunResults, Status};
use crate::vocab::{Authorship, Judged, Metric, Op};
use std::collections::{BTreeMap, BTreeSet};

/// The overall outcome of a run and the process exit code that goes with it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Something was compared and nothing failed; every reference ran.
    Pass,
    /// A check failed, or nothing was compared at all.
    Fail,
    /// Nothing failed, but a reference could not run.
    ReferenceError,
}

impl Verdict {
    /// Failures win over reference errors: a mismatch is the stronger finding.
    pub fn of(run: &RunResults) -> Verdict {
        let checks = run.cases.iter().flat_map(|c| &c.checks);
        let (mut any, mut failed) = (false, false);
        for check in checks {
            any = true;
            failed |= check.status.is_failure();
        }
        if failed || (!any && run.reference_errors.is_empty()) {
            Verdict::Fail
        } else if !run.reference_errors.is_empty() {
            Verdict::ReferenceError
        } else {
            Verdict::Pass
        }
    }

    pub fn exit_code(self) -> i32 {
        match self {
            Verdict::Pass => 0,
            Verdict::Fail => 1,
            Verdict::ReferenceError => 3,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Verdict::Pass => "PASS",
            Verdict::Fail => "FAIL",
            Verdict::ReferenceError => "REFERENCE ERROR",
        }
    }
}

/// Lowercase name of a status as written in every report.
pub fn status_name(status: Status) -> &'static str {
    match status {
        Status::Pass => "pass",
        Status::Fail => "fail",
        Status::Missing => "missing",
        Status::Layout => "layout",
        Status::NonFinite => "non-finite",
        Status::NearTie => "near-tie",
    }
}

/// Which status a cell shows when its checks differ: any failure outranks a near-tie outranks a pass.
fn severity(status: Status) -> u8 {
    match status {
        Status::Pass => 0,
        Status::NearTie => 1,
        Status::Missing => 2,
        Status::Fail => 3,
        Status::Layout => 4,
        Status::NonFinite => 5,
    }
}

/// The smallest margin in a cell and the judgement it came from.
#[derive(Clone, Debug, PartialEq)]
pub struct Worst {
    pub margin: f64,
    /// The dump key of the tensor (`blk.3.attn_probs`), which names layer and tensor.
    pub key: String,
    pub metric: Metric,
    pub value: f64,
    pub op: Op,
    pub threshold: f64,
}

/// Checks that did not pass, grouped by status and note so thirty identical layers read as one line.
#[derive(Clone, Debug, PartialEq)]
pub struct Finding {
    pub status: Status,
    pub note: String,
    pub keys: Vec<String>,
}

/// One checkpoint of one subject against one reference.
#[derive(Clone, Debug, PartialEq)]
pub struct Cell<'a> {
    pub status: Status,
    pub checks: usize,
    pub failed: usize,
    pub worst: Option<Worst>,
    pub findings: Vec<Finding>,
    /// Every check, in the order comparison produced them (for charts and JUnit details).
    pub raw: Vec<&'a CheckResult>,
    /// Whose code computed this checkpoint for this reference, and why when not its own.
    pub authorship: Authorship,
    pub reason: Option<&'a str>,
    /// Tensors of this checkpoint the reference dumped bit for bit as another reference did.
    pub duplicates: Vec<&'a Duplicate>,
}

/// One model, prompt and tolerance class, against all its references.
#[derive(Clone, Debug, PartialEq)]
pub struct Subject<'a> {
    pub model: String,
    pub prompt: String,
    pub dtype: Judged,
    /// Reference name and version, sorted by name.
    pub references: Vec<(String, String)>,
    /// The ground truth's name and version, when the subject was judged against one: its cells
    /// are keyed by its name like a reference's, but it is not one of `references`.
    pub truth: Option<(String, String)>,
    /// Checkpoint ids and names compared anywhere in the run, so a checkpoint this subject lacks shows.
    pub checkpoints: Vec<(u32, String)>,
    /// Keyed by (checkpoint id, reference name); absent = that reference compared nothing there.
    pub cells: BTreeMap<(u32, String), Cell<'a>>,
}

impl Subject<'_> {
    pub fn title(&self) -> String {
        format!("{} / {} ({})", self.model, self.prompt, self.dtype)
    }
}

/// Every checkpoint id and name compared anywhere in the run, by id.
pub fn checkpoints_in(run: &RunResults) -> Vec<(u32, String)> {
    let set: BTreeSet<(u32, String)> = run.cases.iter().flat_map(|c| &c.checks).map(|k| (k.checkpoint_id, k.checkpoint.clone())).collect();
    set.into_iter().collect()
}

impl Cell<'_> {
    /// Whether this cell is an independent vote: the library's own model code, no duplicate.
    pub fn independent(&self) -> bool {
        self.authorship == Authorship::Own && self.duplicates.is_empty()
    }

    /// ` [kernels]`, ` [ours]`, ` [duplicate of pytorch]`: what the tables append to a cell that is
    /// not an independent vote (empty for one that is).
    pub fn mark(&self) -> String {
        let mut out = String::new();
        if self.authorship != Authorship::Own {
            out += &format!(" [{}]", self.authorship);
        }
        let mut of: Vec<&str> = self.duplicates.iter().map(|d| d.of.as_str()).collect();
        of.sort_unstable();
        of.dedup();
        if !of.is_empty() {
            out += &format!(" [duplicate of {}]", of.join(", "));
        }
        out
    }

    /// The largest distance from the truth in noise units among the cell's checks, and where
    /// (`None` for a cell not judged by a noise floor).
    pub fn noisiest(&self) -> Option<(f64, &str)> {
        self.raw.iter().filter_map(|k| Some((*k.metrics.get(Metric::NoiseUnits.as_str())?, k.key.as_str()))).max_by(|a, b| a.0.total_cmp(&b.0))
    }
}

/// Regroups the run into subjects, sorted by model, prompt and dtype.
pub fn subjects(run: &RunResults) -> Vec<Subject<'_>> {
    let checkpoints = checkpoints_in(run);
    // Keyed by the dtype's name, so subjects keep the alphabetical order they always had.
    let mut by_key: BTreeMap<(String, String, &str), Subject> = BTreeMap::new();
    for case in &run.cases {
        let key = (case.model.clone(), case.prompt.clone(), case.dtype.as_str());
        let subject = by_key.entry(key).or_insert_with(|| Subject {
            model: case.model.clone(),
            prompt: case.prompt.clone(),
            dtype: case.dtype,
            references: Vec::new(),
            truth: None,
            checkpoints: checkpoints.clone(),
            cells: BTreeMap::new(),
        });
        let reference = (case.reference.clone(), case.reference_version.clone());
        if case.role == Role::Truth {
            subject.truth = Some(reference);
        } else if !subject.references.contains(&reference) {
            subject.references.push(reference);
            subject.references.sort();
        }
        for check in &case.checks {
            let cell = subject.cells.entry((check.checkpoint_id, case.reference.clone())).or_insert_with(|| {
                let mut cell = empty_cell();
                cell.authorship = case.authorship(&check.checkpoint);
                cell.reason = case.provenance.get(&check.checkpoint).and_then(|p| p.reason.as_deref());
                cell.duplicates = case.duplicates.iter().filter(|d| d.checkpoint == check.checkpoint).collect();
                cell
            });
            add_check(cell, check);
        }
    }
    by_key.into_values().collect()
}

fn empty_cell<'a>() -> Cell<'a> {
    Cell {
        status: Status::Pass,
        checks: 0,
        failed: 0,
        worst: None,
        findings: Vec::new(),
        raw: Vec::new(),
        authorship: Authorship::Own,
        reason: None,
        duplicates: Vec::new(),
    }
}

fn add_check<'a>(cell: &mut Cell<'a>, check: &'a CheckResult) {
    cell.checks += 1;
    if check.status.is_failure() {
        cell.failed += 1;
    }
    if severity(check.status) > severity(cell.status) {
        cell.status = check.status;
    }
    for j in &check.judgements {
        if cell.worst.as_ref().is_none_or(|w| j.margin < w.margin) {
            cell.worst = Some(Worst { margin: j.margin, key: check.key.clone(), metric: j.metric, value: j.value, op: j.op, threshold: j.threshold });
        }
    }
    if check.status != Status::Pass {
        let note = check.note.clone().unwrap_or_default();
        match cell.findings.iter_mut().find(|f| f.status == check.status && f.note == note) {
            Some(f) => f.keys.push(check.key.clone()),
            None => cell.findings.push(Finding { status: check.status, note, keys: vec![check.key.clone()] }),
        }
    }
    cell.raw.push(check);
}

/// Checkpoints some reference did not compute with its own model code: which, whose code, why,
/// and on which models. Every report lists them so no reader takes a cell for more than it is.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct NotOwn {
    pub reference: String,
    pub checkpoint_id: u32,
    pub checkpoint: String,
    pub authorship: Authorship,
    pub reason: String,
    pub models: Vec<String>,
}

/// The columns of [`NotOwn::cells`], as every report shows them.
pub const NOT_OWN_COLUMNS: [&str; 6] = ["reference", "#", "checkpoint", "code", "why", "models"];

impl NotOwn {
    /// The row's text, column by column (unescaped: each report escapes for its format).
    pub fn cells(&self) -> [String; 6] {
        [
            self.reference.clone(),
            format!("{:02}", self.checkpoint_id),
            self.checkpoint.clone(),
            self.authorship.to_string(),
            self.reason.clone(),
            self.models.join(", "),
        ]
    }
}

/// Every reference's, and a dumped subject's, checkpoints computed by code not its own, among
/// those the run compared.
pub fn not_own(run: &RunResults) -> Vec<NotOwn> {
    let mut rows: BTreeMap<(String, u32, String, Authorship, String), BTreeSet<String>> = BTreeMap::new();
    for case in &run.cases {
        let checkpoints: BTreeSet<(u32, &str)> = case.checks.iter().map(|k| (k.checkpoint_id, k.checkpoint.as_str())).collect();
        for (id, name) in checkpoints {
            let Some(p) = case.provenance.get(name).filter(|p| p.kind != Authorship::Own) else { continue };
            let key = (case.reference.clone(), id, name.to_string(), p.kind, p.reason.clone().unwrap_or_default());
            rows.entry(key).or_default().insert(case.model.clone());
        }
    }
    // A dumped subject's own entries: its checks there pass or fail on code that is not its own.
    let subject = format!("{} (the subject)", run.subject);
    for case in &run.cases {
        let Some(declared) = run.subject_provenance.get(&case.model) else { continue };
        for check in &case.checks {
            let Some(p) = declared.get(&check.checkpoint).filter(|p| p.kind != Authorship::Own) else { continue };
            let key = (subject.clone(), check.checkpoint_id, check.checkpoint.clone(), p.kind, p.reason.clone().unwrap_or_default());
            rows.entry(key).or_default().insert(case.model.clone());
        }
    }
    rows.into_iter()
        .map(|((reference, checkpoint_id, checkpoint, authorship, reason), models)| NotOwn {
            reference,
            checkpoint_id,
            checkpoint,
            authorship,
            reason,
            models: models.into_iter().collect(),
        })
        .collect()
}

/// `blk.0.q` .. `blk.29.q` style summary of a finding's keys: the first, and how many.
pub fn keys_summary(keys: &[String]) -> String {
    match keys {
        [] => String::new(),
        [one] => one.clone(),
        [first, rest @ ..] => format!("{first} and {} more", rest.len()),
    }
}

/// A margin as a signed percentage of its threshold, the way reports print it.
pub fn margin_text(margin: f64) -> String {
    format!("{:+.1}%", margin * 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixture;
    use crate::results::RunResults;

    #[test]
    fn a_run_with_one_failing_check_fails_with_exit_code_1() {
        let run = fixture::run();
        assert_eq!(Verdict::of(&run), Verdict::Fail);
        assert_eq!(Verdict::of(&run).exit_code(), 1);
    }

    #[test]
    fn a_run_that_compared_nothing_fails() {
        let run = RunResults {
            run_id: "r".into(),
            engine_version: "e".into(),
            subject: "engine".into(),
            subject_version: "e".into(),
            subject_provenance: Default::default(),
            cases: vec![],
            reference_errors: Default::default(),
        };
        assert_eq!(Verdict::of(&run), Verdict::Fail);
    }

    #[test]
    fn a_subjects_checkpoints_computed_by_other_code_are_listed_as_the_subjects() {
        use crate::results::Provenance;
        use crate::vocab::Authorship;
        let mut run = fixture::all_pass_run();
        run.subject = "candle".into();
        let model = run.cases[0].model.clone();
        let checkpoint = run.cases[0].checks[0].checkpoint.clone();
        let declared = [
            (checkpoint.clone(), Provenance { kind: Authorship::Ours, reason: Some("our sampler".into()) }),
            ("no-such-checkpoint".to_string(), Provenance { kind: Authorship::Kernels, reason: Some("never compared".into()) }),
        ];
        run.subject_provenance.insert(model.clone(), declared.into_iter().collect());
        let rows: Vec<NotOwn> = not_own(&run).into_iter().filter(|r| r.reference == "candle (the subject)").collect();
        assert_eq!(rows.len(), 1, "only checkpoints the run compared: {rows:?}");
        assert_eq!(
            (rows[0].checkpoint.as_str(), rows[0].authorship, rows[0].reason.as_str()),
            (checkpoint.as_str(), Authorship::Ours, "our sampler")
        );
        assert_eq!(rows[0].models, [model]);
    }

    #[test]
    fn reference_errors_without_failures_exit_3() {
        let mut run = fixture::all_pass_run();
        run.reference_errors.insert("tinygrad".into(), "import failed".into());
        assert_eq!(Verdict::of(&run).exit_code(), 3);
    }

    #[test]
    fn near_ties_alone_pass() {
        let run = fixture::all_pass_run();
        assert!(run.cases.iter().flat_map(|c| &c.checks).any(|k| k.status == Status::NearTie));
        assert_eq!(Verdict::of(&run), Verdict::Pass);
    }

    #[test]
    fn a_cell_keeps_its_smallest_margin_and_where_it_was() {
        let run = fixture::run();
        let subjects = subjects(&run);
        let llama = subjects.iter().find(|s| s.model == "tiny-llama-f32").expect("fixture subject");
        let cell = &llama.cells[&(2, "llamacpp".to_string())];
        let worst = cell.worst.as_ref().expect("judged");
        // Fixture: blk.1.k has the smallest max_abs margin of checkpoint 2 against llamacpp.
        assert_eq!(worst.key, "blk.1.k");
        assert!((worst.margin - 0.1).abs() < 1e-12, "{}", worst.margin);
        assert_eq!(cell.status, Status::Pass);
    }

    #[test]
    fn subjects_sort_by_model_and_show_checkpoints_they_lack() {
        let run = fixture::run();
        let subjects = subjects(&run);
        assert_eq!(subjects[0].model, "tiny-gpt2-hf");
        assert!(subjects[0].checkpoints.iter().any(|(id, _)| *id == 3));
        assert!(!subjects[0].cells.contains_key(&(3, "pytorch".to_string())));
    }

    #[test]
    fn identical_missing_layers_group_into_one_finding() {
        let run = fixture::run();
        let subjects = subjects(&run);
        let llama = subjects.iter().find(|s| s.model == "tiny-llama-f32").expect("fixture subject");
        let cell = &llama.cells[&(3, "tinygrad".to_string())];
        assert_eq!(cell.status, Status::Missing);
        assert_eq!(cell.findings.len(), 1);
        assert_eq!(cell.findings[0].keys, vec!["blk.0.k_cache", "blk.1.k_cache"]);
    }
}
