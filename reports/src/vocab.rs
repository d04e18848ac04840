//! The one typed vocabulary of parity: every closed set of names the code branches on (tolerance
//! classes, metrics, comparison operators, reference roles) and the catalog checkpoints and tensors
//! the code refers to by name. Each name is spelled once, here; serde, `Display` and `FromStr` all
//! use that spelling, so results.json, the tolerance spec and the reports keep the strings they had.
//!
//! The catalog itself stays data (`checkpoints/catalog.toml`, read at run time): a checkpoint or
//! tensor the code does not single out needs no variant. The ones that have one are checked against
//! the catalog by this module's tests; `harness/tests/vocabulary.rs` fails on a string literal of
//! any of these names elsewhere in the sources.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;

/// A name that is not one of a vocabulary's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind} {given:?} is unknown (known: {known})")]
pub struct UnknownName {
    /// What kind of name: `"metric"`, `"tolerance class"`...
    pub kind: &'static str,
    pub given: String,
    /// The known names, comma-separated.
    pub known: String,
}

/// An enum of names: `as_str` is the one spelling, and serde, `Display` and `FromStr` follow it.
macro_rules! vocabulary {
    ($(#[$meta:meta])* $kind:literal, $name:ident { $($(#[$vmeta:meta])* $variant:ident = $text:literal,)+ }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name {
            $($(#[$vmeta])* $variant,)+
        }

        impl $name {
            /// Every name, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];

            /// The name as written in files and reports.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }

            /// The variant spelled `name`, if any.
            pub fn of(name: &str) -> Option<$name> {
                match name {
                    $($text => Some($name::$variant),)+
                    _ => None,
                }
            }

            /// Whether `name` is this one's spelling.
            pub fn is(self, name: &str) -> bool {
                self.as_str() == name
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = UnknownName;
            fn from_str(s: &str) -> Result<$name, UnknownName> {
                $name::of(s).ok_or_else(|| UnknownName {
                    kind: $kind,
                    given: s.to_string(),
                    known: $name::ALL.iter().map(|v| v.as_str()).collect::<Vec<_>>().join(", "),
                })
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<$name, D::Error> {
                let text = std::borrow::Cow::<str>::deserialize(d)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

vocabulary! {
    /// A comparison operator: which side of its threshold a metric's value must stay.
    "operator", Op {
        /// The value must not exceed the threshold (an error).
        Le = "<=",
        /// The value must reach the threshold (a similarity, a ratio in dB).
        Ge = ">=",
    }
}

impl Op {
    /// Whether `value` satisfies the bound. NaN never does.
    pub fn holds(self, value: f64, threshold: f64) -> bool {
        match self {
            Op::Le => value <= threshold,
            Op::Ge => value >= threshold,
        }
    }
}

vocabulary! {
    /// A tolerance class: how precisely an implementation computes, from tightest to loosest (the
    /// order `Ord` follows, so the looser of two is their `max`).
    "tolerance class", Class {
        F32 = "f32",
        F16 = "f16",
        Quantized = "quantized",
    }
}

impl Class {
    /// The looser of two classes: the class a comparison between two references is measured in.
    pub fn looser(self, other: Class) -> Class {
        self.max(other)
    }
}

/// How a case was judged (`CaseResult.dtype`): in a tolerance class, or bit for bit (the engine
/// against its own repeat run, `parity run --repeat`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Judged {
    Class(Class),
    BitExact,
}

impl Judged {
    /// The spelling of bit-for-bit judging; the classes spell themselves.
    const BIT_EXACT: &'static str = "bit-exact";

    pub fn as_str(self) -> &'static str {
        match self {
            Judged::Class(c) => c.as_str(),
            Judged::BitExact => Judged::BIT_EXACT,
        }
    }
}

impl From<Class> for Judged {
    fn from(c: Class) -> Judged {
        Judged::Class(c)
    }
}

impl fmt::Display for Judged {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Judged {
    type Err = UnknownName;
    fn from_str(s: &str) -> Result<Judged, UnknownName> {
        if s == Judged::BIT_EXACT {
            return Ok(Judged::BitExact);
        }
        s.parse().map(Judged::Class).map_err(|e: UnknownName| UnknownName { known: format!("{}, {}", e.known, Judged::BIT_EXACT), ..e })
    }
}

impl Serialize for Judged {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Judged {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Judged, D::Error> {
        std::borrow::Cow::<str>::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

vocabulary! {
    /// A metric: a number one comparison records, judged or not. Those a tolerance spec may put a
    /// threshold on are [`Metric::THRESHOLDED`]; the noise floor judges `rel_*` and `excess_*`;
    /// token checkpoints judge `mismatches`. Declared in alphabetical order of the names, so maps
    /// keyed by metric (judgements, the tolerance file) keep the order string keys gave them.
    "metric", Metric {
        Cosine = "cosine",
        ExcessMax = "excess_max",
        /// The engine's relative RMS distance beyond the reference's own from the truth.
        ExcessRms = "excess_rms",
        /// Where token ids first differ.
        FirstMismatch = "first_mismatch",
        KlDivergence = "kl_divergence",
        MaxAbs = "max_abs",
        MaxAbsScaled = "max_abs_scaled",
        MaxRel = "max_rel",
        MeanAbs = "mean_abs",
        /// Token ids that differ.
        Mismatches = "mismatches",
        Nmse = "nmse",
        NoiseMax = "noise_max",
        /// The noise floor itself, recorded beside the judgement.
        NoiseRms = "noise_rms",
        /// The engine's distance from the truth in noise floors.
        NoiseUnits = "noise_units",
        /// The reference's own logit gap between the two tokens of a flip; `reference_gap.<step>`.
        ReferenceGap = "reference_gap",
        /// The engine's top-two logit gap where a token flipped.
        ReferenceTop2Gap = "reference_top2_gap",
        /// Relative max distance in the truth's scale (noise floor).
        RelMax = "rel_max",
        /// Relative RMS distance in the truth's scale (noise floor); `rel_rms.<reference>` per reference.
        RelRms = "rel_rms",
        Rmse = "rmse",
        SqnrDb = "sqnr_db",
        TopkOverlap = "topk_overlap",
    }
}

impl Metric {
    /// The metrics a tolerance spec may judge by (those computed for every f32 comparison, KL and
    /// top-k overlap for probabilities).
    pub const THRESHOLDED: [Metric; 10] = [
        Metric::MaxAbs,
        Metric::MaxRel,
        Metric::MaxAbsScaled,
        Metric::MeanAbs,
        Metric::Rmse,
        Metric::Nmse,
        Metric::Cosine,
        Metric::SqnrDb,
        Metric::KlDivergence,
        Metric::TopkOverlap,
    ];

    /// Which way the metric gets worse, the one operator a threshold on it may use: `>=` for a
    /// similarity (cosine, top-k overlap) or a ratio in dB, `<=` for every distance and count.
    pub fn op(self) -> Op {
        match self {
            Metric::Cosine | Metric::TopkOverlap | Metric::SqnrDb => Op::Ge,
            _ => Op::Le,
        }
    }

    /// The key of this metric for one member of a family of values (`rel_rms.pytorch`,
    /// `reference_gap.3`): results keep such keys as strings.
    pub fn of_member(self, member: impl fmt::Display) -> String {
        format!("{self}.{member}")
    }
}

vocabulary! {
    /// What a case's dump is to the verdict (a reference unless said otherwise).
    #[derive(Default)]
    "reference role", Role {
        /// An independent reference: a vote in the confidence level.
        #[default]
        Reference = "reference",
        /// The f64 ground truth: the yardstick of the noise floor. Its checks count as checks (a
        /// failure fails the run) but it is never counted as an agreeing reference.
        Truth = "truth",
    }
}

vocabulary! {
    /// Whose code computed a reference's tensors at one checkpoint (checkpoints/provenance.toml).
    /// Only `own` counts toward the confidence level: the other two would re-check our own design.
    "authorship", Authorship {
        /// The reference library's own model code and kernels.
        Own = "own",
        /// The library's kernels (tensor ops) under model code written in this repository.
        Kernels = "kernels",
        /// Our code entirely (the library at most loads weights or runs plain array ops).
        Ours = "ours",
    }
}

vocabulary! {
    /// The catalog checkpoints the code singles out by name (the catalog has more; see the module doc).
    "checkpoint", CheckpointName {
        /// The greedy token after the prompt: a flip there may be a near-tie.
        Argmax = "argmax",
        /// The decode path's layer taps.
        DecodeLayers = "decode_layers",
        /// The greedy continuation: compared as a sequence, and earns the generation point.
        Generated = "generated",
        /// The last prompt position's logits: their spread between references sets the near-tie gaps.
        LastLogits = "last_logits",
    }
}

vocabulary! {
    /// The catalog tensors the code singles out by name.
    "tensor", TensorName {
        /// The prompt's token ids.
        Tokens = "tokens",
        /// The embedding rows looked up for the prompt: a copy of weights, so references may share it bit for bit.
        Embed = "embed",
        /// A layer's output: the next layer's input, which `parity replay` feeds it from a dump.
        BlockOut = "block_out",
        /// The two terms a layer adds to its input (its one-layer floor is theirs, in `parity replay`).
        AttnOut = "attn_out",
        FfnOut = "ffn_out",
        LastLogits = "last_logits",
        /// softmax(last_logits / temperature): a probability vector.
        Probs = "probs",
        /// The greedy continuation's ids: the decode history.
        Generated = "generated",
        /// The decode path's logits, read as evidence for token flips.
        StepLogits = "step_logits",
        /// The KV cache at the chosen decode steps: every position's keys and values, which
        /// `parity sweep` judges position by position.
        DecKCache = "dec_k_cache",
        DecVCache = "dec_v_cache",
        /// Each sampler's distribution: probability vectors, judged knowing the samplers' cuts.
        SamplerProbs = "sampler_probs",
        /// Each sampler's seeded draws.
        Sampled = "sampled",
    }
}

impl TensorName {
    /// Tensors holding probability vectors, judged also by KL divergence and top-k overlap.
    pub fn is_probability(name: &str) -> bool {
        TensorName::of(name).is_some_and(|t| matches!(t, TensorName::Probs | TensorName::SamplerProbs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct Catalog {
        checkpoint: Vec<CatalogCheckpoint>,
        tensor: Vec<CatalogTensor>,
    }

    #[derive(Deserialize)]
    struct CatalogCheckpoint {
        name: String,
        tensors: Vec<String>,
    }

    #[derive(Deserialize)]
    struct CatalogTensor {
        name: String,
    }

    fn catalog() -> Catalog {
        toml::from_str(include_str!("../../checkpoints/catalog.toml")).expect("the project catalog parses")
    }

    #[test]
    fn every_named_checkpoint_and_tensor_is_in_the_catalog() {
        let c = catalog();
        for name in CheckpointName::ALL {
            assert!(c.checkpoint.iter().any(|k| name.is(&k.name)), "checkpoint {name} is not in checkpoints/catalog.toml");
        }
        for name in TensorName::ALL {
            assert!(c.tensor.iter().any(|t| name.is(&t.name)), "tensor {name} is not in checkpoints/catalog.toml");
        }
        // The generated checkpoint is the generated tensor's home, as the code assumes.
        let home = c.checkpoint.iter().find(|k| k.tensors.iter().any(|t| TensorName::Generated.is(t))).map(|k| k.name.as_str());
        assert_eq!(home, Some(CheckpointName::Generated.as_str()));
    }

    #[test]
    fn serde_display_and_parse_share_one_spelling() {
        fn round_trip<T: Serialize + for<'de> Deserialize<'de> + fmt::Display + FromStr + PartialEq + fmt::Debug + Copy>(all: &[T]) {
            for &v in all {
                let json = serde_json::to_string(&v).unwrap();
                assert_eq!(json, format!("\"{v}\""));
                assert_eq!(serde_json::from_str::<T>(&json).unwrap(), v);
                assert!(matches!(v.to_string().parse::<T>(), Ok(p) if p == v));
            }
        }
        round_trip(Op::ALL);
        round_trip(Class::ALL);
        round_trip(Metric::ALL);
        round_trip(Role::ALL);
        round_trip(Authorship::ALL);
        round_trip(CheckpointName::ALL);
        round_trip(TensorName::ALL);
        round_trip(&[Judged::BitExact, Judged::Class(Class::Quantized)]);
        // The strings results.json has always held.
        assert_eq!(
            serde_json::to_string(&[Metric::SqnrDb, Metric::ExcessRms, Metric::TopkOverlap]).unwrap(),
            r#"["sqnr_db","excess_rms","topk_overlap"]"#
        );
        assert_eq!(serde_json::to_string(&(Op::Le, Judged::BitExact, Role::Truth)).unwrap(), r#"["<=","bit-exact","truth"]"#);
    }

    #[test]
    fn an_unknown_name_is_refused_with_the_known_ones() {
        let e = "maxabs".parse::<Metric>().unwrap_err().to_string();
        assert!(e.starts_with("metric \"maxabs\" is unknown (known: cosine, excess_max,"), "{e}");
        let e = "bf16".parse::<Judged>().unwrap_err().to_string();
        assert_eq!(e, "tolerance class \"bf16\" is unknown (known: f32, f16, quantized, bit-exact)");
        assert!(serde_json::from_str::<Op>("\"<\"").unwrap_err().to_string().contains("operator \"<\" is unknown"));
    }

    #[test]
    fn classes_order_from_tightest_to_loosest() {
        assert_eq!(Class::F32.looser(Class::Quantized), Class::Quantized);
        assert_eq!(Class::F16.looser(Class::F32), Class::F16);
        assert_eq!(Class::F32.looser(Class::F32), Class::F32);
    }

    #[test]
    fn each_metric_has_one_direction() {
        let ge: Vec<Metric> = Metric::ALL.iter().copied().filter(|m| m.op() == Op::Ge).collect();
        assert_eq!(ge, [Metric::Cosine, Metric::SqnrDb, Metric::TopkOverlap]);
        assert!(!Op::Le.holds(f64::NAN, 1.0) && !Op::Ge.holds(f64::NAN, 1.0));
        assert_eq!(Metric::RelRms.of_member("pytorch"), "rel_rms.pytorch");
    }

    #[test]
    fn metrics_order_as_their_names_do() {
        let names: Vec<&str> = Metric::ALL.iter().map(|m| m.as_str()).collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted);
    }
}
