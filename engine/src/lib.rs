//! parity's system under test: a CPU inference engine for GPT-2 and Llama-family models.
//!
//! Reading order: [`tensor`] (weights in their native type and the kernels that use them),
//! [`gguf`] and [`safetensors`] (where weights come from), [`config`] (hyperparameters from
//! metadata), [`ops`] (the layer math), [`llama`] and [`gpt2`] (the forward passes, one tap per
//! checkpoint), [`model`] (loading, prefill, decode, generation), [`tokenizer`], [`sampling`],
//! and [`tap`] (the checkpoint observer contract).

pub mod error;
pub mod gguf;
pub mod safetensors;
pub mod tap;
pub mod tensor;
pub mod tokenizer;

pub use error::{Error, Result};
pub use tap::{Observer, Recorder, Tap, TapValue, Taps};
