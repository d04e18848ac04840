//! The comparison core of `parity`: tensors, the .npy format, the checkpoint catalog, reference
//! dumps, metrics, tolerances and the judging of one engine run against one reference dump.
//! The comparison modules do not depend on the engine; [`engine_run`] converts its taps into
//! [`tensor::Tensor`], and [`pipeline`] runs a [`suite`] through engine, references ([`live`] or
//! committed dumps) and comparison.

pub mod bisect;
pub mod catalog;
pub mod compare;
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
pub mod replay;
pub mod sampling;
pub mod spec;
pub mod steps;
pub mod suite;
pub mod tensor;
