//! The comparison core of `parity`: tensors, the .npy format, the checkpoint catalog, reference
//! dumps, metrics, tolerances and the judging of one engine run against one reference dump.
//! Nothing here depends on the engine: the binary converts engine taps into [`tensor::Tensor`].

pub mod catalog;
pub mod compare;
pub mod dumps;
pub mod metrics;
pub mod npy;
pub mod spec;
pub mod tensor;
