//! The results data model every other harness module shares: what was compared and how it was judged.
//! Comparison produces it, reports and bundles render it, `parity merge` joins it. Serialized as JSON.

pub use crate::vocab::Role;
use crate::vocab::{Judged, Metric, Op};
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
}

/// Everything one `parity run` (or one shard of it) produced.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunResults {
    pub run_id: String,
    pub engine_version: String,
    pub cases: Vec<CaseResult>,
    /// References that could not run, with their one-line error (exit code 3 when non-empty).
    pub reference_errors: BTreeMap<String, String>,
}
