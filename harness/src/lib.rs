//! The comparison core of `parity`: tensors, the .npy format, the checkpoint catalog, reference
//! dumps, metrics, tolerances and the judging of one subject's tensors (by default the engine's
//! run, [`subject`]) against one reference dump. The comparison modules do not depend on the
//! engine; [`engine_run`] converts its taps into [`tensor::Tensor`], [`pipeline`] runs a [`suite`]
//! through subject, references ([`live`] or committed dumps) and comparison, and [`conform`]
//! checks an outside dumper's dumps against the contract.

pub mod bisect;
pub mod catalog;
pub mod compare;
pub mod conform;
pub mod dump_cache;
pub mod dumps;
pub mod duplicates;
pub mod engine_run;
pub mod live;
pub mod metrics;
pub mod noise;
pub mod npy;
pub mod pipeline;
pub mod provenance;
pub mod reduce;
pub mod reference;
pub mod replay;
pub mod sampling;
pub mod shrink;
pub mod spec;
pub mod steps;
pub mod subject;
pub mod suite;
pub mod sweep;
pub mod tensor;
