//! Shadow replay: each engine layer run on one implementation's own input to that layer (its
//! `embed` for layer 0, its `blk.{l-1}.block_out` after), its checkpoints compared with that
//! implementation's. Nothing is inherited, so what differs is the layer's own error; the plain
//! run's error at the same checkpoint (own plus everything carried in) is kept beside it.
//!
//! The one-layer noise floor (docs/replay.md): the references cannot be replayed on each other's
//! inputs, so their one-layer rounding is measured only where their inputs already agree: layer 0,
//! fed the same embedding rows. A replayed tensor's floor is the plain run's floor of the same
//! tensor in layer 0, and never more than the plain run's floor at its own layer (which holds the
//! layer's own rounding plus the inherited). `block_out` is the residual sum, mostly the exact
//! input deep in a model, so layer 0's is no measure of it: its floor is that of its two terms,
//! `attn_out` and `ffn_out` (each by the rule above), carried into its scale. The engine's own
//! error against the truth passes at [`crate::noise::K`] times it (plus [`crate::noise::FLOOR`]);
//! against an f32 reference, at that allowance beyond the reference's own distance from the truth
//! there (which holds its one-layer rounding). Without a truth, or against a reference judged in a
//! lower-precision class, the pooled tolerances judge as in a plain run.

use crate::catalog::Entry;
use crate::compare::{self, NoiseBound, Tokens};
use crate::dumps::{Dump, DumpError, Lookup};
use crate::engine_run;
use crate::metrics::Sums;
use crate::noise::{Distance, Floor, Scale};
use crate::pipeline::CaseRun;
use crate::spec::{Class, Spec};
use crate::tensor::{Tensor, Values};
use engine::{Model, Recorder, Taps};
use reports::replay::{CaseReplay, Cell, SideReplay};
use reports::results::Role;
use reports::vocab::{CheckpointName, TensorName};
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("layer {layer} does not exist: the model has layers 0..{n_layers}")]
    NoLayer { layer: usize, n_layers: usize },
    #[error("{}: cannot replay layer {layer} on it: its {key} {problem}", dir.display())]
    Input { dir: PathBuf, layer: usize, key: String, problem: String },
    #[error(transparent)]
    Dump(#[from] DumpError),
    #[error("the engine's layer {layer}: {source}")]
    Engine { layer: usize, source: engine::Error },
}

/// The dump key of layer `l`'s input.
pub fn input_key(l: usize) -> String {
    match l {
        0 => TensorName::Embed.as_str().to_string(),
        _ => format!("blk.{}.{}", l - 1, TensorName::BlockOut.as_str()),
    }
}

/// The entries a replay judges: the prompt path's per-layer f32 checkpoints of `layers`.
pub fn layer_entries(entries: &[Entry], layers: &[usize]) -> Vec<Entry> {
    entries
        .iter()
        .filter(|e| !e.is_ids && !CheckpointName::DecodeLayers.is(&e.checkpoint) && e.layer.is_some_and(|l| layers.contains(&l)))
        .cloned()
        .collect()
}

/// The layers to replay: `only`, or all of the model's; an out-of-range layer is refused.
pub fn layers(model: &Model, only: Option<usize>) -> Result<Vec<usize>, ReplayError> {
    let n_layers = model.config().n_layers;
    match only {
        Some(layer) if layer >= n_layers => Err(ReplayError::NoLayer { layer, n_layers }),
        Some(layer) => Ok(vec![layer]),
        None => Ok((0..n_layers).collect()),
    }
}

