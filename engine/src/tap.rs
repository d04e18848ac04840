//! Checkpoint taps: how the forward pass shows its intermediate tensors to an observer.
//!
//! The forward pass calls [`Taps::record`] once per canonical checkpoint with a closure that builds
//! the tensor in its canonical layout. With no observer attached the closure is never called, so
//! un-observed runs pay nothing for taps beyond one branch.

include!(concat!(env!("OUT_DIR"), "/tap.rs"));

impl Tap {
    /// The file stem a dump uses for this tensor: `blk.3.attn_probs` or `logits`.
    pub fn key(self, layer: Option<usize>) -> String {
        match layer {
            Some(l) => format!("blk.{l}.{}", self.name()),
            None => self.name().to_string(),
        }
    }

    /// Looks a tensor up by its catalog name.
    pub fn from_name(name: &str) -> Option<Tap> {
        Tap::ALL.iter().copied().find(|t| t.name() == name)
    }
}

/// A tensor as shown to an observer: row-major data and its shape.
#[derive(Clone, Debug, PartialEq)]
pub enum TapValue {
    F32 {
        shape: Vec<usize>,
        data: Vec<f32>,
    },
    /// A sequence of token ids, shape `[len]`.
    Ids(Vec<u32>),
    /// One token id, shape `[]` (the `argmax` checkpoint).
    Id(u32),
    /// Rows of token ids, shape `[rows, ids.len() / rows]` (the `sampled` checkpoint).
    IdRows {
        rows: usize,
        ids: Vec<u32>,
    },
}

impl TapValue {
    pub fn f32(shape: &[usize], data: Vec<f32>) -> TapValue {
        debug_assert_eq!(shape.iter().product::<usize>(), data.len(), "tap shape {shape:?} vs {} values", data.len());
        TapValue::F32 { shape: shape.to_vec(), data }
    }

    pub fn shape(&self) -> Vec<usize> {
        match self {
            TapValue::F32 { shape, .. } => shape.clone(),
            TapValue::Ids(ids) => vec![ids.len()],
            TapValue::Id(_) => vec![],
            TapValue::IdRows { rows, ids } => vec![*rows, ids.len().checked_div(*rows).unwrap_or(0)],
        }
    }
}

/// Receives every checkpoint tensor of a forward pass.
pub trait Observer {
    fn observe(&mut self, tap: Tap, layer: Option<usize>, value: TapValue);

    /// The next-token logits generated token `step` was chosen from (step 0: the prompt's last
    /// position), during [`crate::Model::trace`]. Not a checkpoint: it lets an observer judge how
    /// close each choice was without running the model again.
    fn step_logits(&mut self, _step: usize, _logits: &[f32]) {}
}

/// An observer that keeps everything it sees, keyed by [`Tap::key`].
#[derive(Default, Debug)]
pub struct Recorder {
    pub tensors: std::collections::BTreeMap<String, TapValue>,
}

impl Observer for Recorder {
    fn observe(&mut self, tap: Tap, layer: Option<usize>, value: TapValue) {
        self.tensors.insert(tap.key(layer), value);
    }
}

/// The optional observer threaded through a forward pass.
pub struct Taps<'a> {
    observer: Option<&'a mut dyn Observer>,
}

impl<'a> Taps<'a> {
    pub fn none() -> Taps<'static> {
        Taps { observer: None }
    }

    pub fn new(observer: &'a mut dyn Observer) -> Taps<'a> {
        Taps { observer: Some(observer) }
    }

    pub fn active(&self) -> bool {
        self.observer.is_some()
    }

    /// Records one checkpoint; `value` is only evaluated when an observer is attached.
    #[inline]
    pub fn record(&mut self, tap: Tap, layer: Option<usize>, value: impl FnOnce() -> TapValue) {
        if let Some(obs) = self.observer.as_deref_mut() {
            obs.observe(tap, layer, value());
        }
    }

    /// Shows the observer the logits generated token `step` is chosen from.
    #[inline]
    pub fn step_logits(&mut self, step: usize, logits: &[f32]) {
        if let Some(obs) = self.observer.as_deref_mut() {
            obs.step_logits(step, logits);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_catalog_tensor_has_a_tap_and_a_checkpoint() {
        let text = include_str!("../../checkpoints/catalog.toml");
        let n_tensor_tables = text.matches("[[tensor]]").count();
        assert_eq!(Tap::ALL.len(), n_tensor_tables);
        assert_eq!(Tap::AttnNorm.name(), "attn_norm");
        assert_eq!(Tap::AttnNorm.checkpoint(), 1);
        assert_eq!(Tap::Generated.checkpoint(), 12);
        assert!(Tap::KCache.per_layer());
        assert!(Tap::Argmax.is_ids() && !Tap::Logits.is_ids());
        assert_eq!(Tap::AttnProbs.key(Some(3)), "blk.3.attn_probs");
        assert_eq!(Tap::from_name("k_rope"), Some(Tap::KRope));
    }

    #[test]
    fn unobserved_taps_never_build_their_value() {
        let mut taps = Taps::none();
        taps.record(Tap::Logits, None, || panic!("built a tap value with no observer"));
    }
}
