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

/// The decode steps whose layer taps are recorded (checkpoint `decode_layers`): the distinct steps
/// among 1, N/2 and N-1 (first, middle, last), ascending; none when N < 2. Step t (1 <= t < N)
/// feeds history token t-1 at position T+t-1 through the KV cache and gives `step_logits` row t.
/// The dumpers' copy is `dumpkit.decode_steps`.
pub fn decode_steps(n_generate: usize) -> Vec<usize> {
    if n_generate < 2 {
        return Vec::new();
    }
    let mut steps = vec![1, n_generate / 2, n_generate - 1];
    steps.dedup(); // ascending already: 1 <= N/2 <= N-1
    steps
}

/// Gathers the taps of the chosen decode steps into the `decode_layers` tensors: a step's
/// one-position `<name>` becomes row s of `dec_<name>` `[S, ...]`, its position axis (the
/// attention row, the cache) zero-padded to the full context. Attach it to those steps' forward
/// passes, then [`DecodeStack::finish`] records the stacks.
pub struct DecodeStack {
    steps: Vec<usize>,
    n_layers: usize,
    /// Each decode tap this model has, with its shape per step (after the leading S axis).
    shapes: Vec<(Tap, Vec<usize>)>,
    rows: std::collections::BTreeMap<(Tap, usize), Vec<f32>>,
}

impl DecodeStack {
    pub fn new(steps: Vec<usize>, n_layers: usize, shapes: Vec<(Tap, Vec<usize>)>) -> DecodeStack {
        DecodeStack { steps, n_layers, shapes, rows: Default::default() }
    }

    /// Whether decode step `step` is one whose taps are kept.
    pub fn wants(&self, step: usize) -> bool {
        self.steps.contains(&step)
    }

    /// Records every layer's stacked decode taps (`[0, ...]` when no step was chosen). A stack
    /// that did not get one row per step is left out: the harness then reports it missing.
    pub fn finish(mut self, taps: &mut Taps) {
        for l in 0..self.n_layers {
            for (tap, shape) in &self.shapes {
                let rows = self.rows.remove(&(*tap, l)).unwrap_or_default();
                let full: Vec<usize> = std::iter::once(self.steps.len()).chain(shape.iter().copied()).collect();
                if rows.len() == full.iter().product::<usize>() {
                    taps.record(*tap, Some(l), || TapValue::f32(&full, rows));
                }
            }
        }
    }
}

impl Observer for DecodeStack {
    fn observe(&mut self, tap: Tap, layer: Option<usize>, value: TapValue) {
        let (Some(dec), Some(l), TapValue::F32 { shape, data }) = (tap.decoded(), layer, value) else { return };
        let Some((_, want)) = self.shapes.iter().find(|(t, _)| *t == dec) else { return };
        if let Some(row) = pad_one_position(&shape, &data, want) {
            self.rows.entry((dec, l)).or_default().extend(row);
        }
    }
}

/// A one-position tap (`[1, d]`, `[H, 1, len]`, `[KV, len, hd]`) in the per-step layout `want`:
/// its size-1 position axis dropped, and the one axis shorter than `want`'s zero-padded at the end.
/// `None` when it does not fit.
fn pad_one_position(shape: &[usize], data: &[f32], want: &[usize]) -> Option<Vec<f32>> {
    let mut got = shape.to_vec();
    if got.len() == want.len() + 1 {
        got.remove(got.iter().position(|&n| n == 1)?);
    }
    let differ: Vec<usize> = (0..want.len()).filter(|&i| got.get(i) != want.get(i)).collect();
    if got.len() != want.len() || differ.len() > 1 || data.len() != got.iter().product::<usize>() {
        return None;
    }
    let Some(&axis) = differ.first() else { return Some(data.to_vec()) };
    if got[axis] > want[axis] {
        return None;
    }
    let inner: usize = want[axis + 1..].iter().product();
    let (from, to) = (got[axis] * inner, want[axis] * inner);
    let outer: usize = want[..axis].iter().product();
    let mut out = Vec::with_capacity(outer * to);
    for o in 0..outer {
        out.extend_from_slice(&data[o * from..(o + 1) * from]);
        out.resize((o + 1) * to, 0.0);
    }
    Some(out)
}

/// The optional observer threaded through a forward pass.
pub struct Taps<'a> {
    observer: Option<&'a mut dyn Observer>,
}

