//! What `parity replay` found: each engine layer run on one implementation's own input to that
//! layer, its checkpoints judged against that implementation's (the layer's own error), beside the
//! plain run's error at the same checkpoint (own plus inherited). Rendered by `parity replay` and,
//! when a bundle has it, by report.html's layer x checkpoint map.

use crate::results::{CheckResult, Role};
use serde::{Deserialize, Serialize};

/// One case replayed on every implementation whose dump could be read.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CaseReplay {
    pub model: String,
    pub prompt: String,
    pub sides: Vec<SideReplay>,
}

/// The engine replayed on one reference's (or the truth's) inputs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SideReplay {
    pub reference: String,
    pub role: Role,
    /// Every replayed per-layer checkpoint, in forward order.
    pub cells: Vec<Cell>,
}

/// One layer's checkpoint: the replay's judgement and both errors, as distances relative to the
/// truth's scale (to this side's own scale when the case has no truth).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Cell {
    /// The replayed tensor against this side's: its judgement and metrics.
    pub own: CheckResult,
    /// Relative RMS distance of the replayed tensor from this side's.
    pub own_rms: Option<f64>,
    /// Relative RMS distance of the plain run's tensor from this side's.
    pub inherited_rms: Option<f64>,
    /// The one-layer noise floor (relative RMS) the own error is judged by; `None` without a truth.
    pub floor_rms: Option<f64>,
}

impl SideReplay {
    /// The first checkpoint, in forward order, whose own error fails.
    pub fn first_own_failure(&self) -> Option<&Cell> {
        self.cells.iter().find(|c| c.own.status.is_failure())
    }
}

impl CaseReplay {
    /// Where to look: the earliest layer whose own error fails against the truth, or without a
    /// truth against any reference (ties go to the earlier checkpoint).
    pub fn place_to_look(&self) -> Option<(&SideReplay, &Cell)> {
        let truth = self.sides.iter().filter(|s| s.role == Role::Truth).collect::<Vec<_>>();
        let judged = if truth.is_empty() { self.sides.iter().collect() } else { truth };
        judged
            .into_iter()
            .filter_map(|s| Some((s, s.first_own_failure()?)))
            .min_by_key(|(s, c)| (c.own.layer, s.cells.iter().position(|x| x.own.key == c.own.key)))
    }
}