/// The engine's taps of each of `layers`, every layer run on `dump`'s own input to it.
pub fn replay_on(model: &Model, dump: &Dump, layers: &[usize]) -> Result<BTreeMap<String, Tensor>, ReplayError> {
    let d = model.config().d_model;
    let mut out = BTreeMap::new();
    for &l in layers {
        let key = input_key(l);
        let input = |problem: String| ReplayError::Input { dir: dump.dir.clone(), layer: l, key: key.clone(), problem };
        let x = match dump.get(&key)? {
            Lookup::Tensor(Tensor { shape, values: Values::F32(v) }) if shape.len() == 2 && shape[1] == d && !v.is_empty() => v,
            Lookup::Tensor(t) => return Err(input(format!("has shape {:?} ({}), not [T, {d}] f32", t.shape, t.dtype_name()))),
            Lookup::Unavailable(why) => return Err(input(format!("is unavailable: {why}"))),
            Lookup::NotListed => return Err(input("is not in its manifest".into())),
        };
        let mut taps = Recorder::default();
        model.forward_layer(l, &x, &mut Taps::new(&mut taps)).map_err(|source| ReplayError::Engine { layer: l, source })?;
        out.extend(taps.tensors.into_iter().map(|(k, v)| (k, engine_run::to_tensor(v))));
    }
    Ok(out)
}

/// One side of a case: a reference's dump, or the truth's.
struct Side<'a> {
    name: &'a str,
    dump: &'a Dump,
    role: Role,
    class: Class,
}

/// Replays `layers` of `model` on every readable dump of `run` (references, then the truth), and
/// judges each replayed checkpoint (see the module doc), beside the plain run's `run.subject`.
pub fn replay_case(model: &Model, run: &CaseRun, entries: &[Entry], spec: &Spec, layers: &[usize]) -> Result<CaseReplay, ReplayError> {
    let mut sides: Vec<Side> = run
        .dumps
        .iter()
        .filter_map(|(name, dump)| Some(Side { name, dump: dump.as_ref().ok()?, role: Role::Reference, class: run.case.model.class_for(name) }))
        .collect();
    let truth = run.truth.as_ref().and_then(|(name, dump)| Some((name.as_str(), dump.as_ref().ok()?)));
    if let Some((name, dump)) = truth {
        sides.push(Side { name, dump, role: Role::Truth, class: Class::F32 });
    }
    let entries = layer_entries(entries, layers);
    let floors = Floors { sides: &sides, truth: truth.map(|(_, d)| d) };
    let mut out = CaseReplay { model: run.case.model.id.clone(), prompt: run.case.prompt.id.clone(), sides: Vec::new() };
    for side in &sides {
        let replayed = replay_on(model, side.dump, layers)?;
        let mut cells = Vec::with_capacity(entries.len());
        for entry in &entries {
            let theirs = side.dump.get(&entry.key)?;
            let floor = floors.one_layer(entry.layer.unwrap_or(0), &entry.tensor)?;
            let mine = replayed.get(&entry.key);
            let own = match &floor {
                Some((floor, scale)) if side.role == Role::Truth || side.class == Class::F32 => {
                    // An f32 reference's own one-layer rounding is at most its whole distance from
                    // the truth there (own plus inherited): the offset a plain run allows it too.
                    let offset = match side.role {
                        Role::Reference => Some(floors.distance(side.dump, &entry.key)?.unwrap_or(floor.noise)),
                        _ => None,
                    };
                    compare::check_with(entry, mine, &theirs, spec, Class::F32, Some(NoiseBound { floor, scale: *scale, offset }), Tokens::unknown())
                }
                _ => compare::check(entry, mine, &theirs, spec, side.class, Tokens::unknown()),
            };
            let scale = floor.as_ref().map(|(_, s)| *s);
            cells.push(Cell {
                own,
                own_rms: distance(mine, &theirs, scale).map(|d| d.rms),
                inherited_rms: distance(run.subject.get(&entry.key), &theirs, scale).map(|d| d.rms),
                floor_rms: floor.map(|(f, _)| f.noise.rms),
            });
        }
        out.sides.push(SideReplay { reference: side.name.to_string(), role: side.role, cells });
    }
    Ok(out)
}

/// The noise floors of a case with a truth, read from its dumps.
struct Floors<'a> {
    sides: &'a [Side<'a>],
    truth: Option<&'a Dump>,
}