impl<'a> Taps<'a> {
    pub fn none() -> Taps<'a> {
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
        assert_eq!(Tap::Generated.checkpoint(), 13);
        assert_eq!(Tap::DecQRope.checkpoint(), 12);
        assert_eq!((Tap::QRope.decoded(), Tap::BlockOut.decoded(), Tap::Logits.decoded()), (Some(Tap::DecQRope), Some(Tap::DecBlockOut), None));
        assert!(Tap::KCache.per_layer());
        assert!(Tap::Argmax.is_ids() && !Tap::Logits.is_ids());
        assert_eq!(Tap::AttnProbs.key(Some(3)), "blk.3.attn_probs");
        assert_eq!(Tap::from_name("k_rope"), Some(Tap::KRope));
    }

    #[test]
    fn decode_steps_are_first_middle_and_last_without_repeats() {
        assert_eq!(decode_steps(0), Vec::<usize>::new());
        assert_eq!(decode_steps(1), Vec::<usize>::new());
        assert_eq!(decode_steps(2), vec![1]);
        assert_eq!(decode_steps(3), vec![1, 2]);
        assert_eq!(decode_steps(4), vec![1, 2, 3]);
        assert_eq!(decode_steps(8), vec![1, 4, 7]);
        assert_eq!(decode_steps(32), vec![1, 16, 31]);
    }

    #[test]
    fn a_decode_stack_pads_each_step_to_the_full_context_and_stacks_the_steps() {
        // Context 4: an attention row [H = 2, 1, len] and a cache [KV = 1, len, hd = 2] at two steps.
        let shapes = vec![(Tap::DecAttnProbs, vec![2, 4]), (Tap::DecKCache, vec![1, 4, 2]), (Tap::DecAttnNorm, vec![3])];
        let mut stack = DecodeStack::new(vec![1, 2], 1, shapes);
        assert!(stack.wants(2) && !stack.wants(3));
        for len in [3, 4] {
            let probs: Vec<f32> = (0..2 * len).map(|i| i as f32 + 1.0).collect();
            stack.observe(Tap::AttnProbs, Some(0), TapValue::f32(&[2, 1, len], probs));
            stack.observe(Tap::KCache, Some(0), TapValue::f32(&[1, len, 2], vec![7.0; 2 * len]));
            stack.observe(Tap::AttnNorm, Some(0), TapValue::f32(&[1, 3], vec![len as f32; 3]));
            stack.observe(Tap::Logits, None, TapValue::f32(&[1, 1], vec![0.0]));
        }
        let mut rec = Recorder::default();
        stack.finish(&mut Taps::new(&mut rec));
        let probs = [1., 2., 3., 0., 4., 5., 6., 0., 1., 2., 3., 4., 5., 6., 7., 8.].to_vec();
        assert_eq!(rec.tensors["blk.0.dec_attn_probs"], TapValue::f32(&[2, 2, 4], probs));
        let cache = [7., 7., 7., 7., 7., 7., 0., 0., 7., 7., 7., 7., 7., 7., 7., 7.].to_vec();
        assert_eq!(rec.tensors["blk.0.dec_k_cache"], TapValue::f32(&[2, 1, 4, 2], cache));
        assert_eq!(rec.tensors["blk.0.dec_attn_norm"], TapValue::f32(&[2, 3], vec![3., 3., 3., 4., 4., 4.]));
        assert_eq!(rec.tensors.len(), 3);
        // No chosen step: every stack is recorded empty, [0, ...].
        let mut rec = Recorder::default();
        DecodeStack::new(vec![], 2, vec![(Tap::DecKCache, vec![1, 4, 2])]).finish(&mut Taps::new(&mut rec));
        assert_eq!(rec.tensors["blk.1.dec_k_cache"], TapValue::f32(&[0, 1, 4, 2], vec![]));
        // A tap that does not fit its per-step shape is dropped, not forced in.
        assert_eq!(pad_one_position(&[2, 1, 5], &[0.0; 10], &[2, 4]), None);
        assert_eq!(pad_one_position(&[3, 1, 2], &[0.0; 6], &[2, 4]), None);
    }

    #[test]
    fn unobserved_taps_never_build_their_value() {
        let mut taps = Taps::none();
        taps.record(Tap::Logits, None, || panic!("built a tap value with no observer"));
    }
}
