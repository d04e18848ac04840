//! The results data model every other harness module shares: what was compared and how it was judged.
//! Comparison produces it, reports and bundles render it, `parity merge` joins it. Serialized as JSON.

pub use crate::vocab::Role;
use crate::vocab::{Authorship, Judged, Metric, Op};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// How one tensor comparison ended. Anything but `Pass` (and a documented `NearTie`) fails the run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Every metric within its threshold.
    Pass,
    /// A metric outside its threshold.
    Fail,
    /// Present on one side only (or unavailable on the reference): never counted as a pass.
    Missing,
    /// Shape or dtype differ: compared no further, never broadcast.
    Layout,
    /// NaN or Inf on either side.
    NonFinite,
    /// Token sequences diverge, but at a step where the top-two logit gap (after the reference's
    /// tokens up to it) is within the near-tie threshold: reported, not hidden, and not counted as a failure.
    NearTie,
}

impl Status {
    pub fn is_failure(self) -> bool {
        !matches!(self, Status::Pass | Status::NearTie)
    }
}

/// One metric judged against its threshold.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Judgement {
    pub metric: Metric,
    pub value: f64,
    /// Which side of the threshold the value must stay.
    pub op: Op,
    pub threshold: f64,
    /// Distance to the threshold in the passing direction, as a fraction of the threshold
    /// (positive = room to spare, negative = failed by that much).
    pub margin: f64,
    pub pass: bool,
}

/// One catalog tensor (for one layer, if per-layer) of the engine against one reference.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CheckResult {
    pub checkpoint_id: u32,
    pub checkpoint: String,
    pub tensor: String,
    pub layer: Option<usize>,
    /// The dump key: `blk.3.attn_probs` or `logits`.
    pub key: String,
    pub status: Status,
    /// Every metric computed, judged or not (for drill-down).
    pub metrics: BTreeMap<String, f64>,
    pub judgements: Vec<Judgement>,
    /// Why it is missing, what the layout mismatch was, where tokens diverged...
    pub note: Option<String>,
}

/// The engine against one reference on one model, prompt and compute dtype.
/// Metrics of a `step_logits` check named `step_rel_rms.<t>`: the relative RMS error of generated
/// step t's logits (the harness writes them, reports chart them along the generation).
pub const STEP_METRIC: &str = "step_rel_rms.";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CaseResult {
    pub model: String,
    pub model_sha256: String,
    pub prompt: String,
    pub reference: String,
    pub reference_version: String,
    /// The tolerance class applied (`f32`, `quantized`, ...), from the suite; `bit-exact` for a
    /// repeat run of the engine. Named `dtype` in results.json since its first version.
    pub dtype: Judged,
    #[serde(default)]
    pub role: Role,
    pub checks: Vec<CheckResult>,
    /// Whose code computed each checkpoint, by checkpoint name (from checkpoints/provenance.toml,
    /// read by the harness). A checkpoint absent here was recorded before provenance was: `own`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub provenance: BTreeMap<String, Provenance>,
    /// Tensors this reference's dump holds bit for bit as another reference's did.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub duplicates: Vec<Duplicate>,
}

impl CaseResult {
    /// Whose code computed `checkpoint` here (`own` when unrecorded).
    pub fn authorship(&self, checkpoint: &str) -> Authorship {
        self.provenance.get(checkpoint).map_or(Authorship::Own, |p| p.kind)
    }
}

/// Whose code computed one checkpoint of one reference, and why when it is not the library's own.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Provenance {
    pub kind: Authorship,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A tensor involving arithmetic that two references dumped bit for bit alike: not two
/// independent computations, so the later reference (by name) is not counted at that checkpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Duplicate {
    pub checkpoint: String,
    /// The dump key (`blk.0.attn_norm`).
    pub key: String,
    /// The reference whose dump holds the same bits.
    pub of: String,
}

/// Everything one `parity run` (or one shard of it) produced.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunResults {
    pub run_id: String,
    /// The harness's (and its engine's) crate version.
    pub engine_version: String,
    /// The implementation judged (`engine`, a reference's name, an outside engine's); results
    /// from before subjects were named judged the engine.
    #[serde(default = "engine_subject")]
    pub subject: String,
    /// Its version: the engine's crate version, or what its dumps' manifests say.
    #[serde(default)]
    pub subject_version: String,
    /// Whose code computed each checkpoint of a dumped subject, by model id and checkpoint (a
    /// reference's from checkpoints/provenance.toml, an outside engine's from its manifests'
    /// `[provenance]`); empty for the engine, whose code is its own everywhere. Reports list the
    /// entries that are not `own`, so a pass there is never read as the subject's own evidence.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub subject_provenance: BTreeMap<String, BTreeMap<String, Provenance>>,
    pub cases: Vec<CaseResult>,
    /// References that could not run, with their one-line error (exit code 3 when non-empty).
    pub reference_errors: BTreeMap<String, String>,
}

fn engine_subject() -> String {
    "engine".to_string()
}

impl RunResults {
    /// "engine 0.1.0", "llamacpp b4779": the subject as reports name it.
    pub fn subject_label(&self) -> String {
        let version = if self.subject_version.is_empty() && self.subject == "engine" { &self.engine_version } else { &self.subject_version };
        if version.is_empty() {
            self.subject.clone()
        } else {
            format!("{} {version}", self.subject)
        }
    }
}
