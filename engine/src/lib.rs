//! BitNet b1.58 inference engine: GGUF format, ternary kernels, the forward pass, the Llama 3
//! tokenizer and generation. Layering (each module only uses the ones before it):
//! `gguf` -> `quant` (kernels) -> `model` -> `tokenizer` / `grammar` / `generate`.

// Layout code indexes by weight position exactly as the format description does.
#![allow(clippy::needless_range_loop)]

pub mod error;
pub mod fixture;
pub mod generate;
pub mod gguf;
pub mod grammar;
pub mod kernels;
pub mod model;
pub mod quant;
pub mod tokenizer;

pub use error::EngineError;
pub use generate::{
    Event, EventSink, GenerateOutput, GenerateParams, Interrupt, Piece, SamplingParams, Scheduler,
    SchedulerConfig, SchedulerStats, SinkError, StopReason, TokenLogprob,
};
pub use grammar::Grammar;
pub use model::{HeadPrecision, KvPrecision, LoadOptions, Model};
pub use tokenizer::{ChatMessage, Tokenizer};