impl Floors<'_> {
    /// `dump`'s distance from the truth at `key`, when both hold it.
    fn distance(&self, dump: &Dump, key: &str) -> Result<Option<Distance>, DumpError> {
        let Some(truth) = self.truth else { return Ok(None) };
        let (Lookup::Tensor(truth), Lookup::Tensor(theirs)) = (truth.get(key)?, dump.get(key)?) else { return Ok(None) };
        Ok(measure(&theirs, &truth).map(|(d, _)| d))
    }

    /// The plain run's floor of `key` (the f32 references' largest distance from the truth) and
    /// the truth's scale; `None` without a truth or an f32 reference that has the tensor.
    fn accumulated(&self, key: &str) -> Result<Option<(Distance, Scale)>, DumpError> {
        let Some(truth) = self.truth else { return Ok(None) };
        let Lookup::Tensor(truth) = truth.get(key)? else { return Ok(None) };
        let mut worst: Option<(Distance, Scale)> = None;
        for side in self.sides.iter().filter(|s| s.role == Role::Reference && s.class == Class::F32) {
            let Lookup::Tensor(theirs) = side.dump.get(key)? else { continue };
            if let Some((d, scale)) = measure(&theirs, &truth) {
                worst = Some(worst.map_or((d, scale), |(w, _)| (w.max(d), scale)));
            }
        }
        Ok(worst)
    }

    /// The one-layer floor of `tensor` in `layer`, and the truth's scale there: the tensor's floor
    /// in layer 0, at most its accumulated one; for `block_out`, the residual sum, the floors of
    /// its two terms carried into its scale instead (see the module doc).
    fn one_layer(&self, layer: usize, tensor: &str) -> Result<Option<(Floor, Scale)>, DumpError> {
        let Some((here, scale)) = self.accumulated(&format!("blk.{layer}.{tensor}"))? else { return Ok(None) };
        let from_layer_0 = if TensorName::BlockOut.is(tensor) {
            self.of_terms(layer, scale)?
        } else {
            self.accumulated(&format!("blk.0.{tensor}"))?.map(|(first, _)| first)
        };
        let noise = from_layer_0.map_or(here, |d| Distance { rms: d.rms.min(here.rms), max: d.max.min(here.max) });
        Ok(Some((Floor { noise, by: Vec::new() }, scale)))
    }

    /// `block_out = input + attn_out + ffn_out` on an exact input: its one-layer error is at most
    /// its two terms' (each at its one-layer floor, in absolute size), relative to its own scale.
    fn of_terms(&self, layer: usize, scale: Scale) -> Result<Option<Distance>, DumpError> {
        let mut sum = Distance::ZERO;
        for term in [TensorName::AttnOut, TensorName::FfnOut] {
            let Some((floor, s)) = self.one_layer(layer, term.as_str())? else { return Ok(None) };
            sum.rms += floor.noise.rms * s.energy.sqrt();
            sum.max += floor.noise.max * s.peak;
        }
        Ok(Some(Distance { rms: sum.rms / scale.energy.sqrt(), max: sum.max / scale.peak }))
    }
}

/// The sums of `x` against `truth`: both f32 of one shape, finite, not empty.
fn sums(x: &Tensor, truth: &Tensor) -> Option<Sums> {
    let (a, t) = (x.as_f32()?, truth.as_f32()?);
    if x.shape != truth.shape || a.is_empty() {
        return None;
    }
    let sums = Sums::of(t, a);
    (sums.engine_finite() && sums.reference_finite()).then_some(sums)
}

/// `x`'s distance from `truth`, and the truth's scale.
fn measure(x: &Tensor, truth: &Tensor) -> Option<(Distance, Scale)> {
    let sums = sums(x, truth)?;
    let scale = Scale::of_reference(&sums);
    Some((Distance::of(&sums, &scale), scale))
}

/// The engine tensor's distance from the side's, in `scale` (the side's own when `None`).
fn distance(mine: Option<&Tensor>, theirs: &Lookup, scale: Option<Scale>) -> Option<Distance> {
    let Lookup::Tensor(theirs) = theirs else { return None };
    let sums = sums(mine?, theirs)?;
    Some(Distance::of(&sums, &scale.unwrap_or_else(|| Scale::of_reference(&sums))))
}
