//! parity's system under test: a CPU inference engine for GPT-2 and Llama-family models.
//!
//! Reading order: [`dtype`] and [`tensor`] (weights in their native type and the kernels that use them),
//! [`gguf`] and [`safetensors`] (where weights come from) and [`loader`] (both seen through GGUF
//! names), [`config`] (hyperparameters from metadata), [`ops`] and [`attention`] (the layer math),
//! [`block`], [`llama`] and [`gpt2`] (the forward passes, one tap per checkpoint), [`model`] (loading, prefill,
//! decode, generation, the traced run) and [`prefill`] (one batch or chunks), [`tokenizer`], [`sampling`], and [`tap`] (the checkpoint
//! observer contract).

pub mod attention;
pub mod block;
pub mod config;
pub mod dtype;
pub mod error;
pub mod fault;
pub mod gemm;
pub mod gguf;
pub mod gpt2;
pub mod kernels;
pub mod llama;
pub mod loader;
pub mod model;
pub mod ops;
pub mod pool;
pub mod prefill;
pub mod safetensors;
pub mod sampling;
pub mod tap;
pub mod tensor;
pub mod tokenizer;

pub use config::{Arch, Config};
pub use error::{Error, Result};
pub use model::{Model, Shared};
pub use prefill::Prefill;
pub use sampling::{Sampler, SamplerConfig};
pub use tap::{Observer, Recorder, Tap, TapValue, Taps};
